//! The ordered-table engine seam: named tables of byte keys to byte values, consistent
//! read snapshots and atomic write transactions.
//!
//! Owns: the [`Backend`], [`ReadTxn`] and [`WriteTxn`] traits, the [`Table`] namespace, two
//! engines ([`MemBackend`] for tests, [`RedbBackend`] for real), the integrity layer every
//! store reads through ([`CheckedBackend`]: a CRC32C per entry, verified on read) and a
//! fault injector for tests ([`FaultyBackend`]). Must never interpret keys or values (that
//! is `mvcc`'s job) nor know about revisions, Raft or the wire.
//!
//! Concurrency contract every engine keeps: any number of readers, each seeing the state of
//! the last commit before it began; at most one writer at a time (a second `begin_write`
//! waits); a write transaction dropped without `commit` leaves no trace.

mod buffered;
mod checked;
mod fault;
mod mem;
mod redb_engine;

use std::ops::Bound;

pub use buffered::BufferedBackend;
pub use checked::CheckedBackend;
pub use fault::{Fault, FaultPlan, FaultSpec, FaultyBackend};
pub use mem::MemBackend;
pub use redb_engine::RedbBackend;

use crate::error::Result;

/// A named table. Ids are part of the snapshot format: never renumber, only append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// Key versions: revision -> user key and version record.
    Kv,
    /// Storage-internal metadata (current and compacted revision, format version).
    Meta,
    /// Metadata owned by the caller (Raft applied index, membership), opaque here.
    AppMeta,
    /// Lease records owned by the caller, opaque here.
    Lease,
}

impl Table {
    /// Every table, in id order (the order of a snapshot dump).
    pub const ALL: [Table; 4] = [Table::Kv, Table::Meta, Table::AppMeta, Table::Lease];

    /// Stable one-byte id used in snapshot dumps.
    pub fn id(self) -> u8 {
        match self {
            Table::Kv => 1,
            Table::Meta => 2,
            Table::AppMeta => 3,
            Table::Lease => 4,
        }
    }

    /// Inverse of [`Table::id`].
    pub fn from_id(id: u8) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.id() == id)
    }

    /// Stable name used by engines that name their tables (redb).
    pub fn name(self) -> &'static str {
        match self {
            Table::Kv => "kv",
            Table::Meta => "meta",
            Table::AppMeta => "app_meta",
            Table::Lease => "lease",
        }
    }

    pub(crate) fn index(self) -> usize {
        usize::from(self.id() - 1)
    }
}

/// Scan order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Ascending keys.
    Forward,
    /// Descending keys.
    Backward,
}

/// Key bounds of a scan, borrowed.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Called for each entry of a scan with (key, value); return `Ok(false)` to stop.
pub type Visitor<'v> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'v;

/// A consistent read snapshot.
pub trait ReadTxn: Send {
    /// The value stored under `key`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits entries within `bounds` in `direction` until the visitor returns `false`.
    fn scan(
        &self,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()>;
}

/// A write transaction; reads see its own uncommitted writes.
pub trait WriteTxn: ReadTxn {
    /// Inserts or replaces `key`.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()>;

    /// Removes `key`; returns whether it existed.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool>;

    /// Removes every entry of `table`.
    fn clear(&mut self, table: Table) -> Result<()>;

    /// Commits atomically. `durable == false` may lose the commit on a crash until a later
    /// durable commit persists it (and every commit before it); it is never torn.
    fn commit(self: Box<Self>, durable: bool) -> Result<()>;
}

/// An engine holding all tables.
pub trait Backend: Send + Sync {
    /// Starts a read snapshot of the last commit.
    fn begin_read(&self) -> Result<Box<dyn ReadTxn>>;

    /// Starts the single write transaction, waiting for a running one to finish.
    fn begin_write(&self) -> Result<Box<dyn WriteTxn>>;

    /// Bytes the engine occupies (file size for redb; approximate in memory).
    fn size_bytes(&self) -> Result<u64>;

    /// Writes what earlier commits left in the OS page cache to the disk, without holding up
    /// the writer, so that the next durable commit (which holds the write transaction through
    /// its fsync) has little left to flush. Only a head start: durability still comes from the
    /// durable commit, which reports any write error itself. Engines without a file do
    /// nothing.
    fn flush_ahead(&self) -> Result<()> {
        Ok(())
    }
}

/// True when no key can satisfy `bounds` (engines must not be asked for such ranges:
/// `BTreeMap::range` panics on them).
pub(crate) fn bounds_are_empty(bounds: &KeyBounds<'_>) -> bool {
    match (bounds.0, bounds.1) {
        (Bound::Included(lo), Bound::Included(hi)) => lo > hi,
        (Bound::Included(lo), Bound::Excluded(hi))
        | (Bound::Excluded(lo), Bound::Included(hi))
        | (Bound::Excluded(lo), Bound::Excluded(hi)) => lo >= hi,
        _ => false,
    }
}
