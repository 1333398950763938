//! The Raft log on disk: a segmented append-only write-ahead log of checksummed records,
//! written by one writer thread that makes whole groups of appends durable with one fdatasync
//! (group commit).
//!
//! Owns: log entries, the vote, the committed and purged log ids, the segment files in the
//! log directory.
//! Must never: block openraft's core task on an fsync for appends (it hands the bytes to the
//! writer thread and reports completion through `IOFlushed`); return an entry whose checksum
//! does not match; start from a log with a damaged record anywhere but in the unacknowledged
//! tail; retry a failed write or fsync (the writer stops for good and Raft stops the member).
//!
//! Layout: `<dir>/<segment id: 16 hex digits>.wal`, ids rising by one. Every segment begins
//! with a `Start` record carrying the vote, committed and purged ids at that point, so a
//! segment never depends on an older one for state; old segments are deleted once every entry
//! in them is purged (behind a snapshot) and that purge is durable.
//!
//! Record framing: `[len: u32 LE][crc32c(kind ++ payload): u32 LE][kind: u8][payload: len bytes]`.
//! Payloads are bincode. Entries are never overwritten in place: a conflict appends a
//! `Truncate` record and the new entries after it, and replay applies records in order.
//!
//! Every writer op's bytes begin with a `Mark` record: the op's sequence number and the
//! highest op already made durable (fsynced) when it was built. Ops get consecutive numbers
//! within a segment, and numbering goes on across restarts.
//!
//! Recovery: damage in the newest segment (a record cut short or failing its checksum) is a
//! torn write that was never acknowledged unless a later `Mark` shows the damaged op was
//! already durable. The op holding the damage is the one before the first whole `Mark` after
//! it; if no later mark says that op was synced, the file is cut back to the damage. That
//! covers a power cut that wrote some pages of the last group and not others (later records
//! intact behind a hole). Damage in a durable op, or in an older segment, is corruption and
//! opening fails with `InvalidData` naming the segment and offset.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::histogram::DurationHistogram;
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// A new segment is started once the current one would grow past this.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Recent entries kept decoded in memory (replication reads them right after the append). At
/// 10,000 small writes/s this is over a second of log; a follower further behind is served from
/// disk.
const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// How many queued operations one fsync may cover at most.
const GROUP_OPS_MAX: usize = 4096;
/// Largest record payload accepted when reading back (a corrupt length must not allocate GiBs).
const RECORD_BYTES_MAX: u32 = 1 << 30;
const FRAME_HEADER: usize = 9;
/// The writer keeps written zeros this far ahead of the log tail (see [`Tail`]).
const ZERO_AHEAD_BYTES: u64 = 1 << 20;
/// How long opening waits for the directory lock held by a writer that is shutting down.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const RECORD_FORMAT: u8 = 1;

const KIND_START: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_PURGE: u8 = 4;
const KIND_VOTE: u8 = 5;
const KIND_COMMITTED: u8 = 6;
const KIND_MARK: u8 = 7;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Encodes a value as a checksummed record (also used for the state machine's own records).
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
        return Err(invalid("raft log: bad record header".into()));
    }
    let want = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[5..];
    if crc32c::crc32c(payload) != want {
        return Err(invalid("raft log: record checksum mismatch".into()));
    }
    bincode::deserialize(payload).map_err(|e| invalid(e.to_string()))
}

/// Appends one framed record to `out`.
fn frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// The outcome of parsing the record at the start of `buf`.
enum Parsed<'a> {
    Record {
        kind: u8,
        payload: &'a [u8],
    },
    /// Fewer bytes than the frame announces.
    Short,
    /// A whole frame whose checksum does not match.
    BadChecksum,
}

fn parse(buf: &[u8]) -> Parsed<'_> {
    if buf.len() < FRAME_HEADER {
        return Parsed::Short;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len > RECORD_BYTES_MAX || buf.len() - FRAME_HEADER < len as usize {
        return Parsed::Short;
    }
    let kind = buf[8];
    let payload = &buf[FRAME_HEADER..FRAME_HEADER + len as usize];
    if crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload) != crc {
        return Parsed::BadChecksum;
    }
    Parsed::Record { kind, payload }
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.wal")
}

fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Vote, committed and purged ids: the state a `Start` record carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

/// The record that begins every writer op: its sequence number and the highest op that was
/// durable when it was built. Encoded by hand (two little-endian u64s, as bincode would): it
/// is framed on every op, without an allocation.
#[derive(Clone, Copy, Debug)]
struct Mark {
    seq: u64,
    synced: u64,
}

const MARK_BYTES: usize = 16;

impl Mark {
    fn encode(self) -> [u8; MARK_BYTES] {
        let mut out = [0; MARK_BYTES];
        out[..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..].copy_from_slice(&self.synced.to_le_bytes());
        out
    }

    fn decode(payload: &[u8]) -> Option<Mark> {
        let payload: &[u8; MARK_BYTES] = payload.try_into().ok()?;
        let (seq, synced) = payload.split_at(8);
        Some(Mark {
            seq: u64::from_le_bytes(seq.try_into().ok()?),
            synced: u64::from_le_bytes(synced.try_into().ok()?),
        })
    }
}

/// Where an entry's record lives.
#[derive(Clone, Copy, Debug)]
struct Loc {
    log_id: LogId,
    segment: u64,
    offset: u64,
}

/// A decoded recent entry; `seq` is the writer op that carries its bytes.
struct Cached {
    entry: Entry,
    seq: u64,
    bytes: usize,
}

enum Op {
    /// Append bytes to the current segment.
    Write {
        seq: u64,
        bytes: Vec<u8>,
        callback: Option<IOFlushed<TypeConfig>>,
        done: Option<tokio::sync::oneshot::Sender<io::Result<()>>>,
    },
    /// Make the current segment durable and continue in a new, empty one.
    Rotate { segment: u64 },
    /// Delete these segments once the group (which holds their purge record) is durable.
    Delete { segments: Vec<u64> },
}

/// State shared by the appender (openraft's storage task), readers and the writer thread.
struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    /// State visible to openraft: the vote only once it is durable.
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// `committed` changed since its last record: the next batch writes it first.
    committed_unwritten: bool,
    purged: Option<LogId>,
    last_log_id: Option<LogId>,
    /// State as submitted to the writer, for the next `Start` record.
    submitted: Meta,
    /// Locations of the entries `purged + 1 ..= last`, in index order.
    locs: VecDeque<Loc>,
    /// The newest entries, a suffix of `locs`, decoded.
    cache: VecDeque<Cached>,
    cache_bytes: usize,
    /// Current segment id and the bytes submitted to it so far.
    segment: u64,
    segment_len: u64,
    /// Highest entry index written to each live segment (0: none).
    segment_max: BTreeMap<u64, u64>,
    next_seq: u64,
    /// Highest writer op written to its file (entries up to it can be read back from disk).
    written_seq: u64,
    /// Highest writer op made durable by an fsync (what the next `Mark` records).
    synced_seq: u64,
    readers: HashMap<u64, Arc<File>>,
}

impl Inner {
    fn first_cached(&self) -> Option<u64> {
        self.cache.front().map(|c| c.entry.index())
    }

    fn loc(&self, index: u64) -> Option<Loc> {
        let first = self.locs.front()?.log_id.index();
        let i = usize::try_from(index.checked_sub(first)?).ok()?;
        self.locs.get(i).copied()
    }

    fn drop_from(&mut self, from: u64) {
        while self.locs.back().is_some_and(|l| l.log_id.index() >= from) {
            self.locs.pop_back();
        }
        while self.cache.back().is_some_and(|c| c.entry.index() >= from) {
            let c = self.cache.pop_back().expect("non-empty");
            self.cache_bytes -= c.bytes;
        }
    }

    fn drop_upto(&mut self, upto: u64) {
        while self.locs.front().is_some_and(|l| l.log_id.index() <= upto) {
            self.locs.pop_front();
        }
        while self.cache.front().is_some_and(|c| c.entry.index() <= upto) {
            let c = self.cache.pop_front().expect("non-empty");
            self.cache_bytes -= c.bytes;
        }
    }

    /// Records an entry's location. An entry at or below the last one replaces it and what
    /// follows (as after a truncation); an entry after a gap starts the log afresh (it
    /// follows a purge past the end, when a snapshot was installed).
    fn push_loc(&mut self, loc: Loc) {
        let index = loc.log_id.index();
        self.drop_from(index);
        if self
            .locs
            .back()
            .is_some_and(|l| l.log_id.index() + 1 != index)
        {
            self.locs.clear();
            self.cache.clear();
            self.cache_bytes = 0;
        }
        self.locs.push_back(loc);
    }

    fn evict(&mut self) {
        while self.cache_bytes > CACHE_BYTES
            && self
                .cache
                .front()
                .is_some_and(|c| c.seq <= self.written_seq)
        {
            let c = self.cache.pop_front().expect("non-empty");
            self.cache_bytes -= c.bytes;
        }
    }

    fn reader(&mut self, segment: u64) -> io::Result<Arc<File>> {
        if let Some(f) = self.readers.get(&segment) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.dir.join(segment_name(segment)))?);
        self.readers.insert(segment, f.clone());
        Ok(f)
    }
}

/// Builds the writer ops of one call, starting new segments as they fill up.
struct Batch<'a> {
    inner: &'a mut Inner,
    ops: Vec<Op>,
    bytes: Vec<u8>,
}

impl<'a> Batch<'a> {
    fn new(inner: &'a mut Inner) -> Self {
        let mut batch = Self {
            inner,
            ops: Vec::new(),
            bytes: Vec::new(),
        };
        if std::mem::take(&mut batch.inner.committed_unwritten) {
            let payload =
                bincode::serialize(&batch.inner.submitted.committed).expect("log id serializes");
            batch.record(KIND_COMMITTED, &payload);
        }
        batch
    }

    /// Frames one record into the current segment; returns (segment, offset) of the record.
    /// The first record of a writer op is preceded by the op's `Mark`.
    fn record(&mut self, kind: u8, payload: &[u8]) -> (u64, u64) {
        let len = (FRAME_HEADER + payload.len()) as u64;
        let start_len = self.inner.segment_len;
        if start_len > 0 && start_len + len > self.inner.segment_bytes && kind != KIND_START {
            self.rotate();
        }
        if self.bytes.is_empty() {
            // The op these bytes become takes `next_seq` (see `push_write`).
            let mark = Mark {
                seq: self.inner.next_seq,
                synced: self.inner.synced_seq,
            };
            frame(KIND_MARK, &mark.encode(), &mut self.bytes);
            self.inner.segment_len += (FRAME_HEADER + MARK_BYTES) as u64;
        }
        let at = (self.inner.segment, self.inner.segment_len);
        frame(kind, payload, &mut self.bytes);
        self.inner.segment_len += len;
        at
    }

    /// Queues what was framed so far as one write op. Only an op with bytes takes a new
    /// number (its `Mark` carries it), so the marked ops of a segment are numbered without
    /// gaps; an op that only carries completion handles reuses the last number.
    fn push_write(
        &mut self,
        callback: Option<IOFlushed<TypeConfig>>,
        done: Option<tokio::sync::oneshot::Sender<io::Result<()>>>,
    ) {
        let seq = if self.bytes.is_empty() {
            self.inner.next_seq - 1
        } else {
            self.inner.next_seq += 1;
            self.inner.next_seq - 1
        };
        self.ops.push(Op::Write {
            seq,
            bytes: std::mem::take(&mut self.bytes),
            callback,
            done,
        });
    }

    fn flush_bytes(&mut self) {
        if !self.bytes.is_empty() {
            self.push_write(None, None);
        }
    }

    fn rotate(&mut self) {
        self.flush_bytes();
        let next = self.inner.segment + 1;
        self.ops.push(Op::Rotate { segment: next });
        self.inner.segment = next;
        self.inner.segment_len = 0;
        self.inner.segment_max.insert(next, 0);
        let meta = bincode::serialize(&self.inner.submitted).expect("meta serializes");
        self.record(KIND_START, &meta);
    }

    /// The ops to send; the last write carries the completion handles.
    fn finish(
        mut self,
        callback: Option<IOFlushed<TypeConfig>>,
        done: Option<tokio::sync::oneshot::Sender<io::Result<()>>>,
    ) -> Vec<Op> {
        if !self.bytes.is_empty() || callback.is_some() || done.is_some() {
            self.push_write(callback, done);
        }
        self.ops
    }
}

/// The Raft log store; cheap to clone (the clones share one directory and writer).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    writer: mpsc::Sender<Op>,
    /// How long the writer's fdatasyncs took.
    fsyncs: Arc<DurationHistogram>,
}

impl LogStore {
    /// Opens (or creates) the log directory, replays it and starts the writer thread.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_with(dir, SEGMENT_BYTES_DEFAULT)
    }

    /// Like [`LogStore::open`] with a chosen segment size (tests use small segments).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let (inner, tail) = recover(dir, segment_bytes)?;
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Mutex::new(inner));
        let shared = inner.clone();
        let dir = dir.to_path_buf();
        let fsyncs = Arc::new(DurationHistogram::default());
        let timed = fsyncs.clone();
        thread::Builder::new()
            .name("keel-raft-log".into())
            .spawn(move || {
                writer_loop(&dir, tail, &shared, &rx, &timed);
                // The directory stays locked until the writer is gone for good.
                drop(lock);
            })?;
        Ok(Self {
            inner,
            writer: tx,
            fsyncs,
        })
    }

    /// The durations of the writer's fdatasyncs (etcd's `etcd_disk_wal_fsync_duration_seconds`).
    pub fn fsync_durations(&self) -> Arc<DurationHistogram> {
        self.fsyncs.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn send(&self, ops: Vec<Op>) -> io::Result<()> {
        for op in ops {
            self.writer
                .send(op)
                .map_err(|_| io::Error::other("raft log writer stopped"))?;
        }
        Ok(())
    }

    fn read_range(&self, start: u64, end_inclusive: u64) -> io::Result<Vec<Entry>> {
        let (on_disk, cached) = {
            let mut inner = self.lock();
            let (Some(first), Some(last)) = (
                inner.locs.front().map(|l| l.log_id.index()),
                inner.last_log_id.map(|l| l.index()),
            ) else {
                return Ok(Vec::new());
            };
            // Purged entries are simply absent, as openraft expects.
            let (start, end) = (start.max(first), end_inclusive.min(last));
            if start > end {
                return Ok(Vec::new());
            }
            let first_cached = inner.first_cached().unwrap_or(end + 1);
            let mut on_disk = Vec::new();
            for index in start..first_cached.min(end + 1) {
                let loc = inner
                    .loc(index)
                    .ok_or_else(|| invalid(format!("raft log: entry {index} has no location")))?;
                let file = inner.reader(loc.segment)?;
                on_disk.push((loc, file));
            }
            let cached: Vec<Entry> = if end >= first_cached {
                let lo = (start.max(first_cached) - first_cached) as usize;
                let hi = (end - first_cached) as usize;
                inner
                    .cache
                    .range(lo..=hi)
                    .map(|c| c.entry.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (on_disk, cached)
        };
        let mut out = Vec::with_capacity(on_disk.len() + cached.len());
        for (loc, file) in on_disk {
            out.push(read_entry(&file, loc)?);
        }
        out.extend(cached);
        Ok(out)
    }
}

/// Takes the log directory's exclusive lock (`LOCK`, an advisory file lock): two writers on
/// one log would interleave their records. A writer of this process that is still shutting
/// down (a member restarted in place) gets `LOCK_WAIT` to let go.
fn lock_dir(dir: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("raft log {} is in use by another writer", dir.display()),
                ))
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A poisoned lock means a panic mid-update elsewhere; the files are the truth and the
    // writer reports its own failures, so readers go on.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_entry(file: &File, loc: Loc) -> io::Result<Entry> {
    let mut header = [0u8; FRAME_HEADER];
    file.read_exact_at(&mut header, loc.offset)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    if len > RECORD_BYTES_MAX {
        return Err(invalid(format!(
            "raft log: segment {} offset {}: bad record length",
            loc.segment, loc.offset
        )));
    }
    let mut buf = vec![0u8; FRAME_HEADER + len as usize];
    buf[..FRAME_HEADER].copy_from_slice(&header);
    file.read_exact_at(&mut buf[FRAME_HEADER..], loc.offset + FRAME_HEADER as u64)?;
    match parse(&buf) {
        Parsed::Record {
            kind: KIND_ENTRY,
            payload,
        } => {
            let entry: Entry = bincode::deserialize(payload).map_err(|e| invalid(e.to_string()))?;
            if entry.log_id() != loc.log_id {
                return Err(invalid(format!(
                    "raft log: segment {} offset {} holds {} instead of {}",
                    loc.segment,
                    loc.offset,
                    entry.log_id(),
                    loc.log_id
                )));
            }
            Ok(entry)
        }
        _ => Err(invalid(format!(
            "raft log: segment {} offset {}: damaged entry record",
            loc.segment, loc.offset
        ))),
    }
}

/// Replays every segment in `dir`; returns the state and the newest segment open for append.
fn recover(dir: &Path, segment_bytes: u64) -> io::Result<(Inner, Tail)> {
    let mut segments: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(segment_id))
        .collect();
    segments.sort_unstable();
    let mut inner = Inner {
        dir: dir.to_path_buf(),
        segment_bytes,
        vote: None,
        committed: None,
        committed_unwritten: false,
        purged: None,
        last_log_id: None,
        submitted: Meta::default(),
        locs: VecDeque::new(),
        cache: VecDeque::new(),
        cache_bytes: 0,
        segment: 0,
        segment_len: 0,
        segment_max: BTreeMap::new(),
        next_seq: 1,
        written_seq: 0,
        synced_seq: 0,
        readers: HashMap::new(),
    };
    let mut meta = Meta::default();
    let newest = segments.last().copied();
    for &id in &segments {
        let path = dir.join(segment_name(id));
        let data = fs::read(&path)?;
        let valid = replay_segment(id, &data, &mut meta, &mut inner)?;
        // Zeros after the last record are the writer's zeroed space ahead of the tail.
        if data[valid..].iter().any(|b| *b != 0) {
            if Some(id) != newest {
                return Err(invalid(format!(
                    "raft log: segment {} is damaged at offset {valid} and is not the newest",
                    path.display()
                )));
            }
            tracing::warn!(
                segment = %path.display(),
                offset = valid,
                dropped = data.len() - valid,
                "raft log: cutting an unacknowledged torn write off the log tail"
            );
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(valid as u64)?;
            f.sync_all()?;
        }
        inner.segment = id;
        inner.segment_len = valid as u64;
    }
    if let Some(purged) = meta.purged {
        inner.drop_upto(purged.index());
    }
    inner.vote = meta.vote;
    inner.committed = meta.committed;
    inner.purged = meta.purged;
    inner.submitted = meta;
    inner.last_log_id = inner.locs.back().map(|l| l.log_id).or(meta.purged);
    if let (Some(first), Some(purged)) = (inner.locs.front(), meta.purged) {
        if first.log_id.index() != purged.index() + 1 {
            return Err(invalid(format!(
                "raft log: entries {}..{} are missing",
                purged.index() + 1,
                first.log_id.index()
            )));
        }
    }
    let file = match newest {
        Some(id) => OpenOptions::new()
            .write(true)
            .open(dir.join(segment_name(id)))?,
        None => {
            inner.segment = 1;
            inner.segment_max.insert(1, 0);
            create_segment(dir, 1)?
        }
    };
    let mut tail = Tail::open(file, inner.segment_len)?;
    if inner.segment_len == 0 {
        // A fresh log, or a crash between creating a segment and writing its first record:
        // every segment must start with the state, so that older ones can be deleted.
        let mut bytes = Vec::new();
        frame(
            KIND_START,
            &bincode::serialize(&meta).map_err(io_err)?,
            &mut bytes,
        );
        tail.write(&bytes)?;
        tail.file.sync_data()?;
        sync_dir(dir)?;
        inner.segment_len = bytes.len() as u64;
    } else {
        // What replay accepted is durable from here on, so this run's marks may say so (a
        // process crash leaves its unsynced writes in the page cache, not on disk).
        tail.file.sync_data()?;
    }
    inner.written_seq = inner.next_seq - 1;
    inner.synced_seq = inner.next_seq - 1;
    Ok((inner, tail))
}

/// Applies one segment's records; returns the length of its undamaged prefix.
fn replay_segment(id: u64, data: &[u8], meta: &mut Meta, inner: &mut Inner) -> io::Result<usize> {
    let mut at = 0usize;
    let mut max_index = 0u64;
    while at < data.len() {
        let (kind, payload) = match parse(&data[at..]) {
            Parsed::Record { kind, payload } => (kind, payload),
            Parsed::Short | Parsed::BadChecksum => {
                if let Some(durable) = durable_op_at(data, at) {
                    return Err(invalid(format!(
                        "raft log: segment {} is damaged at offset {at}, in op {durable}, \
                         which a later record shows was durable",
                        segment_name(id)
                    )));
                }
                break;
            }
        };
        let bad = |e: bincode::Error| {
            invalid(format!(
                "raft log: segment {} offset {at}: {e}",
                segment_name(id)
            ))
        };
        match kind {
            KIND_START => *meta = bincode::deserialize(payload).map_err(bad)?,
            KIND_VOTE => meta.vote = Some(bincode::deserialize(payload).map_err(bad)?),
            KIND_COMMITTED => meta.committed = bincode::deserialize(payload).map_err(bad)?,
            KIND_MARK => {
                let mark = Mark::decode(payload).ok_or_else(|| {
                    invalid(format!(
                        "raft log: segment {} offset {at}: bad mark",
                        segment_name(id)
                    ))
                })?;
                inner.next_seq = inner.next_seq.max(mark.seq + 1);
            }
            KIND_PURGE => {
                let purged: LogId = bincode::deserialize(payload).map_err(bad)?;
                meta.purged = Some(purged);
                inner.drop_upto(purged.index());
            }
            KIND_TRUNCATE => {
                let from: u64 = bincode::deserialize(payload).map_err(bad)?;
                inner.drop_from(from);
            }
            KIND_ENTRY => {
                let entry: Entry = bincode::deserialize(payload).map_err(bad)?;
                // After a gap, the check at the end of replay proves a purge covers it.
                inner.push_loc(Loc {
                    log_id: entry.log_id(),
                    segment: id,
                    offset: at as u64,
                });
                max_index = max_index.max(entry.index());
            }
            other => {
                return Err(invalid(format!(
                    "raft log: segment {} offset {at}: unknown record kind {other}",
                    segment_name(id)
                )))
            }
        }
        at += FRAME_HEADER + payload.len();
    }
    inner.segment_max.insert(id, max_index);
    Ok(at)
}

/// Whether damage at `at` lies in an op that was durable: the op holding it is the one before
/// the first whole `Mark` after it (ops are numbered consecutively in a segment), and it was
/// durable if any later mark says so. Returns that op's number if so. Without a later mark the
/// damage is in the last op written, which a crash may have torn.
fn durable_op_at(data: &[u8], at: usize) -> Option<u64> {
    let mark_len = (MARK_BYTES as u32).to_le_bytes();
    let mut marks = (at + 1..data.len().saturating_sub(FRAME_HEADER))
        .filter(|&p| data[p + 8] == KIND_MARK && data[p..p + 4] == mark_len)
        .filter_map(|p| match parse(&data[p..]) {
            Parsed::Record { payload, .. } => Mark::decode(payload),
            _ => None,
        });
    let first = marks.next()?;
    let damaged = first.seq.checked_sub(1)?;
    std::iter::once(first)
        .chain(marks)
        .any(|m| m.synced >= damaged)
        .then_some(damaged)
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(dir.join(segment_name(id)))
}

/// The segment being written. Records go at `pos`; the file already holds written zeros up to
/// `zeroed`, which the writer keeps up to [`ZERO_AHEAD_BYTES`] ahead of `pos`. Overwriting
/// blocks that exist leaves the file's size and block map alone, so `fdatasync` writes the
/// data and flushes the disk cache; growing the file would add a synchronous inode write to
/// every `fdatasync` (ext4 without a journal writes the inode block and waits for it). Replay
/// reads zeros after the last record as the end of the segment.
struct Tail {
    file: File,
    pos: u64,
    zeroed: u64,
}

impl Tail {
    fn open(file: File, pos: u64) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            pos,
            zeroed: len.max(pos),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, self.pos)?;
        self.pos += bytes.len() as u64;
        if self.pos > self.zeroed.saturating_sub(ZERO_AHEAD_BYTES / 2) {
            let from = self.zeroed.max(self.pos);
            let to = (self.pos + ZERO_AHEAD_BYTES).next_multiple_of(ZERO_AHEAD_BYTES);
            self.file
                .write_all_at(&vec![0; (to - from) as usize], from)?;
            self.zeroed = to;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Drains every queued operation, writes them, fsyncs once, then reports completion.
fn writer_loop(
    dir: &Path,
    mut tail: Tail,
    inner: &Mutex<Inner>,
    rx: &mpsc::Receiver<Op>,
    fsyncs: &DurationHistogram,
) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < GROUP_OPS_MAX {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut deletes = Vec::new();
        let mut last_seq = 0;
        let result = write_group(
            dir,
            &mut tail,
            &mut ops,
            &mut deletes,
            &mut last_seq,
            fsyncs,
        );
        if let Err(e) = &result {
            // fsync failures are not retryable: report them and stop writing for good.
            tracing::error!(error = %e, "raft log write failed; this member stops");
        }
        let outcome = || {
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| io::Error::new(e.kind(), e.to_string()))
        };
        for op in ops {
            if let Op::Write { callback, done, .. } = op {
                if let Some(cb) = callback {
                    cb.io_completed(outcome());
                }
                if let Some(done) = done {
                    let _ = done.send(outcome());
                }
            }
        }
        if result.is_err() {
            return;
        }
        for segment in &deletes {
            if let Err(e) = fs::remove_file(dir.join(segment_name(*segment))) {
                // Harmless: replay skips entries behind the purge; retried at the next purge.
                tracing::warn!(segment, error = %e, "raft log: could not delete a purged segment");
            }
        }
        let mut guard = lock(inner);
        guard.written_seq = guard.written_seq.max(last_seq);
        if result.as_ref().is_ok_and(|synced| *synced) {
            guard.synced_seq = guard.synced_seq.max(last_seq);
        }
        for segment in deletes {
            guard.readers.remove(&segment);
        }
        guard.evict();
    }
}

fn write_group(
    dir: &Path,
    tail: &mut Tail,
    ops: &mut [Op],
    deletes: &mut Vec<u64>,
    last_seq: &mut u64,
    fsyncs: &DurationHistogram,
) -> io::Result<bool> {
    let sync = |file: &File| {
        let started = std::time::Instant::now();
        file.sync_data()?;
        fsyncs.observe(started.elapsed());
        io::Result::Ok(())
    };
    let mut new_dir_entry = false;
    // Only a group that someone waits for needs the fsync: a group of records nobody waits
    // for (a truncate, a purge) rides on the next fsync instead.
    let needs_sync = ops.iter().any(|op| match op {
        Op::Write { callback, done, .. } => callback.is_some() || done.is_some(),
        Op::Rotate { .. } | Op::Delete { .. } => true,
    });
    for op in ops.iter_mut() {
        match op {
            Op::Write { seq, bytes, .. } => {
                tail.write(bytes)?;
                *last_seq = *seq;
            }
            Op::Rotate { segment } => {
                sync(&tail.file)?;
                *tail = Tail::open(create_segment(dir, *segment)?, 0)?;
                new_dir_entry = true;
            }
            Op::Delete { segments } => deletes.append(segments),
        }
    }
    crate::crash_point!("wal::before_fsync");
    if needs_sync {
        sync(&tail.file)?;
    }
    crate::crash_point!("wal::after_fsync");
    if new_dir_entry {
        sync_dir(dir)?;
    }
    Ok(needs_sync)
}

/// Inclusive `(start, end)` of a range of log indexes; empty when `start > end`.
pub(crate) fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
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
            last_purged_log_id: inner.purged,
            last_log_id: inner.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // A vote must be durable before it is acted on: wait for the fsync.
        let payload = bincode::serialize(vote).map_err(io_err)?;
        let (done, rx) = tokio::sync::oneshot::channel();
        let ops = {
            let mut inner = self.lock();
            inner.submitted.vote = Some(*vote);
            let mut batch = Batch::new(&mut inner);
            batch.record(KIND_VOTE, &payload);
            batch.finish(None, Some(done))
        };
        self.send(ops)?;
        rx.await
            .map_err(|_| io::Error::other("raft log writer stopped"))??;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Only an optimisation for restart (apply can resume before an election), so it is
        // not written on its own: its record goes first in the next batch (an append, a vote,
        // a truncate or a purge), which saves a wake-up of the writer thread per commit. A
        // crash loses at most the hints since the last batch, as an unsynced write would.
        let mut inner = self.lock();
        inner.committed = committed;
        inner.submitted.committed = committed;
        inner.committed_unwritten = true;
        Ok(())
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
        let ops = {
            let mut inner = self.lock();
            let mut batch = Batch::new(&mut inner);
            let mut added = Vec::new();
            for entry in entries {
                let payload = bincode::serialize(&entry).map_err(io_err)?;
                let (segment, offset) = batch.record(KIND_ENTRY, &payload);
                added.push((entry, segment, offset, payload.len()));
            }
            let ops = batch.finish(Some(callback), None);
            // The last write carries the last of these entries: none of them leaves the cache
            // before that write is in the file.
            let seq = inner.next_seq - 1;
            for (entry, segment, offset, bytes) in added {
                let max = inner.segment_max.entry(segment).or_insert(0);
                *max = (*max).max(entry.index());
                inner.push_loc(Loc {
                    log_id: entry.log_id(),
                    segment,
                    offset,
                });
                inner.last_log_id = Some(entry.log_id());
                inner.cache_bytes += bytes;
                inner.cache.push_back(Cached { entry, seq, bytes });
            }
            inner.evict();
            ops
        };
        self.send(ops)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        let payload = bincode::serialize(&from).map_err(io_err)?;
        let ops = {
            let mut inner = self.lock();
            inner.drop_from(from);
            inner.last_log_id = last_log_id.or(inner.purged);
            let mut batch = Batch::new(&mut inner);
            batch.record(KIND_TRUNCATE, &payload);
            batch.finish(None, None)
        };
        self.send(ops)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let payload = bincode::serialize(&log_id).map_err(io_err)?;
        let ops = {
            let mut inner = self.lock();
            inner.drop_upto(log_id.index());
            inner.purged = Some(log_id);
            inner.submitted.purged = Some(log_id);
            if inner.last_log_id.is_none_or(|l| l.index() < log_id.index()) {
                inner.last_log_id = Some(log_id);
            }
            let current = inner.segment;
            let dead: Vec<u64> = inner
                .segment_max
                .iter()
                .filter(|(id, max)| **id < current && **max <= log_id.index())
                .map(|(id, _)| *id)
                .collect();
            for id in &dead {
                inner.segment_max.remove(id);
            }
            let mut batch = Batch::new(&mut inner);
            batch.record(KIND_PURGE, &payload);
            let mut ops = batch.finish(None, None);
            if !dead.is_empty() {
                ops.push(Op::Delete { segments: dead });
            }
            ops
        };
        self.send(ops)
    }
}

#[cfg(test)]
mod tests {
    use openraft::rt::Oneshot;
    use openraft::vote::RaftLeaderIdExt;

    use std::os::unix::fs::FileExt;

    use super::*;

    type LeaderId = openraft::alias::LeaderIdOf<TypeConfig>;
    type Channel = openraft::alias::OneshotOf<TypeConfig>;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(LeaderId::new_committed(term, 7), index)
    }

    fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        range.map(|i| Entry::new_blank(log_id(term, i))).collect()
    }

    async fn append(store: &mut LogStore, batch: Vec<Entry>) {
        let (tx, rx) = Channel::channel();
        store
            .append(batch, IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("callback").expect("flushed");
    }

    async fn all(store: &mut LogStore) -> Vec<LogId> {
        store
            .try_get_log_entries(0..)
            .await
            .expect("read")
            .iter()
            .map(|e| e.log_id())
            .collect()
    }

    /// Writes a vote (waits for it), which also makes every earlier record durable.
    async fn barrier(store: &mut LogStore, term: u64) {
        store.save_vote(&Vote::new(term, 7)).await.expect("vote");
    }

    fn segments(dir: &Path) -> Vec<u64> {
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().to_str().and_then(segment_id))
            .collect();
        ids.sort_unstable();
        ids
    }

    fn newest_segment(dir: &Path) -> PathBuf {
        dir.join(segment_name(*segments(dir).last().expect("a segment")))
    }

    #[tokio::test]
    async fn entries_vote_and_committed_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=5)).await;
            store
                .save_committed(Some(log_id(1, 4)))
                .await
                .expect("commit");
            barrier(&mut store, 2).await;
            assert_eq!(all(&mut store).await.len(), 5);
        }
        let mut store = LogStore::open(dir.path()).expect("reopen");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 5)));
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(
            store.read_vote().await.expect("vote"),
            Some(Vote::new(2, 7))
        );
        assert_eq!(store.read_committed().await.expect("c"), Some(log_id(1, 4)));
        let got = store.try_get_log_entries(2..4).await.expect("read");
        assert_eq!(
            got.iter().map(|e| e.log_id()).collect::<Vec<_>>(),
            vec![log_id(1, 2), log_id(1, 3)]
        );
    }

    #[tokio::test]
    async fn a_committed_index_is_written_with_the_next_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=3)).await;
            store.save_committed(Some(log_id(1, 2))).await.expect("c");
            assert_eq!(store.read_committed().await.expect("c"), Some(log_id(1, 2)));
        }
        // Nothing was written after it: the hint is not on disk.
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(store.read_committed().await.expect("c"), None);
        store.save_committed(Some(log_id(1, 3))).await.expect("c");
        append(&mut store, entries(1, 4..=4)).await;
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(store.read_committed().await.expect("c"), Some(log_id(1, 3)));
    }

    #[tokio::test]
    async fn truncation_and_conflicting_entries_replay_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=6)).await;
            store
                .truncate_after(Some(log_id(1, 3)))
                .await
                .expect("truncate");
            assert_eq!(all(&mut store).await.len(), 3);
            append(&mut store, entries(2, 4..=5)).await;
        }
        let mut store = LogStore::open(dir.path()).expect("reopen");
        let want = vec![
            log_id(1, 1),
            log_id(1, 2),
            log_id(1, 3),
            log_id(2, 4),
            log_id(2, 5),
        ];
        assert_eq!(all(&mut store).await, want);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(2, 5)));
    }

    #[tokio::test]
    async fn an_append_over_existing_entries_replaces_them_without_a_truncate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let want = vec![
            log_id(1, 1),
            log_id(1, 2),
            log_id(1, 3),
            log_id(2, 4),
            log_id(2, 5),
            log_id(2, 6),
        ];
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=5)).await;
            append(&mut store, entries(2, 4..=6)).await;
            assert_eq!(all(&mut store).await, want);
        }
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(all(&mut store).await, want);
    }

    #[tokio::test]
    async fn a_second_writer_waits_for_the_first_to_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = LogStore::open(dir.path()).expect("open");
        append(&mut first, entries(1, 1..=2)).await;
        // While the first store lives, its writer holds the directory lock.
        let probe = File::open(dir.path().join("LOCK")).expect("lock file");
        assert!(
            matches!(probe.try_lock(), Err(fs::TryLockError::WouldBlock)),
            "the log directory is not locked by its writer"
        );
        let path = dir.path().to_path_buf();
        let second = std::thread::spawn(move || LogStore::open(&path).map(|_| ()));
        drop(first);
        second
            .join()
            .expect("thread")
            .expect("opens once the first writer is gone");
    }

    #[tokio::test]
    async fn small_segments_rotate_and_purge_deletes_old_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open_with(dir.path(), 512).expect("open");
            for i in 0..20 {
                append(&mut store, entries(1, i * 5 + 1..=i * 5 + 5)).await;
            }
            barrier(&mut store, 3).await;
            assert!(segments(dir.path()).len() > 5, "{:?}", segments(dir.path()));
            store.purge(log_id(1, 90)).await.expect("purge");
            barrier(&mut store, 4).await;
            // The writer deletes after reporting a group, so only the next group's completion
            // proves the deletion happened.
            barrier(&mut store, 5).await;
            let left = segments(dir.path());
            assert!(left.len() <= 4, "purged segments are deleted: {left:?}");
            let got = all(&mut store).await;
            assert_eq!(got.first(), Some(&log_id(1, 91)));
            assert_eq!(got.len(), 10);
        }
        // The vote lived in deleted segments: the newer segments' start records carry it.
        let mut store = LogStore::open_with(dir.path(), 512).expect("reopen");
        assert_eq!(
            store.read_vote().await.expect("vote"),
            Some(Vote::new(5, 7))
        );
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 90)));
        assert_eq!(state.last_log_id, Some(log_id(1, 100)));
        let got = all(&mut store).await;
        assert_eq!(got.len(), 10);
        assert_eq!(got.first(), Some(&log_id(1, 91)));
    }

    #[tokio::test]
    async fn purge_past_the_end_then_append_after_a_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=3)).await;
            store.purge(log_id(2, 50)).await.expect("purge");
            let state = store.get_log_state().await.expect("state");
            assert_eq!(state.last_log_id, Some(log_id(2, 50)));
            append(&mut store, entries(2, 51..=52)).await;
        }
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(all(&mut store).await, vec![log_id(2, 51), log_id(2, 52)]);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 50)));
    }

    /// The whole records of a segment from its start, as (offset, kind), and where they end
    /// (zeros or damage may follow).
    fn walk(bytes: &[u8]) -> (Vec<(usize, u8)>, usize) {
        let mut at = 0;
        let mut records = Vec::new();
        while let Parsed::Record { kind, payload } = parse(&bytes[at..]) {
            records.push((at, kind));
            at += FRAME_HEADER + payload.len();
        }
        (records, at)
    }

    /// Where the last whole record of a segment ends (zeros may follow).
    fn records_end(bytes: &[u8]) -> usize {
        walk(bytes).1
    }

    #[tokio::test]
    async fn appends_overwrite_zeros_written_ahead_so_the_file_size_stays_put() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=4)).await;
            newest_segment(dir.path())
        };
        let size = fs::metadata(&path).expect("meta").len();
        let end = records_end(&fs::read(&path).expect("read"));
        assert!(size >= end as u64 + ZERO_AHEAD_BYTES / 2, "{size} {end}");
        assert_eq!(size % ZERO_AHEAD_BYTES, 0);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        append(&mut store, entries(1, 5..=40)).await;
        barrier(&mut store, 3).await;
        drop(store);
        let bytes = fs::read(&path).expect("read");
        assert!(records_end(&bytes) > end);
        assert_eq!(bytes.len() as u64, size, "the appends grew the file");
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(all(&mut store).await.len(), 40);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_the_log_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=4)).await;
        }
        let path = newest_segment(dir.path());
        let whole = records_end(&fs::read(&path).expect("read"));
        // An unacknowledged record cut short: a header announcing more bytes than follow.
        let mut torn = Vec::new();
        frame(KIND_ENTRY, &[1u8; 64], &mut torn);
        torn.truncate(30);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.write_all_at(&torn, whole as u64))
            .expect("tear");
        {
            let mut store = LogStore::open(dir.path()).expect("reopen after a torn write");
            assert_eq!(fs::metadata(&path).expect("meta").len(), whole as u64);
            assert_eq!(all(&mut store).await.len(), 4);
            append(&mut store, entries(1, 5..=6)).await;
        }
        // A whole last record with a bad checksum followed by zeros is a torn write too.
        let mut bytes = fs::read(&path).expect("read");
        let at = records_end(&bytes) - 3;
        bytes[at] ^= 0x40;
        bytes.extend_from_slice(&[0u8; 100]);
        fs::write(&path, &bytes).expect("write");
        let mut store = LogStore::open(dir.path()).expect("reopen after a torn record");
        assert_eq!(all(&mut store).await.len(), 5);
    }

    #[tokio::test]
    async fn a_flipped_bit_before_the_tail_refuses_to_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open_with(dir.path(), 1024).expect("open");
            for i in 0..10 {
                append(&mut store, entries(1, i * 4 + 1..=i * 4 + 4)).await;
            }
        }
        // In the newest segment, a damaged record followed by whole ones is corruption.
        let newest = newest_segment(dir.path());
        let mut bytes = fs::read(&newest).expect("read");
        assert!(bytes.len() > 200);
        bytes[FRAME_HEADER + 2] ^= 0x01;
        fs::write(&newest, &bytes).expect("write");
        let err = LogStore::open_with(dir.path(), 1024)
            .err()
            .expect("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        bytes[FRAME_HEADER + 2] ^= 0x01;
        fs::write(&newest, &bytes).expect("repair");
        LogStore::open_with(dir.path(), 1024).expect("opens once repaired");
        // A damaged tail in an older segment is not a torn write either.
        let oldest = dir.path().join(segment_name(segments(dir.path())[0]));
        let mut bytes = fs::read(&oldest).expect("read");
        let last = records_end(&bytes) - 1;
        bytes[last] ^= 0x01;
        fs::write(&oldest, &bytes).expect("write");
        let err = LogStore::open_with(dir.path(), 1024)
            .err()
            .expect("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("not the newest"), "{err}");
    }

    /// Offsets of the `Mark` records of a segment, in file order.
    fn marks(bytes: &[u8]) -> Vec<usize> {
        let (records, _) = walk(bytes);
        records
            .into_iter()
            .filter_map(|(at, kind)| (kind == KIND_MARK).then_some(at))
            .collect()
    }

    /// Zeroes the first whole 4 KiB page inside the newest segment's last op that has whole
    /// records after it: a power cut that wrote the op's later pages but not that one.
    /// Returns the page's offset.
    fn punch_hole_in_last_op(path: &Path) -> usize {
        let mut bytes = fs::read(path).expect("read");
        let op = *marks(&bytes).last().expect("a mark");
        let end = records_end(&bytes);
        let page = (op + 1).next_multiple_of(4096);
        assert!(
            page + 4096 + 512 < end,
            "the op spans too few pages: {op}..{end}"
        );
        bytes[page..page + 4096].fill(0);
        fs::write(path, &bytes).expect("write");
        page
    }

    #[tokio::test]
    async fn marks_are_numbered_without_gaps_across_empty_ops_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=2)).await;
            append(&mut store, Vec::new()).await;
            append(&mut store, entries(1, 3..=4)).await;
        }
        {
            let mut store = LogStore::open(dir.path()).expect("reopen");
            append(&mut store, Vec::new()).await;
            barrier(&mut store, 2).await;
            append(&mut store, entries(2, 5..=5)).await;
        }
        let bytes = fs::read(newest_segment(dir.path())).expect("read");
        let seqs: Vec<u64> = marks(&bytes)
            .into_iter()
            .map(|at| match parse(&bytes[at..]) {
                Parsed::Record { payload, .. } => Mark::decode(payload).expect("mark").seq,
                _ => unreachable!("marks() returns whole records"),
            })
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4], "one number per op that wrote bytes");
    }

    #[tokio::test]
    async fn a_hole_torn_into_the_last_group_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=4)).await;
            // One op of several pages: the group a power cut tears.
            append(&mut store, entries(1, 5..=600)).await;
        }
        let path = newest_segment(dir.path());
        let hole = punch_hole_in_last_op(&path);
        let kept = {
            let mut store = LogStore::open(dir.path()).expect("reopen after a torn group");
            let kept = all(&mut store).await;
            assert!(kept.len() >= 4 && kept.len() < 600, "{}", kept.len());
            assert!(kept.iter().zip(1..).all(|(id, i)| id.index() == i));
            assert!(fs::metadata(&path).expect("meta").len() <= hole as u64);
            let next = kept.len() as u64 + 1;
            append(&mut store, entries(2, next..=next + 2)).await;
            kept.len() + 3
        };
        let mut store = LogStore::open(dir.path()).expect("reopen after going on");
        assert_eq!(all(&mut store).await.len(), kept);
    }

    #[tokio::test]
    async fn a_hole_in_a_group_a_later_mark_shows_durable_refuses_to_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=600)).await;
        }
        {
            // A later run's op: its mark says everything before it was synced.
            let mut store = LogStore::open(dir.path()).expect("reopen");
            append(&mut store, entries(1, 601..=602)).await;
        }
        let path = newest_segment(dir.path());
        let after = fs::read(&path).expect("read");
        // Punch the hole into the big op (the one before the last).
        let ops = marks(&after);
        let big = ops[ops.len() - 2];
        let mut bytes = after.clone();
        let page = (big + 1).next_multiple_of(4096);
        bytes[page..page + 4096].fill(0);
        fs::write(&path, &bytes).expect("write");
        let err = LogStore::open(dir.path()).err().expect("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("durable"), "{err}");
        // A length field damaged into a huge value (a record cut short) is no torn write
        // either when a later mark shows its op durable.
        let mut bytes = after.clone();
        let first_entry = big + FRAME_HEADER + 16;
        bytes[first_entry..first_entry + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&path, &bytes).expect("write");
        let err = LogStore::open(dir.path()).err().expect("must refuse");
        assert!(err.to_string().contains("durable"), "{err}");
        fs::write(&path, &after).expect("repair");
        let mut store = LogStore::open(dir.path()).expect("opens once repaired");
        assert_eq!(all(&mut store).await.len(), 602);
    }

    #[tokio::test]
    async fn an_empty_newest_segment_gets_its_start_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, entries(1, 1..=2)).await;
            barrier(&mut store, 9).await;
        }
        // A crash between creating a segment and writing to it leaves an empty file.
        let next = segments(dir.path()).last().expect("segment") + 1;
        File::create(dir.path().join(segment_name(next))).expect("create");
        {
            let mut store = LogStore::open(dir.path()).expect("reopen");
            assert_eq!(all(&mut store).await.len(), 2);
        }
        let bytes = fs::read(dir.path().join(segment_name(next))).expect("read");
        match parse(&bytes) {
            Parsed::Record { kind, payload } => {
                assert_eq!(kind, KIND_START);
                let meta: Meta = bincode::deserialize(payload).expect("meta");
                assert_eq!(meta.vote, Some(Vote::new(9, 7)));
            }
            _ => panic!("the empty segment must now start with a state record"),
        }
    }

    #[tokio::test]
    async fn reads_come_from_disk_once_evicted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path()).expect("open");
        append(&mut store, entries(1, 1..=3)).await;
        barrier(&mut store, 1).await;
        {
            let mut inner = store.lock();
            inner.cache.clear();
            inner.cache_bytes = 0;
        }
        assert_eq!(all(&mut store).await.len(), 3);
        // A flipped bit in a record read from disk is an error, never a wrong entry.
        let path = newest_segment(dir.path());
        let loc = store.lock().loc(2).expect("loc");
        let mut bytes = fs::read(&path).expect("read");
        bytes[loc.offset as usize + FRAME_HEADER + 1] ^= 0x10;
        fs::write(&path, &bytes).expect("write");
        store.lock().readers.clear();
        let err = store.try_get_log_entries(2..3).await.expect_err("corrupt");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

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
