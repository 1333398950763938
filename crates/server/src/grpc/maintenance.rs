//! The etcd `Maintenance` and `Cluster` services: what `etcdctl endpoint status/health` and
//! `member list` need. Membership changes, defrag, snapshots and downgrades are their own
//! issues and answer `Unimplemented` until then.
//!
//! Must never: change state.

use std::sync::Arc;

use keel_api::etcdserverpb as pb;
use keel_api::etcdserverpb::cluster_server::Cluster;
use keel_api::etcdserverpb::maintenance_server::Maintenance;
use tonic::{Request, Response, Status};

use super::unimplemented::{unimplemented, unimplemented_rpcs};
use super::BoxStream;
use crate::apply::member_attributes;
use crate::apply::range::storage_error;
use crate::server::Server;

/// The etcd API version keel implements; clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.0";

type Reply<T> = Result<Response<T>, Status>;

pub struct MaintenanceService {
    pub server: Arc<Server>,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Reply<pb::StatusResponse> {
        let s = &self.server;
        let raft = s.raft.status();
        let db_size = s.store.db_size_bytes().map_err(storage_error)? as i64;
        let is_learner = raft
            .members
            .iter()
            .any(|m| m.id == s.member_id && m.is_learner);
        Ok(Response::new(pb::StatusResponse {
            header: s.header(s.current_revision()),
            version: ETCD_API_VERSION.into(),
            db_size,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.last_log_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Reply<pb::AlarmResponse> {
        // No alarm is ever raised yet (quota and corruption checks are their own issues), so
        // the list is empty and deactivating is a no-op, as on an etcd with no alarms.
        let _ = request.into_inner();
        Ok(Response::new(pb::AlarmResponse {
            header: self.server.header(self.server.current_revision()),
            alarms: vec![],
        }))
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Reply<pb::HashKvResponse> {
        let req = request.into_inner();
        let h = self
            .server
            .store
            .hash_kv(req.revision)
            .map_err(storage_error)?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.server.header(h.revision),
            hash: h.hash,
            compact_revision: h.compact_revision,
        }))
    }

    type SnapshotStream = BoxStream<pb::SnapshotResponse>;
    async fn snapshot(&self, _: Request<pb::SnapshotRequest>) -> Reply<Self::SnapshotStream> {
        unimplemented("Maintenance.Snapshot")
    }

    unimplemented_rpcs! { "Maintenance";
        defragment(pb::DefragmentRequest) -> pb::DefragmentResponse, "Defragment";
        hash(pb::HashRequest) -> pb::HashResponse, "Hash";
        move_leader(pb::MoveLeaderRequest) -> pb::MoveLeaderResponse, "MoveLeader";
        downgrade(pb::DowngradeRequest) -> pb::DowngradeResponse, "Downgrade";
    }
}

pub struct ClusterService {
    pub server: Arc<Server>,
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        let s = &self.server;
        s.raft
            .status()
            .members
            .into_iter()
            .map(|m| {
                // Until a member has published its attributes, etcd lists it with an empty
                // name and no client URLs ("unstarted"); keel does the same.
                let attrs = member_attributes(&s.store, m.id);
                pb::Member {
                    id: m.id,
                    name: attrs.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: m.member.peer_urls,
                    client_ur_ls: attrs.map(|a| a.client_urls).unwrap_or_default(),
                    is_learner: m.is_learner,
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Reply<pb::MemberListResponse> {
        if request.into_inner().linearizable {
            self.server.proposer.read_barrier().await?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: self.server.header(self.server.current_revision()),
            members: self.members(),
        }))
    }

    unimplemented_rpcs! { "Cluster";
        member_add(pb::MemberAddRequest) -> pb::MemberAddResponse, "MemberAdd";
        member_remove(pb::MemberRemoveRequest) -> pb::MemberRemoveResponse, "MemberRemove";
        member_update(pb::MemberUpdateRequest) -> pb::MemberUpdateResponse, "MemberUpdate";
        member_promote(pb::MemberPromoteRequest) -> pb::MemberPromoteResponse, "MemberPromote";
    }
}
