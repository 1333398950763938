//! The load-generating workloads; each returns merged latencies plus its own numbers.

pub mod kv;
pub mod lease;
pub mod lock;
pub mod watch;
