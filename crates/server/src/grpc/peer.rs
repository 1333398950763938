//! The `keelpb.Peer` service on the peer URL: Raft RPCs, forwarded writes and ReadIndex.
//!
//! Owns: the server side of member-to-member traffic.
//! Must never: forward a forwarded write again (the leader proposes it or says "not leader").

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use keel_api::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use keel_api::keelpb::peer_server::Peer;
use keel_api::keelpb::{
    ForwardRequest, ForwardResponse, RaftMessage, ReadIndexRequest, ReadIndexResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::server::Server;

pub struct PeerService {
    pub server: Arc<Server>,
}

type Reply<T> = Result<Response<T>, Status>;
type RaftStream = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send + 'static>>;

fn raft_reply(payload: Result<Vec<u8>, Status>) -> Reply<RaftMessage> {
    Ok(Response::new(RaftMessage { payload: payload? }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Reply<RaftMessage> {
        raft_reply(
            self.server
                .raft
                .handle_append(&request.into_inner().payload)
                .await,
        )
    }

    type AppendStreamStream = RaftStream;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Reply<Self::AppendStreamStream> {
        let input = request.into_inner().map(|msg| msg.map(|m| m.payload));
        let answers = self.server.raft.handle_append_stream(input);
        Ok(Response::new(Box::pin(answers.map(|payload| {
            payload.map(|payload| RaftMessage { payload })
        }))))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Reply<RaftMessage> {
        raft_reply(
            self.server
                .raft
                .handle_vote(&request.into_inner().payload)
                .await,
        )
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Reply<RaftMessage> {
        raft_reply(
            self.server
                .raft
                .handle_snapshot(&request.into_inner().payload)
                .await,
        )
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Reply<RaftMessage> {
        raft_reply(
            self.server
                .raft
                .handle_transfer_leader(&request.into_inner().payload)
                .await,
        )
    }

    type ForwardStream = Pin<Box<dyn Stream<Item = Result<ForwardResponse, Status>> + Send>>;

    async fn forward(
        &self,
        request: Request<Streaming<ForwardRequest>>,
    ) -> Reply<Self::ForwardStream> {
        Ok(Response::new(crate::forward::serve(
            self.server.proposer.clone(),
            request.into_inner(),
        )))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<LeaseKeepAliveRequest>,
    ) -> Reply<LeaseKeepAliveResponse> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.server
                .leases
                .keep_alive_local(&self.server, id)
                .await?,
        ))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Reply<LeaseTimeToLiveResponse> {
        let req = request.into_inner();
        Ok(Response::new(
            self.server
                .leases
                .time_to_live_local(&self.server, &req)
                .await?,
        ))
    }

    async fn read_index(&self, _: Request<ReadIndexRequest>) -> Reply<ReadIndexResponse> {
        let read_index = self.server.proposer.read_index_local().await?;
        Ok(Response::new(ReadIndexResponse { read_index }))
    }
}
