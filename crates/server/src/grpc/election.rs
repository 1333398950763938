//! The `v3electionpb.Election` service: campaign, proclaim, leader, observe, resign.
//!
//! Owns: etcd's election semantics on top of the waiter recipe in `crate::lock`: the leader
//! is the campaigner whose key has the lowest create revision; its key's value is the
//! proclamation.
//! Must never: let a non-leader proclaim or resign (compares on the leader key's create
//! revision guard both).

use std::sync::Arc;

use keel_api::error::EtcdError;
use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_api::v3electionpb::election_server::Election;
use keel_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{check_size, BoxStream};
use crate::lock::{
    create_guarded, create_revision_is, first_waiter, op_delete, op_put, prefix_end, read, txn,
    wait_for_change, wait_for_predecessors, waiter_key, waiters_prefix,
};
use crate::server::Server;
use crate::watch::WatchHub;
use keel_api::etcdserverpb::TxnRequest;

type Reply<T> = Result<Response<T>, Status>;

/// Leader changes buffered per Observe stream before the stream waits for its client.
const OBSERVE_BUFFER: usize = 16;

pub struct ElectionService {
    pub server: Arc<Server>,
    pub hub: Arc<WatchHub>,
}

impl ElectionService {
    /// Replaces the leader key's value if `leader` still leads.
    async fn proclaim_as(
        &self,
        leader: &LeaderKey,
        value: &[u8],
    ) -> Result<ProclaimResponse, EtcdError> {
        let put = PutRequest {
            key: leader.key.clone(),
            value: value.to_vec(),
            ignore_lease: true,
            ..Default::default()
        };
        let resp = txn(
            &self.server,
            TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![op_put(put)],
                failure: vec![],
            },
        )
        .await?;
        if !resp.succeeded {
            return Err(EtcdError::ElectionNotLeader);
        }
        Ok(ProclaimResponse {
            header: self.server.complete(resp.header),
        })
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, request: Request<CampaignRequest>) -> Reply<CampaignResponse> {
        let req = request.into_inner();
        check_size(&req, &self.server.limits)?;
        if req.name.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let server = &self.server;
        let key = waiter_key(&req.name, req.lease);
        let (rev, resp, guard) = create_guarded(server, &key, &req.value, req.lease).await?;
        let created = guard.is_some();
        let leader = LeaderKey {
            name: req.name.clone(),
            key: key.clone(),
            rev,
            lease: req.lease,
        };
        if !created {
            // Campaigning again with the same lease: keep the place in line, update the value.
            let current = read(
                server,
                RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                },
            )
            .await?;
            if current.kvs.first().is_some_and(|kv| kv.value != req.value) {
                self.proclaim_as(&leader, &req.value).await?;
            }
        }
        wait_for_predecessors(server, &self.hub, &waiters_prefix(&req.name), rev).await?;
        if let Some(guard) = guard {
            guard.keep();
        }
        Ok(Response::new(CampaignResponse {
            header: server.complete(resp.header),
            leader: Some(leader),
        }))
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Reply<ProclaimResponse> {
        let req = request.into_inner();
        check_size(&req, &self.server.limits)?;
        let leader = req.leader.ok_or(EtcdError::ElectionMissingLeaderKey)?;
        Ok(Response::new(self.proclaim_as(&leader, &req.value).await?))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Reply<LeaderResponse> {
        check_size(request.get_ref(), &self.server.limits)?;
        let name = request.into_inner().name;
        let (kv, revision) = first_waiter(&self.server, &waiters_prefix(&name)).await?;
        let kv = kv.ok_or(EtcdError::ElectionNoLeader)?;
        Ok(Response::new(LeaderResponse {
            header: self.server.header(revision),
            kv: Some(kv),
        }))
    }

    type ObserveStream = BoxStream<LeaderResponse>;

    async fn observe(&self, request: Request<LeaderRequest>) -> Reply<Self::ObserveStream> {
        check_size(request.get_ref(), &self.server.limits)?;
        let prefix = waiters_prefix(&request.into_inner().name);
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
        let server = self.server.clone();
        let hub = self.hub.clone();
        tokio::spawn(async move {
            let mut last_sent = None;
            loop {
                let (kv, revision) = match first_waiter(&server, &prefix).await {
                    Ok(found) => found,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if let Some(kv) = kv {
                    let changed = last_sent
                        .as_ref()
                        .is_none_or(|(k, m)| *k != kv.key || *m != kv.mod_revision);
                    if changed {
                        last_sent = Some((kv.key.clone(), kv.mod_revision));
                        let resp = LeaderResponse {
                            header: server.header(revision),
                            kv: Some(kv),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return; // the observer went away
                        }
                    }
                }
                let end = prefix_end(&prefix);
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = wait_for_change(&hub, &prefix, &end, revision, false) => {
                        if let Err(e) = changed {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Reply<ResignResponse> {
        check_size(request.get_ref(), &self.server.limits)?;
        let leader = request
            .into_inner()
            .leader
            .ok_or(EtcdError::ElectionMissingLeaderKey)?;
        let resp = txn(
            &self.server,
            TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![op_delete(&leader.key)],
                failure: vec![],
            },
        )
        .await?;
        Ok(Response::new(ResignResponse {
            header: self.server.complete(resp.header),
        }))
    }
}
