//! keel's compatibility suite: real `keel` and `etcd` processes driven through
//! independent clients (the `etcd-client` crate and etcdctl 3.x). Each test body runs
//! against every selected server and the normalised observations must agree.

pub mod cluster;
pub mod etcdctl;
pub mod runner;

pub use cluster::{Cluster, Server};
pub use runner::{
    current_revision, expect_grpc_error, for_each_server, grpc_error, keys, Kv, Transcript,
};
