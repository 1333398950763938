//! A deterministic in-memory Raft log with a simulated disk, for the turmoil simulation.
//!
//! Owns: a model of what a crash keeps. [`MemLogDisk`] is the member's "disk": it outlives the
//! member (the simulation holds it across crash and restart). [`MemLog`] is the running
//! member's view: appends, truncations, purges and state saves are readable at once but only
//! reach the disk when a simulated fsync completes, `fsync_delay` after the writer task picks
//! them up (group commit, in order, like the real log). A crash drops the writer task and with
//! it everything not yet on the disk, so a crash loses exactly the unsynced tail. The
//! simulation's disk faults slow every fsync down or make the next one fail (which stops the
//! log, as a failed fsync must).
//! Must never: report an append as flushed before its fsync (unless the planted bug
//! `ack_before_fsync` is switched on to prove the simulation catches it), use threads, real
//! files or the wall clock (time is tokio's, which the simulation drives).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use tokio::sync::{mpsc, oneshot};

use crate::log_store::bounds;
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// How the simulated disk behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemLogOptions {
    /// Simulated time one fsync takes.
    pub fsync_delay: Duration,
    /// PLANTED BUG (simulation self-test only): report appended entries as flushed as soon as
    /// they are in memory, before the simulated fsync. A crash then loses entries the member
    /// already acknowledged, and the simulation must notice.
    pub ack_before_fsync: bool,
}

/// What survives a crash.
#[derive(Clone, Debug, Default)]
struct Durable {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

impl Durable {
    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .last_key_value()
            .map(|(_, e)| e.log_id())
            .or(self.purged)
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(entries) => {
                for e in entries {
                    self.entries.insert(e.index(), e.clone());
                }
            }
            Op::TruncateFrom(from) => {
                self.entries.split_off(from);
            }
            Op::Purge(log_id) => {
                self.entries = self.entries.split_off(&(log_id.index() + 1));
                self.purged = Some(*log_id);
            }
            Op::Vote(v) => self.vote = Some(*v),
            Op::Committed(c) => self.committed = *c,
        }
    }
}

/// Disk faults a simulation switches on and off while the member runs.
#[derive(Debug, Default)]
struct DiskFaults {
    /// Added to every fsync (a slow or overloaded disk).
    extra_fsync_ms: AtomicU64,
    /// The next fsync fails.
    fail_next_fsync: AtomicBool,
    /// Fsyncs that failed so far.
    failed_fsyncs: AtomicU64,
}

/// One member's simulated log disk; clones share it. Keep it outside the member so it
/// survives the member's crash.
#[derive(Clone, Debug, Default)]
pub struct MemLogDisk {
    durable: Arc<Mutex<Durable>>,
    options: MemLogOptions,
    faults: Arc<DiskFaults>,
}

impl MemLogDisk {
    pub fn new(options: MemLogOptions) -> Self {
        Self {
            durable: Arc::default(),
            options,
            faults: Arc::default(),
        }
    }

    /// Makes every fsync take `extra` longer than `fsync_delay` (zero: back to normal).
    pub fn set_extra_fsync_delay(&self, extra: Duration) {
        let ms = u64::try_from(extra.as_millis()).unwrap_or(u64::MAX);
        self.faults.extra_fsync_ms.store(ms, Ordering::SeqCst);
    }

    /// Makes the next fsync fail (or no longer). A failed fsync loses its group's writes,
    /// reports the failure to everything waiting on it and stops the log: like a real disk
    /// after a failed fsync (the kernel may have dropped the dirty pages), nothing written
    /// afterwards is trusted, so the member must stop and restart from what is durable.
    pub fn set_fail_next_fsync(&self, fail: bool) {
        self.faults.fail_next_fsync.store(fail, Ordering::SeqCst);
    }

    /// How many fsyncs have failed on this disk.
    pub fn failed_fsyncs(&self) -> u64 {
        self.faults.failed_fsyncs.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Durable> {
        self.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Index of the last durable entry (0 if none): for tests and traces.
    pub fn durable_last_index(&self) -> u64 {
        self.lock().last_log_id().map_or(0, |l| l.index())
    }
}

enum Op {
    Append(Vec<Entry>),
    TruncateFrom(u64),
    Purge(LogId),
    Vote(Vote),
    Committed(Option<LogId>),
}

struct Queued {
    op: Op,
    flushed: Option<IOFlushed<TypeConfig>>,
    done: Option<oneshot::Sender<()>>,
}

/// The running member's log: the disk's content plus whatever is waiting for an fsync.
#[derive(Clone)]
pub struct MemLog {
    view: Arc<Mutex<Durable>>,
    writer: mpsc::UnboundedSender<Queued>,
    ack_before_fsync: bool,
}

impl MemLog {
    /// Opens the log on `disk` and starts its writer task on the current tokio runtime
    /// (the simulated member's), so a crash of the member stops it.
    pub fn open(disk: &MemLogDisk) -> Self {
        let view = Arc::new(Mutex::new(disk.lock().clone()));
        let (writer, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_task(disk.clone(), rx));
        Self {
            view,
            writer,
            ack_before_fsync: disk.options.ack_before_fsync,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Durable> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, queued: Queued) -> io::Result<()> {
        self.writer
            .send(queued)
            .map_err(|_| io::Error::other("simulated log writer stopped"))
    }

    fn queue(&self, op: Op) -> io::Result<()> {
        self.send(Queued {
            op,
            flushed: None,
            done: None,
        })
    }
}

/// Takes everything queued, "fsyncs" it (waits `fsync_delay`), writes it to the disk in
/// order and only then reports it flushed.
async fn writer_task(disk: MemLogDisk, mut rx: mpsc::UnboundedReceiver<Queued>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let extra = Duration::from_millis(disk.faults.extra_fsync_ms.load(Ordering::SeqCst));
        let delay = disk.options.fsync_delay + extra;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if disk.faults.fail_next_fsync.swap(false, Ordering::SeqCst) {
            disk.faults.failed_fsyncs.fetch_add(1, Ordering::SeqCst);
            for q in group {
                if let Some(cb) = q.flushed {
                    cb.io_completed(Err(io::Error::other("simulated fsync failure")));
                }
                // A waiting vote save sees its sender dropped: an error too.
            }
            // The log stops: every later write fails ("simulated log writer stopped").
            return;
        }
        {
            let mut durable = disk.lock();
            for q in &group {
                durable.apply(&q.op);
            }
        }
        for q in group {
            if let Some(cb) = q.flushed {
                cb.io_completed(Ok(()));
            }
            if let Some(done) = q.done {
                let _ = done.send(());
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        if start > end {
            return Ok(Vec::new());
        }
        Ok(self
            .lock()
            .entries
            .range(start..=end)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let view = self.lock();
        Ok(LogState {
            last_purged_log_id: view.purged,
            last_log_id: view.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // A vote must be durable before it is acted on: wait for the simulated fsync.
        self.lock().vote = Some(*vote);
        let (done, rx) = oneshot::channel();
        self.send(Queued {
            op: Op::Vote(*vote),
            flushed: None,
            done: Some(done),
        })?;
        rx.await
            .map_err(|_| io::Error::other("simulated log writer stopped"))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.lock().committed = committed;
        self.queue(Op::Committed(committed))
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut view = self.lock();
            for e in &entries {
                view.entries.insert(e.index(), e.clone());
            }
        }
        if self.ack_before_fsync {
            // The planted bug: "flushed" while the entries are only in memory.
            callback.io_completed(Ok(()));
            return self.queue(Op::Append(entries));
        }
        self.send(Queued {
            op: Op::Append(entries),
            flushed: Some(callback),
            done: None,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        self.lock().entries.split_off(&from);
        self.queue(Op::TruncateFrom(from))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut view = self.lock();
            view.entries = view.entries.split_off(&(log_id.index() + 1));
            view.purged = Some(log_id);
        }
        self.queue(Op::Purge(log_id))
    }
}
