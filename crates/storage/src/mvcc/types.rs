//! Plain data types of the MVCC API, mirroring etcd's `mvccpb` messages field for field.
//!
//! Owns: the shapes callers see. Must never depend on protobuf types; the server converts.

/// A point in the store's history: `main` rises by one per write transaction, `sub`
/// numbers the changes inside it from 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// Revision of the write transaction.
    pub main: i64,
    /// Index of the change within the transaction.
    pub sub: i64,
}

/// One version of a key, exactly etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The user key.
    pub key: Vec<u8>,
    /// Revision of the put that created this generation of the key.
    pub create_revision: i64,
    /// Revision of the change that wrote this version.
    pub mod_revision: i64,
    /// 1 for the first put of a generation, +1 per later put.
    pub version: i64,
    /// The value (empty for `keys_only` reads and for delete events).
    pub value: Vec<u8>,
    /// Lease attached to the key, 0 for none.
    pub lease: i64,
}

/// Kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A put.
    Put,
    /// A deletion.
    Delete,
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put the new version; for a delete only `key` and `mod_revision` (the
    /// deletion's revision) are set, like etcd.
    pub kv: KeyValue,
    /// The version this change replaced, if the key was live before it.
    pub prev_kv: Option<KeyValue>,
}

/// Options of a range read. `Default` reads everything at the current revision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Revision to read at; 0 or negative means the current revision.
    pub revision: i64,
    /// Maximum number of kvs returned; 0 or negative means no limit.
    pub limit: i64,
    /// Return only the count, no kvs.
    pub count_only: bool,
    /// Return kvs with empty values.
    pub keys_only: bool,
}

/// Result of a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// Matching kvs in ascending key order, at most `limit`.
    pub kvs: Vec<KeyValue>,
    /// Number of matching keys, regardless of `limit`.
    pub count: i64,
    /// Whether more keys matched than were returned.
    pub more: bool,
    /// The store's current revision as seen by this read (etcd's header revision).
    pub revision: i64,
}

/// Result of ending one etcd transaction inside a write batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnOutcome {
    /// The store's revision after the transaction (unchanged if it wrote nothing).
    pub revision: i64,
    /// The changes, in order; all carry `revision` as their main revision.
    pub events: Vec<Event>,
}

/// Result of `HashKV`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC32C over every key version with main revision in (compact_revision, revision].
    pub hash: u32,
    /// The compacted revision when the hash was taken (-1 if never compacted).
    pub compact_revision: i64,
    /// The revision the hash covers up to.
    pub revision: i64,
}
