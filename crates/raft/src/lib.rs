//! keel's Raft layer: openraft wired to a segmented write-ahead log, a gRPC peer transport and
//! the server's apply layer.
//!
//! Owns: every use of openraft in the workspace. The rest of keel sees only [`KeelRaft`],
//! [`Applier`], [`Member`], [`RaftStatus`] and [`RaftError`]; no openraft type crosses this
//! crate's boundary, so upgrading the pinned alpha touches only this crate.
//! Must never: interpret application payloads.

pub mod failpoints;
pub mod histogram;
mod log_store;
mod mem_log;
mod network;
mod rt;
mod state_machine;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{ClientWriteError, LinearizableReadError};
use openraft::rt::watch::WatchReceiver;
use openraft::{Config, ReadPolicy, ServerState, SnapshotPolicy};

use crate::histogram::DurationHistogram;
pub use log_store::LogStore;
pub use mem_log::{MemLog, MemLogDisk, MemLogOptions};
pub use network::{
    peer_channel, peer_client, set_peer_dial_map, set_peer_dialer, ForMember, NetworkFactory,
    PeerDialer, PeerRpc, ToMember, PEER_MESSAGE_BYTES_MAX, TO_MEMBER_HEADER,
};
pub use rt::{seed_thread_rng, KeelRuntime};
pub use state_machine::{Applier, StateMachine};
pub use types::{Member, NodeId, Request, Response, TypeConfig};

/// What the server decides about Raft.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub id: NodeId,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// The directory holding the Raft log (segment files of the write-ahead log).
    pub log_path: PathBuf,
    /// Take a snapshot (and purge the log behind it) after this many applied entries.
    pub snapshot_every_entries: u64,
}

/// Why a Raft operation did not complete here.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// This member is not the leader; the leader is known.
    #[error("not leader; leader is {leader:x}")]
    ForwardTo { leader: NodeId, member: Member },
    /// No leader is known right now (election in progress or quorum lost).
    #[error("no leader")]
    NoLeader,
    /// Waited past the deadline.
    #[error("timed out")]
    Timeout,
    /// The entry was appended here, then dropped when this member took another leader's log;
    /// it may still commit through that leader (or not): the outcome is unknown.
    #[error("entry discarded on a leader change")]
    Discarded,
    /// Raft stopped (storage failure or shutdown).
    #[error("raft stopped: {0}")]
    Fatal(String),
}

/// One member's place in the current membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub member: Member,
    pub is_learner: bool,
}

/// A point-in-time view of this member's Raft state.
#[derive(Clone, Debug, Default)]
pub struct RaftStatus {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
}

/// openraft's configuration for a keel member.
fn openraft_config(cfg: &RaftConfig) -> Config {
    Config {
        cluster_name: "keel".into(),
        heartbeat_interval: cfg.heartbeat_interval_ms,
        election_timeout_min: cfg.election_timeout_ms,
        election_timeout_max: cfg.election_timeout_ms * 2,
        enable_pre_vote: Some(true),
        // A restarted leader must win a new election (a new term) before it leads again.
        // openraft's default lets it resume leading its old term at once. Its ReadIndex then
        // rests on the committed index it last persisted, which keel saves without waiting
        // (and apply commits without fsync): a stale linearizable read. Worse, entries are
        // broadcast before the leader's own fsync, so a SIGKILL can cost it a log tail a
        // follower already holds; resumed in the same term it writes different entries under
        // the same (term, index), the follower keeps and applies its own, and the stores
        // diverge. Found independently by the simulation (crates/sim/tests/sim, `mixed` seed 1,
        // the `leader-restart` scenario) and the process nemesis (seed 1795445541639073596).
        enable_leader_restore: Some(false),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_entries),
        // Keep some log behind a snapshot so a briefly lagging follower catches up from
        // the log instead of a whole snapshot.
        max_in_snapshot_log_to_keep: cfg.snapshot_every_entries.min(1000),
        install_snapshot_timeout: 10_000,
        // Replicate entries as soon as they are handed to the log store, so followers
        // persist in parallel with the leader instead of after its fsync.
        broadcast_submitted_on_append: Some(true),
        // Retry delays to an unreachable peer: 10, 20, 40, 80, then every 100 ms (etcd's peer
        // streams redial every 100 ms). openraft's default grows to 1 s, so a member that
        // restarted after a few seconds down waited up to a second for the leader's next
        // attempt before it could catch up and serve (restart-to-first-read).
        backoff: "10ms 20ms ...100ms".to_string(),
        ..Default::default()
    }
}

/// keel's handle to one Raft group member; cheap to clone.
#[derive(Clone)]
pub struct KeelRaft {
    raft: openraft::Raft<TypeConfig, StateMachine>,
    id: NodeId,
    /// The log's fsync durations (none for a log without a disk).
    fsyncs: Option<Arc<DurationHistogram>>,
}

impl KeelRaft {
    /// Opens the log, builds the state machine adapter and starts Raft.
    pub async fn start(cfg: &RaftConfig, applier: Arc<dyn Applier>) -> Result<Self, RaftError> {
        let log = LogStore::open(&cfg.log_path).map_err(fatal)?;
        let fsyncs = log.fsync_durations();
        let raft = Self::start_with_log(cfg, applier, log).await?;
        Ok(Self {
            fsyncs: Some(fsyncs),
            ..raft
        })
    }

    /// Starts Raft on a given log store (`cfg.log_path` is not used): the simulation's
    /// [`MemLog`], or a test's.
    pub async fn start_with_log<LS>(
        cfg: &RaftConfig,
        applier: Arc<dyn Applier>,
        log: LS,
    ) -> Result<Self, RaftError>
    where
        LS: openraft::storage::RaftLogStorage<TypeConfig>,
    {
        let config = openraft_config(cfg);
        let config = Arc::new(config.validate().map_err(fatal)?);
        let sm = StateMachine::new(applier);
        let network = NetworkFactory {
            append_timeout: Duration::from_millis(cfg.election_timeout_ms),
        };
        let raft = openraft::Raft::new(cfg.id, config, network, log, sm)
            .await
            .map_err(fatal)?;
        Ok(Self {
            raft,
            id: cfg.id,
            fsyncs: None,
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// How long the log's fdatasyncs took, when the log is on disk.
    pub fn fsync_durations(&self) -> Option<Arc<DurationHistogram>> {
        self.fsyncs.clone()
    }

    /// Calls `seen` once for each leader this member comes to know of (a new term's leader,
    /// even the same member elected again), until Raft stops. Wakes only when the member's
    /// state, leader or membership change, never per write.
    pub async fn each_new_leader(&self, mut seen: impl FnMut()) {
        let mut server = self.raft.server_metrics();
        let mut last_term = None;
        loop {
            let led_term = {
                let m = server.borrow_watched();
                m.current_leader.map(|_| m.vote.leader_id().term)
            };
            if led_term.is_some() && led_term != last_term {
                last_term = led_term;
                seen();
            }
            if server.changed().await.is_err() {
                return;
            }
        }
    }

    /// Bootstraps a new cluster with these voters. Every founding member may call it with the
    /// same set (they all write the same first log entry); a member that already has state
    /// ignores it.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> Result<(), RaftError> {
        if self.raft.is_initialized().await.map_err(fatal)? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::errors::RaftError::APIError(e)) => {
                tracing::info!(error = %e, "raft already initialized");
                Ok(())
            }
            Err(e) => Err(fatal(e)),
        }
    }

    /// Replicates one payload and returns its log index and what applying it produced.
    pub async fn write(&self, payload: Vec<u8>) -> Result<(u64, Vec<u8>), RaftError> {
        match self.raft.client_write(Request { payload }).await {
            Ok(resp) => Ok((resp.log_id.index, resp.data.payload)),
            Err(openraft::errors::RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(forward(f.leader_id, f.leader_node))
            }
            Err(openraft::errors::RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(RaftError::Discarded)
            }
            Err(e) => Err(fatal(e)),
        }
    }

    /// ReadIndex: confirms leadership with a quorum and returns the log index a linearizable
    /// read must wait for. Only the leader answers; others get `ForwardTo` or `NoLeader`.
    pub async fn read_index(&self) -> Result<u64, RaftError> {
        match self.raft.get_read_log_id(ReadPolicy::ReadIndex).await {
            Ok((read, _applied)) => Ok(read.index()),
            Err(openraft::errors::RaftError::APIError(LinearizableReadError::ForwardToLeader(
                f,
            ))) => Err(forward(f.leader_id, f.leader_node)),
            Err(openraft::errors::RaftError::APIError(e)) => {
                tracing::debug!(error = %e, "read index failed");
                Err(RaftError::NoLeader)
            }
            Err(e) => Err(fatal(e)),
        }
    }

    /// Waits until this member has applied `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), RaftError> {
        if self.applied_index() >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|_| RaftError::Timeout)
    }

    /// Waits until some leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "leader")
            .await;
        m.ok().and_then(|m| m.current_leader)
    }

    /// If this member leads, hands leadership to another voter and waits (up to `timeout`)
    /// until someone else leads, so a graceful stop costs clients no election timeout.
    pub async fn step_down(&self, timeout: Duration) {
        let status = self.status();
        if !status.is_leader {
            return;
        }
        let Some(to) = status
            .members
            .iter()
            .find(|m| m.id != self.id && !m.is_learner)
            .map(|m| m.id)
        else {
            return;
        };
        if let Err(e) = self.raft.trigger().transfer_leader(to).await {
            tracing::warn!(error = %e, "leader transfer failed");
            return;
        }
        let me = Some(self.id);
        let moved = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader != me, "leader moved")
            .await;
        if moved.is_err() {
            tracing::warn!("leadership did not move within {timeout:?}; stopping anyway");
        }
    }

    /// The current term (cheap: no membership copy; it is in every response header).
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// The term this member leads in, if it believes it is the leader.
    pub fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    /// Whether this member leads, and the leader it knows of (cheap).
    pub fn leadership(&self) -> (bool, Option<NodeId>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        (m.state == ServerState::Leader, m.current_leader)
    }

    fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |l| l.index())
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, member)| MemberStatus {
                id: *id,
                member: member.clone(),
                is_learner: !voters.contains(id),
            })
            .collect();
        RaftStatus {
            id: self.id,
            leader: m.current_leader,
            is_leader: m.state == ServerState::Leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.cluster_committed.map_or(0, |l| l.index()),
            applied_index: m.last_applied.map_or(0, |l| l.index()),
            members,
        }
    }

    /// Waits until Raft stops. `Some(reason)` when it stopped on its own because of a fatal
    /// error (a storage failure in the log or the state machine, a panic): the member must
    /// then stop too, never carry on. `None` after an orderly [`KeelRaft::shutdown`].
    ///
    /// Waits on the server metrics (state, leader, membership), which change only with those,
    /// and whose sender goes away with the core task; the full metrics change with every
    /// append and apply, and a waiter on them would be woken for every write.
    pub async fn stopped(&self) -> Option<String> {
        let mut server = self.raft.server_metrics();
        while server.changed().await.is_ok() {}
        match &self.raft.metrics().borrow_watched().running_state {
            Err(openraft::errors::Fatal::Stopped) => None,
            Err(e) => Some(e.to_string()),
            // The core task is gone without saying why (it panicked).
            Ok(()) => Some("raft core ended".to_string()),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

fn forward(leader: Option<NodeId>, member: Option<Member>) -> RaftError {
    match (leader, member) {
        (Some(leader), Some(member)) => RaftError::ForwardTo { leader, member },
        _ => RaftError::NoLeader,
    }
}

fn fatal(e: impl std::fmt::Display) -> RaftError {
    RaftError::Fatal(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a restarted leader resumed its old term and reused (term, index) pairs
    /// for new entries after losing an unflushed log tail, so stores diverged.
    #[test]
    fn restarted_leader_must_be_elected_again() {
        let cfg = RaftConfig {
            id: 1,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            log_path: PathBuf::from("unused"),
            snapshot_every_entries: 100,
        };
        let config = openraft_config(&cfg);
        assert_eq!(config.enable_leader_restore, Some(false));
        config.validate().expect("a valid openraft config");
    }
}
