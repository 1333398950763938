//! Proposing writes and fencing linearizable reads.
//!
//! Owns: turning a write into one Raft entry (on the leader, or forwarded to it over the peer
//! channel) and waiting for its applied response; the ReadIndex barrier, batched so that all
//! reads that arrive while one quorum round is in flight share the next round.
//! Must never: retry a write that may already have been proposed (only "not proposed here,
//! the leader is elsewhere / unknown" is retried), or wait without a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::error::{EtcdError, CODE_OK};
use keel_api::keelpb::internal_response::Response as Applied;
use keel_api::keelpb::{
    internal_request, ForwardRequest, InternalRequest, InternalResponse, ReadIndexRequest,
};
use keel_raft::{peer_channel, peer_client, KeelRaft, Member, NodeId, PeerRpc, RaftError};
use prost::Message;
use tokio::sync::oneshot;
// tokio's clock, not the wall clock: the simulation drives it.
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::forward::Forwarder;

/// The Raft group every command belongs to (one group until scale-out).
pub const GROUP_ID: u64 = 0;
/// Pauses between attempts to reach a leader that has just changed.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(5);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Where a routed call was answered.
enum Routed<T, U> {
    Local(T),
    Remote(U),
}

/// Whether a failed peer call certainly did not reach the leader's Raft: it said it does not
/// lead or knows no leader (both answered before proposing), or the connection was never made.
fn not_delivered(s: &tonic::Status) -> bool {
    s.message() == EtcdError::NotLeader.to_string()
        || s.message() == EtcdError::NoLeader.to_string()
        || (s.code() == tonic::Code::Unavailable && s.message().contains("tcp connect error"))
}

fn decode_response(bytes: &[u8]) -> Result<InternalResponse, EtcdError> {
    InternalResponse::decode(bytes).map_err(|e| EtcdError::Unknown(e.to_string()))
}

/// Sends writes and read barriers to wherever the leader is.
pub struct Proposer {
    raft: KeelRaft,
    /// Longest wait for an election before answering "no leader".
    leader_wait: Duration,
    request_seq: AtomicU64,
    peers: Mutex<HashMap<NodeId, Channel>>,
    forwarder: Forwarder,
    reads: ReadBatcher,
    /// Writes proposed through this member and not yet answered (etcd's
    /// `etcd_server_proposals_pending`).
    pending: AtomicI64,
    /// Writes that ended without an applied answer: no leader, a timeout, a broken forward,
    /// a client that gave up (etcd's `etcd_server_proposals_failed_total`); request errors
    /// apply chose do not count.
    failed: AtomicU64,
}

/// One write while it is pending; if it ends (or its caller drops it half-way) before
/// [`PendingWrite::answered`], it counts as failed.
struct PendingWrite<'a> {
    proposer: &'a Proposer,
    answered: bool,
}

impl<'a> PendingWrite<'a> {
    fn start(proposer: &'a Proposer) -> Self {
        proposer.pending.fetch_add(1, Ordering::Relaxed);
        Self {
            proposer,
            answered: false,
        }
    }

    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for PendingWrite<'_> {
    fn drop(&mut self) {
        self.proposer.pending.fetch_sub(1, Ordering::Relaxed);
        if !self.answered {
            self.proposer.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Proposer {
    pub fn new(raft: KeelRaft, election_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            raft,
            leader_wait: election_timeout * 3,
            request_seq: AtomicU64::new(1),
            peers: Mutex::new(HashMap::new()),
            forwarder: Forwarder::default(),
            reads: ReadBatcher::default(),
            pending: AtomicI64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// `(pending, failed)` writes, for the metrics endpoint.
    pub fn proposal_counts(&self) -> (i64, u64) {
        (
            self.pending.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn peer(&self, id: NodeId, member: &Member) -> Result<Channel, EtcdError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = peers.get(&id) {
            return Ok(ch.clone());
        }
        let url = member.peer_urls.first().ok_or(EtcdError::NoLeader)?;
        let ch = peer_channel(url).map_err(|_| EtcdError::NoLeader)?;
        peers.insert(id, ch.clone());
        Ok(ch)
    }

    /// Replicates one write and returns its applied response (or the etcd error apply chose).
    pub async fn propose(&self, request: internal_request::Request) -> Result<Applied, EtcdError> {
        let req = InternalRequest {
            group_id: GROUP_ID,
            request_id: (self.raft.id() << 16) ^ self.request_seq.fetch_add(1, Ordering::Relaxed),
            request: Some(request),
        };
        let write = PendingWrite::start(self);
        let resp = self.replicate(req).await?;
        write.answered();
        if resp.error != CODE_OK {
            return Err(EtcdError::from_code(resp.error).unwrap_or_else(|| {
                EtcdError::Unknown(format!("etcdserver: error code {}", resp.error))
            }));
        }
        resp.response
            .ok_or_else(|| EtcdError::Unknown("etcdserver: empty response".into()))
    }

    /// Proposes locally; never forwards (the forwarding member already did). Returns the
    /// entry's log index with its applied response.
    pub async fn propose_local(
        &self,
        req: InternalRequest,
    ) -> Result<(u64, InternalResponse), EtcdError> {
        match self.raft.write(req.encode_to_vec()).await {
            Ok((index, bytes)) => Ok((index, decode_response(&bytes)?)),
            Err(RaftError::ForwardTo { .. }) => Err(EtcdError::NotLeader),
            Err(e) => Err(raft_error(e)),
        }
    }

    async fn replicate(&self, req: InternalRequest) -> Result<InternalResponse, EtcdError> {
        let payload = req.encode_to_vec();
        let forward = ForwardRequest { request: Some(req) };
        let bytes = self
            .on_leader(
                || self.raft.write(payload.clone()),
                |id, leader| self.forwarder.forward(id, leader, forward.clone()),
            )
            .await?;
        match bytes {
            Routed::Local((_, bytes)) => decode_response(&bytes),
            Routed::Remote(answer) => {
                let (index, response) = answer.ok_or(EtcdError::LeaderChanged)?;
                // etcd answers a write only after the member the client asked applied it, so
                // the client's next serializable read there sees the write.
                self.raft
                    .wait_applied(index, self.leader_wait)
                    .await
                    .map_err(raft_error)?;
                Ok(response)
            }
        }
    }

    /// Runs `local` on this member; when Raft says another member leads, runs `remote`
    /// against that member's peer service instead. Retries until the leader wait runs out,
    /// but only when the request certainly did not take effect: no leader yet, the asked
    /// member no longer leads, or it could not be reached at all.
    async fn on_leader<T, U, LF, RF>(
        &self,
        local: impl Fn() -> LF,
        remote: impl Fn(NodeId, PeerRpc) -> RF,
    ) -> Result<Routed<T, U>, EtcdError>
    where
        LF: Future<Output = Result<T, RaftError>>,
        RF: Future<Output = Result<U, tonic::Status>>,
    {
        let deadline = Instant::now() + self.leader_wait;
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            // A follower that knows its leader sends straight there: asking the local Raft
            // first only costs a round trip through its core task to hear "forward".
            let target = match self.known_leader() {
                Some(known) => Ok(known),
                None => match local().await {
                    Ok(value) => return Ok(Routed::Local(value)),
                    Err(RaftError::ForwardTo { leader, member }) => {
                        Ok((leader, self.peer(leader, &member)?))
                    }
                    Err(e) => Err(e),
                },
            };
            // What to answer if the deadline passes now.
            let gave_up = match target {
                Ok((leader, channel)) => match remote(leader, peer_client(channel, leader)).await {
                    Ok(value) => return Ok(Routed::Remote(value)),
                    Err(s) if not_delivered(&s) => status_to_error(&s),
                    Err(s) => return Err(status_to_error(&s)),
                },
                Err(RaftError::NoLeader) => {
                    self.await_leader().await?;
                    EtcdError::NoLeader
                }
                Err(e) => return Err(raft_error(e)),
            };
            if Instant::now() >= deadline {
                return Err(match gave_up {
                    EtcdError::NoLeader => EtcdError::NoLeader,
                    _ => EtcdError::LeaderChanged,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
    }

    /// Another member this one follows, with its peer channel, when Raft's metrics name it
    /// and a channel to it is open. A stale answer costs one refused forward and a retry, as
    /// a stale "forward" from the core would.
    fn known_leader(&self) -> Option<(NodeId, Channel)> {
        let (leads, leader) = self.raft.leadership();
        let leader = leader.filter(|l| !leads && *l != self.raft.id())?;
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        Some((leader, peers.get(&leader)?.clone()))
    }

    /// The longest a request waits for an election (or for a new leader to take over).
    pub fn leader_wait(&self) -> Duration {
        self.leader_wait
    }

    async fn await_leader(&self) -> Result<NodeId, EtcdError> {
        self.raft
            .wait_for_leader(self.leader_wait)
            .await
            .ok_or(EtcdError::NoLeader)
    }

    /// The linearizable-read barrier: returns once this member has applied everything that was
    /// committed when the read arrived.
    pub async fn read_barrier(self: &Arc<Self>) -> Result<(), EtcdError> {
        let index = self.reads.read_index(self.clone()).await?;
        self.raft
            .wait_applied(index, self.leader_wait)
            .await
            .map_err(raft_error)
    }

    /// One ReadIndex round: ask the leader (which may be this member).
    async fn read_index_round(&self) -> Result<u64, EtcdError> {
        let routed = self
            .on_leader(
                || self.raft.read_index(),
                |_, mut leader| async move {
                    Ok(leader
                        .read_index(ReadIndexRequest { group_id: GROUP_ID })
                        .await?
                        .into_inner()
                        .read_index)
                },
            )
            .await?;
        Ok(match routed {
            Routed::Local(index) | Routed::Remote(index) => index,
        })
    }

    /// `None` when this member leads; otherwise a client for the leader's peer service.
    /// Waits (bounded) for an election when no leader is known.
    pub async fn leader_peer(&self) -> Result<Option<PeerRpc>, EtcdError> {
        let (leads, mut leader) = self.raft.leadership();
        if leads {
            return Ok(None);
        }
        if leader.is_none() {
            leader = Some(self.await_leader().await?);
        }
        let leader = leader.ok_or(EtcdError::NoLeader)?;
        if leader == self.raft.id() {
            return Ok(None);
        }
        let cached = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&leader)
            .cloned();
        let channel = match cached {
            Some(channel) => channel,
            None => {
                let status = self.raft.status();
                let member = status
                    .members
                    .iter()
                    .find(|m| m.id == leader)
                    .ok_or(EtcdError::NoLeader)?;
                self.peer(leader, &member.member)?
            }
        };
        Ok(Some(peer_client(channel, leader)))
    }

    /// Serves a peer's ReadIndex request: only the leader answers.
    pub async fn read_index_local(&self) -> Result<u64, EtcdError> {
        match self.raft.read_index().await {
            Ok(index) => Ok(index),
            Err(RaftError::ForwardTo { .. }) => Err(EtcdError::NotLeader),
            Err(e) => Err(raft_error(e)),
        }
    }
}

pub fn raft_error(e: RaftError) -> EtcdError {
    match e {
        RaftError::ForwardTo { .. } => EtcdError::NotLeader,
        RaftError::NoLeader => EtcdError::NoLeader,
        RaftError::Timeout => EtcdError::Timeout,
        RaftError::Discarded => EtcdError::LeaderChanged,
        RaftError::Fatal(msg) => {
            tracing::error!(error = %msg, "raft stopped");
            EtcdError::Stopped
        }
    }
}

/// Maps a status a peer returned back to the error table (peers send etcd's own messages).
pub fn status_to_error(s: &tonic::Status) -> EtcdError {
    EtcdError::CODED
        .iter()
        .find(|e| e.to_string() == s.message())
        .cloned()
        .unwrap_or_else(|| {
            tracing::warn!(code = ?s.code(), message = s.message(), "peer call failed");
            EtcdError::NoLeader
        })
}

/// Batches ReadIndex rounds: a read joins the round that starts after it arrives, so one
/// quorum round serves every read that queued while the previous round was in flight.
#[derive(Default)]
struct ReadBatcher {
    state: Mutex<BatchState>,
}

#[derive(Default)]
struct BatchState {
    waiting: Vec<oneshot::Sender<Result<u64, EtcdError>>>,
    running: bool,
}

impl ReadBatcher {
    async fn read_index(&self, proposer: Arc<Proposer>) -> Result<u64, EtcdError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            tokio::spawn(run_rounds(proposer));
        }
        rx.await.unwrap_or(Err(EtcdError::Stopped))
    }
}

async fn run_rounds(proposer: Arc<Proposer>) {
    loop {
        let batch = {
            let mut state = proposer
                .reads
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if state.waiting.is_empty() {
                state.running = false;
                return;
            }
            std::mem::take(&mut state.waiting)
        };
        let result = proposer.read_index_round().await;
        for tx in batch {
            let _ = tx.send(result.clone());
        }
    }
}
