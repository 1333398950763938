//! The `v3lockpb.Lock` service: distributed locks with fencing tokens.
//!
//! `Lock` answers once the caller holds the lock; the response's `header.revision` is the
//! lock key's create revision (as in etcd when the key is new), which only grows from one
//! holder to the next: the fencing token a protected resource compares.
//! Must never: answer `Lock` before every older waiter's key is gone.

use std::sync::Arc;

use keel_api::error::EtcdError;
use keel_api::etcdserverpb::DeleteRangeRequest;
use keel_api::keelpb::internal_request::Request as Command;
use keel_api::keelpb::internal_response::Response as Applied;
use keel_api::v3lockpb::lock_server::Lock;
use keel_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use super::check_size;
use crate::lock::{
    create_guarded, created_revision, wait_for_predecessors, waiter_key, waiters_prefix,
};
use crate::server::Server;
use crate::watch::WatchHub;

type Reply<T> = Result<Response<T>, Status>;

pub struct LockService {
    pub server: Arc<Server>,
    pub hub: Arc<WatchHub>,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Reply<LockResponse> {
        let req = request.into_inner();
        check_size(&req, &self.server.limits)?;
        if req.name.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let server = &self.server;
        let key = waiter_key(&req.name, req.lease);
        let (my_revision, _, guard) = create_guarded(server, &key, &[], req.lease).await?;
        wait_for_predecessors(server, &self.hub, &waiters_prefix(&req.name), my_revision).await?;
        // The lease may have expired while we waited: then the key is gone and so is the lock.
        if created_revision(server, &key)? != Some(my_revision) {
            return Err(EtcdError::LockSessionExpired.into());
        }
        if let Some(guard) = guard {
            guard.keep();
        }
        let mut header = server.header(my_revision);
        if let Some(h) = header.as_mut() {
            h.revision = my_revision;
        }
        Ok(Response::new(LockResponse { header, key }))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Reply<UnlockResponse> {
        let req = request.into_inner();
        check_size(&req, &self.server.limits)?;
        // etcd deletes the key through its KV service, which refuses an empty key.
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let del = DeleteRangeRequest {
            key: req.key,
            ..Default::default()
        };
        match self
            .server
            .proposer
            .propose(Command::DeleteRange(del))
            .await?
        {
            Applied::DeleteRange(resp) => Ok(Response::new(UnlockResponse {
                header: self.server.complete(resp.header),
            })),
            _ => Err(EtcdError::Unknown("etcdserver: unexpected apply response".into()).into()),
        }
    }
}
