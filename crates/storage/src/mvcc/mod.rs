//! The MVCC key-value store with etcd semantics, over any [`Backend`].
//!
//! Owns: revisions, the key-version layout, etcd range/put/delete semantics, compaction,
//! `HashKV`, revision-ordered history for watch replay, and snapshot dump/restore. Must
//! never do I/O beyond its backend, read clocks, or know about Raft or protobuf; the caller
//! decides batching and durability.
//!
//! # On-disk layout (format 3)
//!
//! All integers are big-endian. Every entry of every table below is stored through
//! [`CheckedBackend`](crate::backend::CheckedBackend), which appends a CRC32C of the table
//! id, key and value and verifies it on every read.
//!
//! * `Table::Kv`, one entry per key version, as etcd lays out its `key` bucket:
//!   key = `main i64 ++ sub i64`, value = `key_len u32 | user_key | format u8 (2) |
//!   flags u8 (bit 0 tombstone) | create_revision i64 | version i64 | lease i64 | value`.
//!   New versions append at the end of the table, so a write batch dirties few pages
//!   however its keys are spread, and history for watch catch-up is a scan by revision.
//!   The value is stored once. A delete writes a tombstone (zero fields, empty value).
//! * The key index ([`index`], in memory, rebuilt from `Kv` at open): every key's stored
//!   revisions, so "version of K at revision R" and range scans at R read the index and
//!   fetch only the versions they return, by revision.
//! * `Table::Meta`: `format_version`, `current_revision`, `compact_revision` (i64 each) and,
//!   while a compaction is unfinished, `compact_cursor` (revision key to resume from). They
//!   change in the same write transaction as the data they describe.
//! * `Table::AppMeta`, `Table::Lease`: opaque caller-owned bytes, atomically committed with
//!   the data (Raft applied index, membership, leases).
//!
//! A fresh store is at revision 1 with compact revision -1, as in etcd; the first write
//! transaction creates revision 2.

mod compact;
mod encoding;
mod history;
mod index;
mod read;
mod snapshot;
mod types;
mod write;

#[cfg(test)]
mod tests;

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

pub use compact::COMPACT_STEP_VERSIONS;
pub use types::{
    Event, EventKind, KeyValue, KvHash, RangeOptions, RangeResult, Revision, TxnOutcome,
};
pub use write::{TxnWriter, WriteBatch};

use crate::backend::{
    Backend, CheckedBackend, Direction, MemBackend, ReadTxn, RedbBackend, Table, WriteTxn,
};
use crate::error::{Result, StorageError};
use encoding::{decode_entry, decode_i64, encode_i64, parse_revision_key};
use index::{KeyIndex, SharedIndex, Version};

pub(crate) const FORMAT_VERSION: i64 = 3;
pub(crate) const META_FORMAT: &[u8] = b"format_version";
pub(crate) const META_CURRENT: &[u8] = b"current_revision";
pub(crate) const META_COMPACT: &[u8] = b"compact_revision";
pub(crate) const META_COMPACT_CURSOR: &[u8] = b"compact_cursor";

/// Revision of an empty store (etcd starts at 1 too).
pub const INITIAL_REVISION: i64 = 1;
/// Compact revision of a store never compacted (etcd's value).
pub const NEVER_COMPACTED: i64 = -1;

/// The current and compacted revision as stored in `Table::Meta`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Revs {
    pub(crate) current: i64,
    pub(crate) compacted: i64,
}

fn meta_i64<R: ReadTxn + ?Sized>(txn: &R, key: &[u8]) -> Result<i64> {
    let what = String::from_utf8_lossy(key);
    match txn.get(Table::Meta, key)? {
        Some(bytes) => decode_i64(&bytes, &what),
        None => Err(StorageError::corrupt(format!("meta {what} missing"))),
    }
}

/// Loads and checks the revision metadata visible to `txn`.
pub(crate) fn load_revs<R: ReadTxn + ?Sized>(txn: &R) -> Result<Revs> {
    let format = meta_i64(txn, META_FORMAT)?;
    if format != FORMAT_VERSION {
        return Err(StorageError::corrupt(format!(
            "unsupported store format {format} (this keel reads format {FORMAT_VERSION}; \
             stores of earlier pre-release versions are not converted)"
        )));
    }
    let revs = Revs {
        current: meta_i64(txn, META_CURRENT)?,
        compacted: meta_i64(txn, META_COMPACT)?,
    };
    if revs.current < INITIAL_REVISION || revs.compacted > revs.current {
        return Err(StorageError::corrupt(format!("bad revisions {revs:?}")));
    }
    Ok(revs)
}

fn init_meta(txn: &mut dyn WriteTxn) -> Result<()> {
    txn.put(Table::Meta, META_FORMAT, &encode_i64(FORMAT_VERSION))?;
    txn.put(Table::Meta, META_CURRENT, &encode_i64(INITIAL_REVISION))?;
    txn.put(Table::Meta, META_COMPACT, &encode_i64(NEVER_COMPACTED))
}

/// Builds the key index from every stored version (they come in revision order).
fn load_index<R: ReadTxn + ?Sized>(txn: &R) -> Result<KeyIndex> {
    let mut index = KeyIndex::with_floor(load_revs(txn)?.compacted);
    let all = (Bound::Unbounded, Bound::Unbounded);
    txn.scan(Table::Kv, all, Direction::Forward, &mut |k, v| {
        let rev = parse_revision_key(k)?;
        let (key, record) = decode_entry(v)?;
        index.push(key, Version::of(rev, &record));
        Ok(true)
    })?;
    Ok(index)
}

/// The MVCC store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Replaced as a whole by a restore, while no read snapshot can open; a read keeps the
    /// index that matches its snapshot.
    index: RwLock<SharedIndex>,
}

impl Store {
    /// Opens a store over `backend`, initialising an empty one. Every entry is read and
    /// written through a [`CheckedBackend`], so corrupt bytes are an error, never data.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Store> {
        let backend: Arc<dyn Backend> = Arc::new(CheckedBackend::new(backend));
        let mut txn = backend.begin_write()?;
        if txn.get(Table::Meta, META_FORMAT)?.is_none() {
            init_meta(&mut *txn)?;
            txn.commit(true)?;
        }
        let index = load_index(&*backend.begin_read()?)?;
        Ok(Store {
            backend,
            index: RwLock::new(SharedIndex::new(index)),
        })
    }

    fn index(&self) -> SharedIndex {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A fresh in-memory store (tests).
    pub fn in_memory() -> Result<Store> {
        Store::open(Arc::new(MemBackend::new()))
    }

    /// Opens (or creates) a redb-backed store in the file at `path`.
    pub fn open_redb(path: impl AsRef<Path>) -> Result<Store> {
        Store::open(Arc::new(RedbBackend::open(path)?))
    }

    /// A consistent read snapshot of the last commit.
    pub fn read(&self) -> Result<ReadView> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let txn = self.backend.begin_read()?;
        let revs = load_revs(&*txn)?;
        Ok(ReadView {
            txn,
            revs,
            index: index.clone(),
        })
    }

    /// Starts the write batch (one backend write transaction; waits for a running one).
    pub fn write(&self) -> Result<WriteBatch> {
        let txn = self.backend.begin_write()?;
        WriteBatch::new(txn, self.index())
    }

    /// The current revision.
    pub fn current_revision(&self) -> Result<i64> {
        Ok(self.read()?.revs.current)
    }

    /// The compacted revision (-1 if never compacted).
    pub fn compact_revision(&self) -> Result<i64> {
        Ok(self.read()?.revs.compacted)
    }

    /// Range read on a fresh snapshot; see [`ReadView::range`].
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        self.read()?.range(key, range_end, opts)
    }

    /// Caller-owned metadata stored with [`WriteBatch::put_meta`].
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read()?.txn.get(Table::AppMeta, key)
    }

    /// Every lease record stored with [`WriteBatch::put_lease`], by ascending id.
    pub fn leases(&self) -> Result<Vec<(i64, Vec<u8>)>> {
        self.read()?.leases()
    }

    /// Makes every earlier non-durable commit durable (an empty durable commit).
    pub fn sync(&self) -> Result<()> {
        // Most of the flush happens here, while apply keeps committing.
        self.backend.flush_ahead()?;
        self.backend.begin_write()?.commit(true)
    }

    /// Bytes the backend occupies (file size for redb, approximate in memory).
    pub fn db_size_bytes(&self) -> Result<u64> {
        self.backend.size_bytes()
    }
}

/// A consistent snapshot for reads.
pub struct ReadView {
    txn: Box<dyn ReadTxn>,
    revs: Revs,
    index: SharedIndex,
}

impl ReadView {
    /// The current revision of this snapshot.
    pub fn current_revision(&self) -> i64 {
        self.revs.current
    }

    /// The compacted revision of this snapshot.
    pub fn compact_revision(&self) -> i64 {
        self.revs.compacted
    }

    /// etcd range: `range_end` empty reads `key` alone; `[0]` reads every key >= `key`
    /// (every key if `key` is also `[0]`); otherwise `[key, range_end)`.
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        read::range(&*self.txn, &self.index, key, range_end, opts, self.revs)
    }

    /// Every event with main revision in `[start_revision, end_revision]`, in revision order,
    /// at most `max_events` (0 = no limit) except that a revision is never split (its
    /// events all come back even past the limit), each with its `prev_kv` when still stored.
    /// `start_revision <= compact revision` is `Compacted`: a tombstone at the compact
    /// revision is gone, so history there is incomplete.
    pub fn events(
        &self,
        start_revision: i64,
        end_revision: i64,
        max_events: usize,
    ) -> Result<Vec<Event>> {
        self.history(start_revision, end_revision, max_events, true)
    }

    /// [`events`](Self::events) without `prev_kv` (always `None`), which saves one random
    /// read per event.
    pub fn events_without_prev_kv(
        &self,
        start_revision: i64,
        end_revision: i64,
        max_events: usize,
    ) -> Result<Vec<Event>> {
        self.history(start_revision, end_revision, max_events, false)
    }

    fn history(
        &self,
        start: i64,
        end: i64,
        max_events: usize,
        prev_kv: bool,
    ) -> Result<Vec<Event>> {
        let (txn, index) = (&*self.txn, &self.index);
        history::events(txn, index, self.revs, start, end, max_events, prev_kv)
    }

    /// Every lease record, by ascending id.
    pub fn leases(&self) -> Result<Vec<(i64, Vec<u8>)>> {
        read::leases(&*self.txn)
    }

    /// Each live key of the etcd range `(key, range_end)` (as [`range`](Self::range) reads
    /// it) with its create revision, in key order, at this snapshot's revision. From the key
    /// index alone: no stored version is read, so there is no value and no checksum check.
    pub fn created(&self, key: &[u8], range_end: &[u8]) -> Vec<(Vec<u8>, i64)> {
        let mut out = Vec::new();
        let index = self.index.read();
        read::visit_live_at(&index, key, range_end, self.revs.current, &mut |k, v| {
            out.push((k.to_vec(), v.create_revision));
            true
        });
        out
    }

    /// The keys attached to `lease` in this snapshot, in key order. (The index keeps only
    /// the newest attachments: a key moved to another lease after this snapshot is missing.)
    pub fn attached_keys(&self, lease: i64) -> Vec<Vec<u8>> {
        let index = self.index.read();
        index
            .attached(lease)
            .filter(|key| {
                index
                    .visible(key, self.revs.current)
                    .is_some_and(|v| v.attached_to() == Some(lease))
            })
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// Caller-owned metadata stored with [`WriteBatch::put_meta`].
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.txn.get(Table::AppMeta, key)
    }
}
