//! The state every gRPC service of one member shares.
//!
//! Owns: this member's identity, its limits, and handles to the store, Raft and the proposer.
//! Must never: hold locks across an await (everything here is shared by every request).

use std::sync::Arc;

use keel_api::etcdserverpb::ResponseHeader;
use keel_raft::KeelRaft;
use keel_storage::Store;

use crate::lease::Leases;
use crate::propose::Proposer;
use crate::watch::WatchHub;

/// Request limits, named with their units.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Shorter lease TTLs are raised to this (etcd: 1.5 election timeouts, whole seconds).
    pub min_lease_ttl_s: i64,
}

impl Limits {
    /// Like etcd, requests up to `max_request_bytes` plus 512 KiB of gRPC overhead get
    /// etcd's "request is too large"; beyond that etcd's gRPC layer refuses the message.
    pub fn grpc_message_bytes_max(&self) -> usize {
        self.max_request_bytes + 512 * 1024
    }

    /// tonic's own decode limit sits well above `grpc_message_bytes_max` so that keel, not
    /// tonic, decides the error (tonic's code and text differ from grpc-go's, which clients
    /// see from etcd). Messages above this are refused by tonic.
    pub fn grpc_decode_bytes_max(&self) -> usize {
        self.grpc_message_bytes_max() * 4
    }
}

pub struct Server {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub client_urls: Vec<String>,
    pub limits: Limits,
    pub store: Arc<Store>,
    pub raft: KeelRaft,
    pub proposer: Arc<Proposer>,
    pub leases: Arc<Leases>,
    pub watch_hub: Arc<WatchHub>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({:x})", self.member_id)
    }
}

impl Server {
    /// A response header as etcd fills it: cluster, answering member, revision, Raft term.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.term(),
        })
    }

    /// Completes a header that apply filled with only the revision.
    pub fn complete(&self, header: Option<ResponseHeader>) -> Option<ResponseHeader> {
        self.header(header.map_or_else(|| self.current_revision(), |h| h.revision))
    }

    /// The current revision of the local store (0 if the store cannot be read).
    pub fn current_revision(&self) -> i64 {
        self.store.current_revision().unwrap_or(0)
    }
}
