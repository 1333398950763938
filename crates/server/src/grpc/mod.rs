//! gRPC services: the etcd-compatible client API and the peer API, and the routers that
//! serve them.
//!
//! Must never: hold business logic; each service validates, delegates and maps errors.

pub mod election;
pub mod h2_authority;
pub mod kill_switch;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod peer;
pub mod unimplemented;
pub mod watch;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_api::error::EtcdError;
use keel_api::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use keel_api::keelpb::peer_server::PeerServer;
use keel_api::v3electionpb::election_server::ElectionServer;
use keel_api::v3lockpb::lock_server::LockServer;
use keel_raft::{ForMember, PEER_MESSAGE_BYTES_MAX};
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic::Status;

use crate::server::{Limits, Server};

/// The response stream type of every server-streaming RPC keel serves.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// etcd's size limits on a request message: past `--max-request-bytes` "request is too
/// large"; past that plus gRPC's overhead, grpc-go's own refusal (what etcd's gRPC layer says).
pub(crate) fn check_size(req: &impl Message, limits: &Limits) -> Result<(), Status> {
    let len = req.encoded_len();
    if len > limits.grpc_message_bytes_max() {
        // What grpc-go (and so etcd) answers for a message over its receive limit.
        let max = limits.grpc_message_bytes_max();
        return Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {max})"
        )));
    }
    if len > limits.max_request_bytes {
        return Err(EtcdError::RequestTooLarge.into());
    }
    Ok(())
}

/// Every client-facing service, with decode limits above `--max-request-bytes`.
pub async fn client_routes(server: &Arc<Server>) -> Routes {
    let limit = server.limits.grpc_decode_bytes_max();
    let (health_reporter, health) = keel_api::health::server::health_reporter();
    health_reporter
        .set_service_status("", keel_api::health::ServingStatus::Serving)
        .await;
    let mut routes = tonic::service::RoutesBuilder::default();
    routes
        .add_service(
            KvServer::new(kv::KvService {
                server: server.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService {
                server: server.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            ClusterServer::new(maintenance::ClusterService {
                server: server.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(WatchServer::new(watch::WatchService {
            server: server.clone(),
            hub: server.watch_hub.clone(),
        }))
        .add_service(LeaseServer::new(lease::LeaseService {
            server: server.clone(),
        }))
        .add_service(AuthServer::new(unimplemented::NotYet))
        .add_service(
            LockServer::new(lock::LockService {
                server: server.clone(),
                hub: server.watch_hub.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            ElectionServer::new(election::ElectionService {
                server: server.clone(),
                hub: server.watch_hub.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(health);
    routes.routes()
}

/// The peer service (Raft traffic, forwarding, ReadIndex).
pub fn peer_routes(server: &Arc<Server>) -> Routes {
    let peer = PeerServer::new(peer::PeerService {
        server: server.clone(),
    })
    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    Routes::new(InterceptedService::new(peer, ForMember(server.member_id)))
}
