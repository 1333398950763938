//! The openraft type configuration of keel and the small value types carried in the log.
//!
//! Owns: what a log entry's application payload is (opaque bytes the server encodes), what a
//! member is (name and URLs), and the node id space (etcd-style 64-bit member ids).
//! Must never: interpret the payload; that is the server's apply layer.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Member id: the same 64-bit id etcd clients see in `MemberList` and `Status.leader`.
pub type NodeId = u64;

/// One replicated write: a protobuf-encoded `keelpb.InternalRequest`, opaque to Raft.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Serialized as one byte string (not a sequence of u8): entries can be megabytes and are
    /// encoded on every append and replication.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({} bytes)", self.payload.len())
    }
}

/// What applying one entry produced: a protobuf-encoded `keelpb.InternalResponse`
/// (empty for blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A cluster member as Raft knows it: where to reach it for peer traffic.
///
/// Client URLs are not here: like etcd, a member publishes its client URLs through a
/// replicated command after it starts, so membership changes stay about peers only.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// keel's Raft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        AsyncRuntime = crate::rt::KeelRuntime,
);

pub(crate) type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub(crate) type Entry = openraft::alias::EntryOf<TypeConfig>;
pub(crate) type Vote = openraft::alias::VoteOf<TypeConfig>;
pub(crate) type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub(crate) type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
