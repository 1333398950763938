//! keel-storage: the MVCC key-value store behind keel's state machine.
//!
//! Owns: the on-disk layout of keys, revisions and metadata ([`mvcc`]), the narrow
//! ordered-table engine seam ([`backend`]) with an in-memory and a redb implementation,
//! compaction, `HashKV` and snapshot dump/restore.
//!
//! Must never: depend on protobuf, gRPC or Raft types (the server maps [`KeyValue`] and
//! [`Event`] to the wire), read clocks or randomness, or decide anything about replication.
//! Durability is the caller's choice per commit; the Raft log is the source of truth until
//! a durable commit.

pub mod backend;
mod error;
pub mod mvcc;

pub use backend::{
    Backend, BufferedBackend, CheckedBackend, Direction, Fault, FaultPlan, FaultSpec,
    FaultyBackend, MemBackend, ReadTxn, RedbBackend, Table, WriteTxn,
};
pub use error::{Result, StorageError};
pub use mvcc::{
    Event, EventKind, KeyValue, KvHash, RangeOptions, RangeResult, ReadView, Revision, Store,
    TxnOutcome, TxnWriter, WriteBatch, COMPACT_STEP_VERSIONS, INITIAL_REVISION, NEVER_COMPACTED,
};
