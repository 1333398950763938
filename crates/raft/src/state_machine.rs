//! Adapter between openraft's state-machine interface and keel's apply layer.
//!
//! Owns: batching committed entries into one `Applier::apply` call (one storage transaction per
//! batch), the Raft bookkeeping stored with the data (last applied log id and membership, in the
//! same transaction), and snapshots built from / installed into the applier.
//! Must never: interpret entry payloads (the server's apply layer does), or let Raft purge log
//! entries the state machine has not made durable (a snapshot first calls `Applier::sync`).
//!
//! The store is itself durable, so a "built" snapshot is only a point the store has made
//! durable: building records its metadata and keeps no copy of the data. The data is dumped
//! when a follower needs it, from one consistent read, together with the metadata of that read
//! (which may be newer than the last build: every applied entry is committed). This keeps a
//! member's memory independent of its data size and its restart free of a full dump.

use std::io::{self, Cursor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// openraft's view of the state machine.
#[derive(Clone)]
pub struct StateMachine {
    applier: Arc<dyn Applier>,
    /// Whether a snapshot was built or installed since this process started.
    built: Arc<AtomicBool>,
    /// The Raft state the last `apply` stored, so the next one need not read it back from the
    /// store. Only `apply` uses it; an install drops it.
    applied: Option<RaftState>,
}

impl StateMachine {
    pub fn new(applier: Arc<dyn Applier>) -> Self {
        Self {
            applier,
            built: Arc::new(AtomicBool::new(false)),
            applied: None,
        }
    }

    fn raft_state(&self) -> io::Result<RaftState> {
        match self.applier.load_raft_state()? {
            Some(bytes) => decode_record(&bytes),
            None => Ok((None, StoredMembership::default())),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        crate::crash_point!("snapshot::before_build");
        // Raft purges its log up to the snapshot once this returns, so what the snapshot covers
        // must survive a crash of the state machine's non-durable commits: read the applied
        // state first, then make at least that much durable.
        let (last_log_id, last_membership) = self.raft_state()?;
        self.applier.sync()?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        self.built.store(true, Ordering::Release);
        crate::crash_point!("snapshot::after_build");
        // openraft keeps only the metadata of a built snapshot; the data is dumped on demand.
        Ok(openraft::storage::Snapshot {
            meta,
            snapshot: Cursor::new(Vec::new()),
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
        let (mut last_applied, mut membership) = match self.applied.take() {
            Some(state) => state,
            None => self.raft_state()?,
        };
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
        let applied = (last_applied, membership);
        if batch.is_empty() {
            self.applied = Some(applied);
            return Ok(());
        }
        let state = encode_record(&applied)?;
        let payloads: Vec<Option<&[u8]>> = batch.iter().map(|(p, _)| p.as_deref()).collect();
        let responses = self.applier.apply(&payloads, &state)?;
        if responses.len() != batch.len() {
            return Err(io::Error::other(
                "applier returned a wrong number of responses",
            ));
        }
        self.applied = Some(applied);
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
        self.applied = None;
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
        self.built.store(true, Ordering::Release);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>>, io::Error> {
        // Before the first build since start there is no snapshot: at startup openraft then
        // builds one (cheaply) if its log was purged, instead of reading a dump here.
        if !self.built.load(Ordering::Acquire) {
            return Ok(None);
        }
        let (state, dump) = self.applier.snapshot()?;
        let (last_log_id, last_membership): RaftState = decode_record(&state)?;
        Ok(Some(openraft::storage::Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: Cursor::new(dump),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use openraft::vote::RaftLeaderIdExt;

    use super::*;

    type LeaderId = openraft::alias::LeaderIdOf<TypeConfig>;

    /// An applier that records which of its methods were called, in order.
    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<&'static str>>,
        /// (raft_state, data)
        state: Mutex<(Option<Vec<u8>>, Vec<u8>)>,
    }

    impl Recording {
        fn set(&self, applied: u64, data: &[u8]) {
            let state = encode_record(&(
                Some(LogId::new(LeaderId::new_committed(1, 7), applied)),
                StoredMembership::default(),
            ))
            .expect("encode");
            *self.state.lock().unwrap() = (Some(state), data.to_vec());
        }

        fn calls(&self) -> Vec<&'static str> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }

        fn record(&self, call: &'static str) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Applier for Recording {
        fn load_raft_state(&self) -> io::Result<Option<Vec<u8>>> {
            self.record("load");
            Ok(self.state.lock().unwrap().0.clone())
        }
        fn apply(&self, payloads: &[Option<&[u8]>], state: &[u8]) -> io::Result<Vec<Vec<u8>>> {
            self.record("apply");
            self.state.lock().unwrap().0 = Some(state.to_vec());
            Ok(vec![Vec::new(); payloads.len()])
        }
        fn sync(&self) -> io::Result<()> {
            self.record("sync");
            Ok(())
        }
        fn snapshot(&self) -> io::Result<(Vec<u8>, Vec<u8>)> {
            self.record("snapshot");
            let (state, data) = self.state.lock().unwrap().clone();
            Ok((state.expect("state"), data))
        }
        fn restore(&self, dump: &[u8]) -> io::Result<()> {
            self.record("restore");
            let state: RaftState = decode_record(dump)?;
            self.state.lock().unwrap().0 = Some(encode_record(&state)?);
            Ok(())
        }
    }

    /// Applies blank entries at these log indexes, as one batch.
    async fn apply_blanks(sm: &mut StateMachine, indexes: &[u64]) {
        let entries = indexes.iter().map(|&index| {
            let id = LogId::new(LeaderId::new_committed(1, 7), index);
            Ok((crate::types::Entry::new_blank(id), None))
        });
        sm.apply(futures::stream::iter(entries))
            .await
            .expect("apply");
    }

    fn stored_index(applier: &Recording) -> Option<u64> {
        let state = applier.state.lock().unwrap().0.clone()?;
        let (applied, _): RaftState = decode_record(&state).expect("state");
        applied.map(|id| id.index)
    }

    #[tokio::test]
    async fn apply_reads_the_raft_state_once_and_again_after_an_install() {
        let applier = Arc::new(Recording::default());
        applier.set(5, b"");
        let mut sm = StateMachine::new(applier.clone());
        apply_blanks(&mut sm, &[6, 7]).await;
        apply_blanks(&mut sm, &[8]).await;
        assert_eq!(applier.calls(), vec!["load", "apply", "apply"]);
        assert_eq!(stored_index(&applier), Some(8));

        // An install replaces the state behind the state machine's back: read it again.
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(LeaderId::new_committed(2, 7), 20)),
            last_membership: StoredMembership::default(),
        };
        let installed =
            encode_record(&(meta.last_log_id, meta.last_membership.clone())).expect("encode");
        sm.install_snapshot(&meta, Cursor::new(installed))
            .await
            .expect("install");
        apply_blanks(&mut sm, &[21]).await;
        assert_eq!(applier.calls(), vec!["restore", "load", "apply"]);
        assert_eq!(stored_index(&applier), Some(21));
    }

    fn index(meta: &SnapshotMeta) -> u64 {
        meta.last_log_id.as_ref().map_or(0, |id| id.index)
    }

    #[tokio::test]
    async fn a_build_syncs_what_it_read_and_keeps_no_data() {
        let applier = Arc::new(Recording::default());
        applier.set(5, b"at five");
        let mut sm = StateMachine::new(applier.clone());

        // Nothing built since start: no snapshot, and no dump was made to say so.
        assert!(sm.get_current_snapshot().await.expect("get").is_none());
        assert_eq!(applier.calls(), Vec::<&str>::new());

        let built = sm.build_snapshot().await.expect("build");
        assert_eq!(index(&built.meta), 5);
        assert!(built.snapshot.get_ref().is_empty());
        // The applied state is read before the sync, so the sync covers all it claims.
        assert_eq!(applier.calls(), ["load", "sync"]);
    }

    #[tokio::test]
    async fn a_snapshot_is_dumped_on_demand_with_the_metadata_of_its_own_read() {
        let applier = Arc::new(Recording::default());
        applier.set(5, b"at five");
        let mut sm = StateMachine::new(applier.clone());
        sm.build_snapshot().await.expect("build");
        applier.calls();

        applier.set(9, b"at nine");
        let snapshot = sm
            .get_current_snapshot()
            .await
            .expect("get")
            .expect("built");
        assert_eq!(index(&snapshot.meta), 9);
        assert_eq!(snapshot.snapshot.into_inner(), b"at nine");
        assert_eq!(applier.calls(), ["snapshot"]);
    }
}
