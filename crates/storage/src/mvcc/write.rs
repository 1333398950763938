//! Write side: one [`WriteBatch`] per backend write transaction, holding any number of
//! etcd transactions ([`TxnWriter`]), each of which bumps the revision by one if it wrote.
//!
//! Owns: revision assignment, version/create-revision rules, tombstones, events, caller
//! metadata written atomically with the data, and scheduling compaction. Must never commit
//! implicitly: dropping a batch discards it.

use super::encoding::{encode_entry, encode_i64, revision_key, VersionRecord};
use super::index::{SharedIndex, Version};
use super::read::{self, kv_at, to_key_value, visit_live_at};
use super::types::{Event, EventKind, KeyValue, RangeOptions, RangeResult, Revision, TxnOutcome};
use super::{load_revs, Revs, META_COMPACT, META_COMPACT_CURSOR, META_CURRENT};
use crate::backend::{Table, WriteTxn};
use crate::error::{Result, StorageError};

/// One atomic backend write transaction. Reads through it see its own writes.
pub struct WriteBatch {
    txn: Box<dyn WriteTxn>,
    revs: Revs,
    index: BatchIndex,
    /// Whether put events carry `prev_kv` (see [`WriteBatch::put_events_carry_prev_kv`]).
    put_events_prev_kv: bool,
}

/// Adds a batch's versions to the shared key index, and takes them out again unless the
/// batch commits. Readers never see them before: their revisions are above every read's.
struct BatchIndex {
    shared: SharedIndex,
    /// The revision committed before the batch began.
    above: i64,
    touched: Vec<Vec<u8>>,
    committed: bool,
}

impl BatchIndex {
    fn push(&mut self, key: &[u8], version: Version) {
        self.shared.write().push(key, version);
        self.touched.push(key.to_vec());
    }
}

impl Drop for BatchIndex {
    fn drop(&mut self) {
        if !self.committed && !self.touched.is_empty() {
            self.shared.write().roll_back(&self.touched, self.above);
        }
    }
}

impl WriteBatch {
    pub(crate) fn new(txn: Box<dyn WriteTxn>, index: SharedIndex) -> Result<WriteBatch> {
        let revs = load_revs(&*txn)?;
        Ok(WriteBatch {
            txn,
            revs,
            index: BatchIndex {
                shared: index,
                above: revs.current,
                touched: Vec::new(),
                committed: false,
            },
            put_events_prev_kv: true,
        })
    }

    /// Whether the events of later puts in this batch carry the previous version (`prev_kv`;
    /// on by default). Off, a put reads its previous version from the backend only when its
    /// caller asks for it, and its event's `prev_kv` is `None` even if the key was live:
    /// for a batch nobody watches with `prev_kv`, that read is most of a put's cost once the
    /// key's page is not cached. Deletes always carry `prev_kv` (they read it anyway).
    pub fn put_events_carry_prev_kv(&mut self, carry: bool) {
        self.put_events_prev_kv = carry;
    }

    /// The current revision, including transactions already ended in this batch.
    pub fn current_revision(&self) -> i64 {
        self.revs.current
    }

    /// The compacted revision, including a compaction scheduled in this batch.
    pub fn compact_revision(&self) -> i64 {
        self.revs.compacted
    }

    /// Starts one etcd transaction at revision `current_revision() + 1`.
    pub fn begin_txn(&mut self) -> TxnWriter<'_> {
        let main = self.revs.current + 1;
        TxnWriter {
            batch: self,
            main,
            sub: 0,
            events: Vec::new(),
        }
    }

    /// Range read seeing every write of this batch so far.
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        read::range(
            &*self.txn,
            &self.index.shared,
            key,
            range_end,
            opts,
            self.revs,
        )
    }

    /// Reads caller-owned metadata (including writes of this batch).
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.txn.get(Table::AppMeta, key)
    }

    /// Writes caller-owned metadata atomically with this batch's data.
    pub fn put_meta(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.txn.put(Table::AppMeta, key, value)
    }

    /// Removes caller-owned metadata; returns whether it existed.
    pub fn delete_meta(&mut self, key: &[u8]) -> Result<bool> {
        self.txn.delete(Table::AppMeta, key)
    }

    /// Stores an opaque lease record under `lease_id`.
    pub fn put_lease(&mut self, lease_id: i64, record: &[u8]) -> Result<()> {
        self.txn.put(Table::Lease, &encode_i64(lease_id), record)
    }

    /// The lease record stored under `lease_id` (including writes of this batch).
    pub fn get_lease(&self, lease_id: i64) -> Result<Option<Vec<u8>>> {
        self.txn.get(Table::Lease, &encode_i64(lease_id))
    }

    /// The keys attached to `lease` (including this batch's changes), in key order.
    pub fn attached_keys(&self, lease: i64) -> Vec<Vec<u8>> {
        let index = self.index.shared.read();
        index.attached(lease).map(<[u8]>::to_vec).collect()
    }

    /// Removes a lease record; returns whether it existed.
    pub fn delete_lease(&mut self, lease_id: i64) -> Result<bool> {
        self.txn.delete(Table::Lease, &encode_i64(lease_id))
    }

    /// Records compaction at `revision` in this batch: once committed, reads below it fail
    /// with `Compacted`. The physical removal runs later in small steps
    /// ([`super::Store::compact_step`]) and changes no read result at or above `revision`.
    /// Errors like etcd: `revision <= compact revision` is `Compacted`, `revision > current`
    /// is `FutureRevision`.
    pub fn schedule_compaction(&mut self, revision: i64) -> Result<()> {
        if revision <= self.revs.compacted {
            return Err(StorageError::Compacted);
        }
        if revision > self.revs.current {
            return Err(StorageError::FutureRevision);
        }
        self.txn
            .put(Table::Meta, META_COMPACT, &encode_i64(revision))?;
        self.txn.put(Table::Meta, META_COMPACT_CURSOR, &[])?;
        self.revs.compacted = revision;
        Ok(())
    }

    /// Commits everything atomically; see [`WriteTxn::commit`] for `durable`.
    pub fn commit(self, durable: bool) -> Result<()> {
        let WriteBatch {
            mut txn,
            revs,
            mut index,
            ..
        } = self;
        if revs.current != index.above {
            txn.put(Table::Meta, META_CURRENT, &encode_i64(revs.current))?;
        }
        txn.commit(durable)?;
        index.committed = true;
        Ok(())
    }
}

/// One etcd transaction inside a [`WriteBatch`]. Every change gets revision
/// `(main, sub)` with `sub` counting 0, 1, 2...; reads see earlier changes of this txn.
pub struct TxnWriter<'b> {
    batch: &'b mut WriteBatch,
    main: i64,
    sub: i64,
    events: Vec<Event>,
}

impl TxnWriter<'_> {
    /// The main revision this transaction writes at.
    pub fn revision(&self) -> i64 {
        self.main
    }

    // The first change moves the batch to this txn's revision, so a txn dropped without
    // `end` still leaves revision and data consistent.
    fn next_revision(&mut self) -> Revision {
        let rev = Revision {
            main: self.main,
            sub: self.sub,
        };
        self.sub += 1;
        self.batch.revs.current = self.main;
        rev
    }

    fn write_version(&mut self, key: &[u8], record: &VersionRecord<'_>) -> Result<Revision> {
        let rev = self.next_revision();
        let entry = encode_entry(key, record)?;
        self.batch.txn.put(Table::Kv, &revision_key(rev), &entry)?;
        self.batch.index.push(key, Version::of(rev, record));
        Ok(rev)
    }

    /// etcd put: returns the previous live version. The version rises by one and the
    /// create revision is kept; after a delete (or on a new key) a new generation starts
    /// with version 1 and create revision = this revision.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<KeyValue>> {
        self.put_reading_prev(key, value, lease, true)
    }

    /// [`put`](Self::put) for a caller that does not need the previous version: it is read
    /// from the backend only if this batch's put events carry it
    /// ([`WriteBatch::put_events_carry_prev_kv`]); everything else a put needs is in the
    /// key index.
    pub fn put_without_prev(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<()> {
        self.put_reading_prev(key, value, lease, false).map(drop)
    }

    fn put_reading_prev(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        return_prev: bool,
    ) -> Result<Option<KeyValue>> {
        let live = self
            .batch
            .index
            .shared
            .read()
            .visible(key, self.main)
            .filter(|v| !v.tombstone());
        let (create_revision, version) = match live {
            Some(v) => (v.create_revision, v.version + 1),
            None => (self.main, 1),
        };
        let prev = match live {
            Some(v) if return_prev || self.batch.put_events_prev_kv => {
                Some(kv_at(&*self.batch.txn, v.rev, false)?)
            }
            _ => None,
        };
        let record = VersionRecord {
            tombstone: false,
            create_revision,
            version,
            lease,
            value,
        };
        let rev = self.write_version(key, &record)?;
        let kv = to_key_value(key, rev, &record, false);
        let (prev_kv, returned) = match (self.batch.put_events_prev_kv, return_prev) {
            (true, true) => (prev.clone(), prev),
            (true, false) => (prev, None),
            (false, _) => (None, prev),
        };
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv,
        });
        Ok(returned)
    }

    /// etcd delete-range (same `(key, range_end)` forms as range): writes a tombstone for
    /// every live key and returns the deleted versions in key order.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
        let mut revisions = Vec::new();
        visit_live_at(
            &self.batch.index.shared.read(),
            key,
            range_end,
            self.main,
            &mut |_, v| {
                revisions.push(v.rev);
                true
            },
        );
        let victims = revisions
            .into_iter()
            .map(|rev| kv_at(&*self.batch.txn, rev, false))
            .collect::<Result<Vec<_>>>()?;
        let tombstone = VersionRecord {
            tombstone: true,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: &[],
        };
        for prev in &victims {
            let rev = self.write_version(&prev.key, &tombstone)?;
            let kv = KeyValue {
                key: prev.key.clone(),
                mod_revision: rev.main,
                ..KeyValue::default()
            };
            self.events.push(Event {
                kind: EventKind::Delete,
                kv,
                prev_kv: Some(prev.clone()),
            });
        }
        Ok(victims)
    }

    /// Range read seeing this transaction's earlier changes (etcd: a txn that has written
    /// reads at its own revision; one that has not reads at the batch's current revision).
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        self.batch.range(key, range_end, opts)
    }

    /// Ends the transaction; the revision rose by one iff it wrote anything.
    pub fn end(self) -> TxnOutcome {
        TxnOutcome {
            revision: self.batch.revs.current,
            events: self.events,
        }
    }
}
