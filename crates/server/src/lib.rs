//! keel-server: the `keel` member. gRPC services, proposal and read paths, the apply chain
//! and member lifecycle.
//!
//! A `Put` travels: `grpc/kv.rs` (validate) -> `propose.rs` (propose or forward) ->
//! `keel_raft` (replicate, persist) -> `apply/mod.rs` (decode, dispatch) -> `apply/txn.rs` +
//! `keel_storage` (write the revision) -> back through openraft's responder to the client.

pub mod apply;
pub mod cluster;
pub mod config;
pub mod forward;
pub mod grpc;
pub mod http;
pub mod lease;
pub mod lock;
pub mod node;
pub mod planted;
pub mod propose;
pub mod server;
pub mod transport;
pub mod watch;

pub use config::Config;
pub use node::{Listeners, Node, Served, StartError, Storage, WrapBackend};
