//! Leases at run time: the leader's lessor, its expiry and checkpoint loop, and routing of
//! keepalives and TTL queries to the leader.
//!
//! Owns: turning time into Raft commands (expired leases are revoked through Raft; the lease
//! clock and the renewed leases' remaining TTLs are replicated so a new leader continues from
//! them).
//! Must never: change replicated state except by proposing; keepalives are not Raft writes
//! (they only move the leader's in-memory deadline), so write load cannot starve them.
//! Must never forward the lessor's own commands to another member: they are decisions of
//! this leader's clock and deadlines, valid only while it leads in the term it was promoted
//! in (see [`Leases::propose_as_leader`]).

pub mod lessor;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_api::error::{EtcdError, CODE_OK};
use keel_api::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use keel_api::keelpb::internal_request::Request as Command;
use keel_api::keelpb::{InternalRequest, LeaseClock};
use tokio::sync::watch;

use self::lessor::Lessor;
use crate::apply::lease::{all_leases, clock_ms, LeaseRecord};
use crate::apply::range::storage_error;
use crate::apply::{Committed, LeaseChange};
use crate::propose::{status_to_error, GROUP_ID};
use crate::server::Server;

/// How often the leader looks for expired leases and leadership changes.
const TICK: Duration = Duration::from_millis(100);
/// How often the leader moves the lease clock and checkpoints renewed leases; bounds how much
/// longer than its TTL a lease can live across a leader change.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Most revokes proposed per tick (a burst of expiries drains over several ticks).
const REVOKES_PER_TICK_MAX: usize = 256;
/// Most leases per checkpoint command.
const CHECKPOINTS_PER_COMMAND_MAX: usize = 1024;
/// Request ids of the lessor's own proposals: a counter with the top bit set.
static LESSOR_REQUEST_SEQ: AtomicU64 = AtomicU64::new(1);
const LESSOR_REQUEST_BIT: u64 = 1 << 63;

/// The member's lessor, shared by the services, the apply observer and the leader loop.
pub struct Leases {
    lessor: Mutex<Lessor>,
    /// Whether the lessor is primary; lets requests that reach a new leader wait for its
    /// lessor to take over instead of failing.
    primary: watch::Sender<bool>,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            lessor: Mutex::default(),
            primary: watch::channel(false).0,
        }
    }
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lessor> {
        self.lessor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (bounded) until this member's lessor is primary; `false` if it did not become so
    /// (or this member does not lead).
    ///
    /// A grant waits for it too when this member leads: a lease granted before the new
    /// leader's lessor takes over is loaded from the store with the promotion's grace added,
    /// and would show more than its TTL right after the grant.
    pub async fn await_primary(&self, server: &Server) -> bool {
        if !server.raft.leadership().0 {
            return false;
        }
        let mut rx = self.primary.subscribe();
        tokio::time::timeout(server.proposer.leader_wait(), rx.wait_for(|p| *p))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Called from the apply observer after each committed batch.
    pub fn committed(&self, batch: &Committed) {
        if batch.leases.is_empty() {
            return;
        }
        let now = now();
        let mut lessor = self.lock();
        for change in &batch.leases {
            match *change {
                LeaseChange::Granted { id, ttl_s } => lessor.granted(id, ttl_s, now),
                LeaseChange::Revoked { id } => lessor.revoked(id),
            }
        }
    }

    /// Answers a keepalive, on the leader or by asking it.
    pub async fn keep_alive(
        &self,
        server: &Server,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, EtcdError> {
        let ttl = match server.proposer.leader_peer().await? {
            None => return self.keep_alive_local(server, id).await,
            Some(mut leader) => match leader.lease_keep_alive(LeaseKeepAliveRequest { id }).await {
                Ok(resp) => resp.into_inner().ttl,
                Err(s) => return Err(status_to_error(&s)),
            },
        };
        Ok(LeaseKeepAliveResponse {
            header: server.header(server.current_revision()),
            id,
            ttl,
        })
    }

    /// Renews on this member, which must lead (a peer forwarded the keepalive here).
    ///
    /// Leadership is confirmed with a quorum (a ReadIndex round) before the renewal: a
    /// leader cut off from its peers keeps its leader state in openraft and would otherwise
    /// go on renewing a lease that the majority side's new leader lets expire, telling the
    /// client it still holds it (found by `stale_leader_leases.rs`).
    pub async fn keep_alive_local(
        &self,
        server: &Server,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, EtcdError> {
        server.proposer.read_barrier().await?;
        if !self.await_primary(server).await {
            return Err(EtcdError::NotLeader);
        }
        let ttl = self.lock().renew(id, now()).unwrap_or(0);
        Ok(LeaseKeepAliveResponse {
            header: server.header(server.current_revision()),
            id,
            ttl,
        })
    }

    /// `LeaseTimeToLive`, on the leader or by asking it. An unknown lease has TTL -1 (etcd).
    pub async fn time_to_live(
        &self,
        server: &Server,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, EtcdError> {
        match server.proposer.leader_peer().await? {
            None => self.time_to_live_local(server, &req).await,
            Some(mut leader) => {
                let mut resp = leader
                    .lease_time_to_live(req)
                    .await
                    .map_err(|s| status_to_error(&s))?
                    .into_inner();
                resp.header = server.header(resp.header.map_or(0, |h| h.revision));
                Ok(resp)
            }
        }
    }

    /// Answers from this member's lessor and store; this member must lead.
    pub async fn time_to_live_local(
        &self,
        server: &Server,
        req: &LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, EtcdError> {
        server.proposer.read_barrier().await?;
        if !self.await_primary(server).await {
            return Err(EtcdError::NotLeader);
        }
        let remaining = self.lock().remaining_s(req.id, now());
        let view = server.store.read().map_err(storage_error)?;
        let header = server.header(view.current_revision());
        let Some((granted_ttl, ttl)) = remaining else {
            return Ok(LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            });
        };
        let keys = if req.keys {
            view.attached_keys(req.id)
        } else {
            vec![]
        };
        Ok(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl,
            granted_ttl,
            keys,
        })
    }

    /// The leader loop: follows leadership, revokes expired leases, checkpoints TTLs.
    pub async fn run(
        self: Arc<Self>,
        server: Arc<Server>,
        election_timeout: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = now();
        let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
        // The term the lessor was promoted in: its deadlines belong to that term only. A
        // member that lost leadership and won it back between two ticks must load the
        // leases again (another leader may have extended them meanwhile).
        let mut promoted_in: Option<u64> = None;
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            let term = server.raft.leader_term();
            if promoted_in.is_some() && promoted_in != term {
                promoted_in = None;
                self.lock().demote();
                self.primary.send_replace(false);
            }
            let Some(term) = term else {
                continue;
            };
            if promoted_in.is_none() {
                match self.promote(&server, election_timeout).await {
                    Ok(()) => promoted_in = Some(term),
                    Err(e) => tracing::warn!(error = %e, "lessor promotion failed; will retry"),
                }
                continue;
            }
            self.revoke_expired(&server, &in_flight);
            if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                last_checkpoint = now();
                self.checkpoint(&server).await;
            }
        }
    }

    /// Loads every lease from a store that has applied everything committed before this
    /// member's term began, then starts the clocks.
    async fn promote(&self, server: &Server, election_timeout: Duration) -> Result<(), EtcdError> {
        server.proposer.read_barrier().await?;
        // Hold the lessor while reading the store: a grant applied after the read reaches
        // `committed` only after this promotion and is added then.
        let mut lessor = self.lock();
        let view = server.store.read().map_err(storage_error)?;
        let records: Vec<(i64, LeaseRecord)> = all_leases(&view).map_err(storage_error)?;
        // A deadline stored by a grant or checkpoint counts from the clock as applied then,
        // which lags the old leader's own clock by up to one interval: adding the interval
        // means a lease never expires early here, only up to that much late.
        let extend = election_timeout + CHECKPOINT_INTERVAL;
        lessor.promote(now(), clock_ms(&view)?, &records, extend);
        self.primary.send_replace(true);
        tracing::info!(leases = records.len(), "lessor promoted");
        Ok(())
    }

    fn revoke_expired(&self, server: &Arc<Server>, in_flight: &Arc<Mutex<HashSet<i64>>>) {
        let expired = self.lock().expired(now(), REVOKES_PER_TICK_MAX);
        for id in expired {
            if !in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id)
            {
                continue;
            }
            let server = server.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let result = Self::propose_as_leader(
                    &server,
                    Command::LeaseRevoke(LeaseRevokeRequest { id }),
                )
                .await;
                match result {
                    Ok(()) | Err(EtcdError::LeaseNotFound) => {}
                    Err(EtcdError::NotLeader) => {
                        tracing::info!(
                            lease = id,
                            "not revoking an expired lease: no longer the leader"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "revoking an expired lease failed; will retry");
                    }
                }
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            });
        }
    }

    /// Proposes one of the lessor's own commands on this member only, never forwarded. A
    /// revoke or checkpoint is this leader's judgement by its own clock; a leader that was
    /// stopped (SIGSTOP, a frozen VM) wakes up with its clock far ahead and, until it notices
    /// the new term, finds leases expired that clients kept alive through the new leader
    /// meanwhile. Forwarded, such a revoke would be committed by the new leader (found by
    /// `stale_leader_leases.rs`; etcd 15247 is the same failure). Proposed locally, it is appended in
    /// the old term and can never commit, because a quorum has moved on.
    async fn propose_as_leader(server: &Server, cmd: Command) -> Result<(), EtcdError> {
        let req = InternalRequest {
            group_id: GROUP_ID,
            // Informational only (apply does not read it); kept apart from the proposer's ids.
            request_id: LESSOR_REQUEST_SEQ.fetch_add(1, Ordering::Relaxed) | LESSOR_REQUEST_BIT,
            request: Some(cmd),
        };
        let (_, resp) = server.proposer.propose_local(req).await?;
        match resp.error {
            CODE_OK => Ok(()),
            code => Err(EtcdError::from_code(code)
                .unwrap_or_else(|| EtcdError::Unknown(format!("etcdserver: error code {code}")))),
        }
    }

    /// Moves the lease clock, then checkpoints the leases renewed since the last time. A
    /// lost clock move only makes leases live longer after a leader change; lost checkpoints
    /// are sent again.
    async fn checkpoint(&self, server: &Server) {
        let (advance, renewed) = {
            let mut lessor = self.lock();
            let now = now();
            (lessor.clock_advance(now), lessor.checkpoints(now))
        };
        if let Some(advance_ms) = advance {
            let cmd = Command::LeaseClock(LeaseClock { advance_ms });
            if let Err(e) = Self::propose_as_leader(server, cmd).await {
                tracing::debug!(error = %e, "lease clock not replicated");
            }
        }
        tracing::debug!(?renewed, "lease checkpoint");
        for (i, chunk) in renewed.chunks(CHECKPOINTS_PER_COMMAND_MAX).enumerate() {
            let checkpoints = chunk
                .iter()
                .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect();
            let cmd = Command::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints });
            if let Err(e) = Self::propose_as_leader(server, cmd).await {
                tracing::debug!(error = %e, "lease checkpoint not replicated");
                let unsent = renewed[i * CHECKPOINTS_PER_COMMAND_MAX..]
                    .iter()
                    .map(|c| c.0);
                self.lock().unsent(unsent);
                return;
            }
        }
    }
}

/// The lessor's clock: tokio's (which the simulation drives), as the std `Instant` the pure
/// lessor takes.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
