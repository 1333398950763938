//! Adapter between openraft's state-machine interface and keel's apply layer.
//!
//! Owns: batching committed entries into one `Applier::apply` call (one storage transaction per
//! batch), the Raft bookkeeping stored with the data (last applied log id and membership, in the
//! same transaction), and snapshots built from / installed into the applier.
//! Must never: interpret entry payloads (the server's apply layer does), or let Raft purge log
//! entries the state machine has not made durable (a snapshot first calls `Applier::sync`).

use std::io::{self, Cursor};
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};

use crate::log_store::{decode_record, encode_record};
use crate::types::{LogId, Response, SnapshotMeta, StoredMembership, TypeConfig};

/// The deterministic apply layer the server provides.
///
/// Implementations write `raft_state` in the same storage transaction as the entries' effects,
/// so after a crash the stored data and the stored applied index always agree.
pub trait Applier: Send + Sync + 'static {
    /// The `raft_state` stored by the last `apply` or `restore`, if any.
    fn load_raft_state(&self) -> io::Result<Option<Vec<u8>>>;
    /// Applies a batch of committed entries in order, atomically with `raft_state`.
    /// `None` marks an entry without application payload (blank or membership); its response is
    /// ignored. Returns exactly one response per entry.
    fn apply(&self, payloads: &[Option<&[u8]>], raft_state: &[u8]) -> io::Result<Vec<Vec<u8>>>;
    /// Makes everything applied so far durable.
    fn sync(&self) -> io::Result<()>;
    /// A consistent copy of all state: the stored `raft_state` and an opaque dump.
    fn snapshot(&self) -> io::Result<(Vec<u8>, Vec<u8>)>;
    /// Replaces all state with a dump made by `snapshot` (durably, before returning).
    fn restore(&self, dump: &[u8]) -> io::Result<()>;
}

type RaftState = (Option<LogId>, StoredMembership);
/// The last snapshot built or installed: its metadata and the dump.
type CurrentSnapshot = Option<(SnapshotMeta, Vec<u8>)>;

/// openraft's view of the state machine.
#[derive(Clone)]
pub struct StateMachine {
    applier: Arc<dyn Applier>,
    current: Arc<Mutex<CurrentSnapshot>>,
}

impl StateMachine {
    pub fn new(applier: Arc<dyn Applier>) -> Self {
        Self {
            applier,
            current: Arc::new(Mutex::new(None)),
        }
    }

    fn raft_state(&self) -> io::Result<RaftState> {
        match self.applier.load_raft_state()? {
            Some(bytes) => decode_record(&bytes),
            None => Ok((None, StoredMembership::default())),
        }
    }

    fn set_current(&self, meta: SnapshotMeta, dump: Vec<u8>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta, dump));
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        crate::crash_point!("snapshot::before_build");
        // Raft purges its log up to the snapshot once this returns, so what the snapshot covers
        // must survive a crash of the state machine's non-durable commits.
        self.applier.sync()?;
        let (state, dump) = self.applier.snapshot()?;
        let (last_log_id, last_membership): RaftState = decode_record(&state)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        self.set_current(meta.clone(), dump.clone());
        crate::crash_point!("snapshot::after_build");
        Ok(openraft::storage::Snapshot {
            meta,
            snapshot: Cursor::new(dump),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<RaftState, io::Error> {
        self.raft_state()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let (mut last_applied, mut membership) = self.raft_state()?;
        let mut batch = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            last_applied = Some(log_id);
            let payload = match entry.payload {
                EntryPayload::Normal(req) => Some(req.payload),
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(log_id), m);
                    None
                }
                EntryPayload::Blank => None,
            };
            batch.push((payload, responder));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let state = encode_record(&(last_applied, membership))?;
        let payloads: Vec<Option<&[u8]>> = batch.iter().map(|(p, _)| p.as_deref()).collect();
        let responses = self.applier.apply(&payloads, &state)?;
        if responses.len() != batch.len() {
            return Err(io::Error::other(
                "applier returned a wrong number of responses",
            ));
        }
        for ((_, responder), payload) in batch.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(Response { payload });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), io::Error> {
        let dump = snapshot.into_inner();
        crate::crash_point!("snapshot::before_install");
        self.applier.restore(&dump)?;
        crate::crash_point!("snapshot::after_install");
        // Operators (and the tests of etcd 15271) need to see that a member was caught up
        // by a snapshot rather than by log replication.
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            bytes = dump.len(),
            "installed a snapshot from the leader"
        );
        self.set_current(meta.clone(), dump);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>>, io::Error> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(current.map(|(meta, dump)| openraft::storage::Snapshot {
            meta,
            snapshot: Cursor::new(dump),
        }))
    }
}
