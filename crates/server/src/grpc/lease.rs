//! The etcd `Lease` service: grant, revoke, keepalive stream, time-to-live, list.
//!
//! Owns: request validation (TTL bounds, etcd's minimum TTL), choosing lease ids, and the
//! keepalive stream's lifecycle (it ends cleanly when the client half-closes).
//! Must never: keep lease state itself (`crate::lease` does).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

use keel_api::error::EtcdError;
use keel_api::etcdserverpb::lease_server::Lease;
use keel_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use keel_api::keelpb::internal_request::Request as Command;
use keel_api::keelpb::internal_response::Response as Applied;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::BoxStream;
use crate::apply::lease::MAX_LEASE_TTL_S;
use crate::apply::range::storage_error;
use crate::server::Server;

type Reply<T> = Result<Response<T>, Status>;

/// Server-chosen ids that collide with an existing lease are retried this many times.
const GRANT_ATTEMPTS_MAX: usize = 3;
/// Keepalive responses buffered per stream before the stream applies backpressure.
const KEEPALIVE_BUFFER: usize = 16;

pub struct LeaseService {
    pub server: Arc<Server>,
}

/// A fresh positive lease id: random, so members never hand out the same one.
fn random_lease_id() -> i64 {
    let hash = RandomState::new().hash_one(std::time::SystemTime::now());
    (hash >> 1).max(1) as i64
}

fn unexpected() -> Status {
    EtcdError::Unknown("etcdserver: unexpected apply response".into()).to_status()
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Reply<LeaseGrantResponse> {
        let mut req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL_S {
            return Err(EtcdError::LeaseTTLTooLarge.into());
        }
        req.ttl = req.ttl.max(self.server.limits.min_lease_ttl_s);
        let chosen_by_server = req.id == 0;
        self.server.leases.await_primary(&self.server).await;
        for _ in 0..GRANT_ATTEMPTS_MAX {
            if chosen_by_server {
                req.id = random_lease_id();
            }
            match self.server.proposer.propose(Command::LeaseGrant(req)).await {
                Ok(Applied::LeaseGrant(resp)) => {
                    return Ok(Response::new(LeaseGrantResponse {
                        header: self.server.complete(resp.header),
                        ..resp
                    }))
                }
                Ok(_) => return Err(unexpected()),
                Err(EtcdError::LeaseExist) if chosen_by_server => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EtcdError::LeaseExist.into())
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Reply<LeaseRevokeResponse> {
        let req = request.into_inner();
        match self
            .server
            .proposer
            .propose(Command::LeaseRevoke(req))
            .await?
        {
            Applied::LeaseRevoke(resp) => Ok(Response::new(LeaseRevokeResponse {
                header: self.server.complete(resp.header),
            })),
            _ => Err(unexpected()),
        }
    }

    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Reply<Self::LeaseKeepAliveStream> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let server = self.server.clone();
        tokio::spawn(async move {
            // Ends when the client half-closes (inbound ends) or goes away (send fails).
            while let Some(next) = inbound.next().await {
                let reply = match next {
                    Ok(req) => server
                        .leases
                        .keep_alive(&server, req.id)
                        .await
                        .map_err(Status::from),
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Reply<LeaseTimeToLiveResponse> {
        let resp = self
            .server
            .leases
            .time_to_live(&self.server, request.into_inner())
            .await?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(&self, _: Request<LeaseLeasesRequest>) -> Reply<LeaseLeasesResponse> {
        self.server.proposer.read_barrier().await?;
        let view = self.server.store.read().map_err(storage_error)?;
        let leases = view
            .leases()
            .map_err(storage_error)?
            .into_iter()
            .map(|(id, _)| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.server.header(view.current_revision()),
            leases,
        }))
    }
}
