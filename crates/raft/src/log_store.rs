//! The Raft log on disk: a redb file of checksummed records, written by one writer thread that
//! commits whole groups of appends with a single fsync (group commit).
//!
//! Owns: log entries, the vote, the committed and purged log ids.
//! Must never: block openraft's core task on an fsync for appends (it hands the batch to the
//! writer thread and reports completion through `IOFlushed`), or return an entry whose checksum
//! does not match (a corrupt record is an I/O error, which stops the member).
//!
//! Record format (value of the `log` table, key = log index):
//! `[format: u8 = 1][crc32c(payload): u32 LE][payload: bincode(Entry)]`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{Entry, LogId, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "purged";
const RECORD_FORMAT: u8 = 1;
/// redb page cache of the log file.
const LOG_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// How many queued operations one fsync may cover at most.
const GROUP_OPS_MAX: usize = 4096;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Encodes a value as a checksummed record.
pub(crate) fn encode_record<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let payload = bincode::serialize(value).map_err(io_err)?;
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes a checksummed record; a bad format byte or checksum is `InvalidData`.
pub(crate) fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    if bytes.len() < 5 || bytes[0] != RECORD_FORMAT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "raft log: bad record header",
        ));
    }
    let want = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[5..];
    if crc32c::crc32c(payload) != want {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "raft log: record checksum mismatch",
        ));
    }
    bincode::deserialize(payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

enum Op {
    Append {
        entries: Vec<(u64, u64, Vec<u8>)>,
        callback: IOFlushed<TypeConfig>,
    },
    TruncateFrom(u64),
    Purge {
        upto: u64,
        record: Vec<u8>,
    },
    State {
        key: &'static str,
        record: Vec<u8>,
        done: Option<tokio::sync::oneshot::Sender<io::Result<()>>>,
    },
}

/// In-memory view that keeps reads consistent while the writer thread catches up.
#[derive(Default)]
struct Inner {
    /// Entries appended but not yet durable: (sequence number, entry) by index.
    pending: BTreeMap<u64, (u64, Entry)>,
    next_seq: u64,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// The Raft log store; cheap to clone (the clones share one file and writer).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    inner: Arc<Mutex<Inner>>,
    writer: mpsc::Sender<Op>,
}

impl LogStore {
    /// Opens (or creates) the log file and starts its writer thread.
    pub fn open(path: &Path) -> io::Result<Self> {
        // The log is read back mostly right after it is written (replication of recent
        // entries, which the pending map also serves), so a small page cache is enough; redb's
        // default would let the log alone grow to a gigabyte of resident memory.
        let db = Database::builder()
            .set_cache_size(LOG_CACHE_BYTES)
            .create(path)
            .map_err(io_err)?;
        let db = Arc::new(db);
        let mut inner = Inner::default();
        {
            let txn = db.begin_write().map_err(io_err)?;
            txn.open_table(LOG).map_err(io_err)?;
            txn.open_table(STATE).map_err(io_err)?;
            txn.commit().map_err(io_err)?;
        }
        let read = db.begin_read().map_err(io_err)?;
        let state = read.open_table(STATE).map_err(io_err)?;
        let load = |key: &str| -> io::Result<Option<Vec<u8>>> {
            Ok(state.get(key).map_err(io_err)?.map(|v| v.value().to_vec()))
        };
        inner.vote = load(KEY_VOTE)?.map(|b| decode_record(&b)).transpose()?;
        inner.committed = load(KEY_COMMITTED)?
            .map(|b| decode_record(&b))
            .transpose()?
            .flatten();
        inner.last_purged = load(KEY_PURGED)?.map(|b| decode_record(&b)).transpose()?;
        let log = read.open_table(LOG).map_err(io_err)?;
        inner.last_log_id = match log.last().map_err(io_err)? {
            Some((_, v)) => Some(decode_record::<Entry>(v.value())?.log_id()),
            None => inner.last_purged,
        };
        drop((log, state, read));
        let (tx, rx) = mpsc::channel();
        let writer_db = db.clone();
        let inner = Arc::new(Mutex::new(inner));
        let shared = inner.clone();
        thread::Builder::new()
            .name("keel-raft-log".into())
            .spawn(move || writer_loop(&writer_db, &shared, &rx))?;
        Ok(Self {
            db,
            inner,
            writer: tx,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means the writer panicked mid-update; the data on disk is still
        // consistent, and the in-memory view only ever grows monotonically, so go on.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, op: Op) -> io::Result<()> {
        self.writer
            .send(op)
            .map_err(|_| io::Error::other("raft log writer stopped"))
    }

    async fn save_state<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        wait: bool,
    ) -> io::Result<()> {
        let record = encode_record(value)?;
        if !wait {
            return self.send(Op::State {
                key,
                record,
                done: None,
            });
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(Op::State {
            key,
            record,
            done: Some(done),
        })?;
        rx.await
            .map_err(|_| io::Error::other("raft log writer stopped"))?
    }

    fn read_range(&self, start: u64, end_inclusive: u64) -> io::Result<Vec<Entry>> {
        // Copy pending entries first, then read the file: the writer commits to the file
        // before it drops an entry from `pending`, so every index is found in one of the two.
        let (pending, last_index) = {
            let inner = self.lock();
            let last = inner.last_log_id.map(|l| l.index());
            let pending: BTreeMap<u64, Entry> = inner
                .pending
                .range(start..=end_inclusive)
                .map(|(i, (_, e))| (*i, e.clone()))
                .collect();
            (pending, last)
        };
        let Some(last_index) = last_index else {
            return Ok(Vec::new());
        };
        let end = end_inclusive.min(last_index);
        if start > end {
            return Ok(Vec::new());
        }
        let read = self.db.begin_read().map_err(io_err)?;
        let table = read.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        for row in table.range(start..=end).map_err(io_err)? {
            let (k, v) = row.map_err(io_err)?;
            if !pending.contains_key(&k.value()) {
                out.push((k.value(), decode_record::<Entry>(v.value())?));
            }
        }
        out.extend(pending.into_iter().filter(|(i, _)| *i <= end));
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }
}

/// Drains every queued operation, writes them in one transaction, fsyncs once, then reports.
fn writer_loop(db: &Database, inner: &Mutex<Inner>, rx: &mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < GROUP_OPS_MAX {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let result = write_group(db, &ops);
        if let Err(e) = &result {
            // fsync failures are not retryable: report them and stop writing for good.
            tracing::error!(error = %e, "raft log write failed; this member stops");
        }
        let mut flushed = Vec::new();
        for op in ops {
            match op {
                Op::Append { entries, callback } => {
                    flushed.extend(entries.iter().map(|(i, seq, _)| (*i, *seq)));
                    callback.io_completed(
                        result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                    );
                }
                Op::State {
                    done: Some(done), ..
                } => {
                    let _ = done.send(
                        result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                    );
                }
                _ => {}
            }
        }
        if result.is_err() {
            return;
        }
        let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
        for (index, seq) in flushed {
            if guard.pending.get(&index).is_some_and(|(s, _)| *s == seq) {
                guard.pending.remove(&index);
            }
        }
    }
}

fn write_group(db: &Database, ops: &[Op]) -> io::Result<()> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(Durability::Immediate).map_err(io_err)?;
    {
        let mut log = txn.open_table(LOG).map_err(io_err)?;
        let mut state = txn.open_table(STATE).map_err(io_err)?;
        for op in ops {
            match op {
                Op::Append { entries, .. } => {
                    for (index, _, record) in entries {
                        log.insert(*index, record.as_slice()).map_err(io_err)?;
                    }
                }
                Op::TruncateFrom(from) => {
                    log.retain_in(*from.., |_, _| false).map_err(io_err)?;
                }
                Op::Purge { upto, record } => {
                    log.retain_in(..=*upto, |_, _| false).map_err(io_err)?;
                    state
                        .insert(KEY_PURGED, record.as_slice())
                        .map_err(io_err)?;
                }
                Op::State { key, record, .. } => {
                    state.insert(*key, record.as_slice()).map_err(io_err)?;
                }
            }
        }
    }
    txn.commit().map_err(io_err)
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => *e,
        Bound::Excluded(0) => return (1, 0),
        Bound::Excluded(e) => *e - 1,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        self.read_range(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // A vote must be durable before it is acted on: wait for the fsync.
        self.save_state(KEY_VOTE, vote, true).await?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Only an optimisation for restart (apply can resume before an election): no wait.
        self.lock().committed = committed;
        self.save_state(KEY_COMMITTED, &committed, false).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = Vec::new();
        {
            let mut inner = self.lock();
            for entry in entries {
                let index = entry.index();
                let seq = inner.next_seq;
                inner.next_seq += 1;
                batch.push((index, seq, encode_record(&entry)?));
                inner.last_log_id = Some(entry.log_id());
                inner.pending.insert(index, (seq, entry));
            }
        }
        self.send(Op::Append {
            entries: batch,
            callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        {
            let mut inner = self.lock();
            inner.pending.retain(|i, _| *i < from);
            inner.last_log_id = last_log_id.or(inner.last_purged);
        }
        self.send(Op::TruncateFrom(from))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut inner = self.lock();
            inner.pending.retain(|i, _| *i > log_id.index());
            inner.last_purged = Some(log_id);
            if inner.last_log_id.is_none_or(|l| l.index() < log_id.index()) {
                inner.last_log_id = Some(log_id);
            }
        }
        self.send(Op::Purge {
            upto: log_id.index(),
            record: encode_record(&log_id)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_flipped_bits() {
        let value = (7u64, "seven".to_string());
        let mut rec = encode_record(&value).expect("encode");
        let back: (u64, String) = decode_record(&rec).expect("decode");
        assert_eq!(back, value);
        let last = rec.len() - 1;
        rec[last] ^= 0x01;
        let err = decode_record::<(u64, String)>(&rec).expect_err("flipped bit must fail");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            decode_record::<(u64, String)>(&rec[..3]).is_err(),
            "short record must fail"
        );
    }

    #[test]
    fn bounds_cover_all_forms() {
        assert_eq!(bounds(&(3..7)), (3, 6));
        assert_eq!(bounds(&(3..=7)), (3, 7));
        assert_eq!(bounds(&(..0)), (1, 0));
        assert_eq!(bounds(&(5..)), (5, u64::MAX));
    }
}
