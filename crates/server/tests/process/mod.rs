//! Process-level test harness: real `keel` processes, per-link proxies, a seeded nemesis,
//! clients and a watcher over the gRPC API, and the end-of-run checks.

pub mod checks;
pub mod cluster;
pub mod faults;
pub mod proxy;
pub mod workload;
