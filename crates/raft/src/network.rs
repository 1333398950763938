//! Raft peer traffic over gRPC (`keelpb.Peer` on the peer URL), both directions.
//!
//! Owns: the serialization of openraft's RPCs (bincode inside `keelpb.RaftMessage`), the client
//! side (`RaftNetworkV2`) and the server-side dispatch into the local `Raft`.
//! Must never: retry on its own (openraft owns retries and backoff) or wait longer than the
//! RPC's hard TTL for an answer to a unary RPC. The replication stream has no per-answer
//! deadline: a follower that is alive but slow only delays its own answers, and one that stops
//! answering at all loses its connection to the HTTP/2 keepalive, which ends the stream.

use std::collections::HashMap;
use std::future::Future;
use std::io::Cursor;
use std::sync::OnceLock;
use std::time::Duration;

use futures::{Stream, StreamExt};
use keel_api::keelpb::peer_client::PeerClient;
use keel_api::keelpb::RaftMessage;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::types::{Member, NodeId, SnapshotMeta, TypeConfig, Vote};
use crate::KeelRaft;

/// Largest peer message (a whole snapshot travels in one message for now).
pub const PEER_MESSAGE_BYTES_MAX: usize = 1 << 30;

type Rpc<T> = Result<T, RPCError<TypeConfig>>;

fn unreachable(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, tonic::Status> {
    bincode::serialize(value).map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, tonic::Status> {
    bincode::deserialize(bytes).map_err(|e| tonic::Status::invalid_argument(format!("decode: {e}")))
}

/// Turns a peer endpoint into a channel over something other than TCP (see
/// [`set_peer_dialer`]).
pub type PeerDialer = fn(Endpoint) -> Channel;

static PEER_DIALER: OnceLock<PeerDialer> = OnceLock::new();

/// Replaces how every member in this process connects to its peers. Only the deterministic
/// simulation calls it (its members talk over turmoil's simulated network); it can be set
/// once per process, and a member process never sets it. Returns `false` if a different
/// dialer was already set.
pub fn set_peer_dialer(dialer: PeerDialer) -> bool {
    let set = *PEER_DIALER.get_or_init(|| dialer);
    std::ptr::fn_addr_eq(set, dialer)
}

/// How often an idle peer connection is pinged, and how long a ping may go unanswered before
/// the connection is dropped and redialled. Without it a connection whose packets vanish (a
/// peer's host gone without a reset, a black-holing network) stalls every later RPC on it
/// until TCP gives up many minutes later; found by the simulation, whose partitions drop
/// packets silently.
const PEER_KEEPALIVE: Duration = Duration::from_secs(1);
const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Fault-injection seam (process-level tests only): peer URL -> `host:port` to dial instead,
/// so a test can route every link between two members through its own proxy. Set at most
/// once per process, before any peer is dialled (`keel` sets it from `KEEL_PEER_DIAL_MAP`);
/// unset, every peer is dialled at its own URL.
static PEER_DIAL_MAP: OnceLock<HashMap<String, String>> = OnceLock::new();

/// Installs the peer dial map; `Err` with the map if one was already installed.
pub fn set_peer_dial_map(map: HashMap<String, String>) -> Result<(), HashMap<String, String>> {
    PEER_DIAL_MAP.set(map)
}

/// The URL to dial for a peer URL: its entry in the dial map, or the URL itself.
fn dial_url(url: &str) -> String {
    PEER_DIAL_MAP
        .get()
        .and_then(|map| map.get(url.trim_end_matches('/')))
        .map_or_else(|| url.to_string(), |addr| format!("http://{addr}"))
}

/// Opens a lazily connecting gRPC channel to a peer URL such as `http://127.0.0.1:2380`
/// (or to the address the peer dial map names for it).
pub fn peer_channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(dial_url(url))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(PEER_KEEPALIVE)
        .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(match PEER_DIALER.get() {
        Some(dial) => dial(endpoint),
        None => endpoint.connect_lazy(),
    })
}

/// Metadata naming the member a peer request is meant for (etcd's `X-Raft-To`). A member
/// answers a request meant for another with `FailedPrecondition`: once an address is reused
/// (a member moved, another cluster on the same host), traffic for the member that was there
/// must not reach whoever is there now, or it could vote for and follow another cluster's
/// leader.
pub const TO_MEMBER_HEADER: &str = "x-keel-to";

/// Adds [`TO_MEMBER_HEADER`] (the member id in decimal) to every request of a peer client.
#[derive(Clone, Debug)]
pub struct ToMember(MetadataValue<Ascii>);

impl ToMember {
    pub fn new(target: NodeId) -> Self {
        Self(MetadataValue::from(target))
    }
}

impl tonic::service::Interceptor for ToMember {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(TO_MEMBER_HEADER, self.0.clone());
        Ok(req)
    }
}

/// The peer-side check of [`TO_MEMBER_HEADER`]: requests meant for another member are
/// refused; requests without the header (older members) pass.
#[derive(Clone, Copy, Debug)]
pub struct ForMember(pub NodeId);

impl tonic::service::Interceptor for ForMember {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(to) = req.metadata().get(TO_MEMBER_HEADER) else {
            return Ok(req);
        };
        let to = to.to_str().ok().and_then(|s| s.parse::<NodeId>().ok());
        if to != Some(self.0) {
            return Err(tonic::Status::failed_precondition(format!(
                "request for member {} reached member {:x}",
                to.map_or_else(|| "(unreadable id)".to_string(), |id| format!("{id:x}")),
                self.0
            )));
        }
        Ok(req)
    }
}

/// A `Peer` service client whose requests name their target member.
pub type PeerRpc = PeerClient<InterceptedService<Channel, ToMember>>;

/// A gRPC client for the `Peer` service of member `target`, with keel's message-size limits.
pub fn peer_client(channel: Channel, target: NodeId) -> PeerRpc {
    PeerClient::with_interceptor(channel, ToMember::new(target))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

/// Creates one `PeerConn` per target member.
#[derive(Clone)]
pub struct NetworkFactory {
    /// Deadline of an append that carries entries (see `PeerConn::append_entries`).
    pub append_timeout: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        let client = node
            .peer_urls
            .first()
            .and_then(|url| peer_channel(url).ok())
            .map(|channel| peer_client(channel, target));
        PeerConn {
            target,
            client,
            append_timeout: self.append_timeout,
        }
    }
}

/// The connection to one peer.
pub struct PeerConn {
    target: NodeId,
    client: Option<PeerRpc>,
    append_timeout: Duration,
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
    Transfer,
}

impl PeerConn {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        kind: Kind,
        req: &Req,
        ttl: Duration,
    ) -> Rpc<Resp> {
        let Some(client) = self.client.as_mut() else {
            return Err(unreachable(format!(
                "member {:x} has no usable peer URL",
                self.target
            )));
        };
        let msg = RaftMessage {
            payload: encode(req).map_err(unreachable)?,
        };
        let call = async {
            match kind {
                Kind::Append => client.append_entries(msg).await,
                Kind::Vote => client.vote(msg).await,
                Kind::Snapshot => client.install_snapshot(msg).await,
                Kind::Transfer => client.transfer_leader(msg).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "member {:x}: timed out after {ttl:?}",
                    self.target
                )))
            }
            Ok(Err(status)) => {
                return Err(unreachable(format!(
                    "member {:x}: {}",
                    self.target,
                    status.message()
                )))
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        decode(&reply.payload).map_err(unreachable)
    }
}

/// Vote and pre-vote share one RPC; the flag tells them apart.
#[derive(serde::Serialize, serde::Deserialize)]
struct VoteMessage {
    pre_vote: bool,
    request: VoteRequest<TypeConfig>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotMessage {
    vote: Vote,
    meta: SnapshotMeta,
    /// CRC32C of `data`, checked before the snapshot is installed.
    crc32c: u32,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<TypeConfig>> {
        // openraft gives every append the heartbeat interval as deadline. That suits empty
        // appends (heartbeats), but one carrying megabytes of entries can take longer, and
        // cancelling it only makes the leader send it again.
        let ttl = if rpc.entries.is_empty() {
            option.hard_ttl()
        } else {
            option.hard_ttl().max(self.append_timeout)
        };
        self.call(Kind::Append, &rpc, ttl).await
    }

    /// Replication over one `AppendStream` call: openraft's request stream is pulled as fast as
    /// the connection takes it (pipelining; the follower answers in order), so a new entry
    /// never waits for the answer to the previous append, and each append costs one HTTP/2
    /// data frame instead of a new call. Heartbeats come through here too, as one-request
    /// streams.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Rpc<BoxStream<'s, Rpc<StreamAppendResult<TypeConfig>>>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let target = self.target;
        let setup = option.hard_ttl().max(self.append_timeout);
        let client = self.client.clone();
        Box::pin(async move {
            let Some(mut client) = client else {
                return Err(unreachable(format!(
                    "member {target:x} has no usable peer URL"
                )));
            };
            // openraft sleeps its replication backoff while producing a request, so the first
            // one is taken before connecting: a peer that refuses connections is then retried
            // at the backoff's pace, not in a tight reconnect loop (found by the simulation:
            // a crashed member's ephemeral ports ran out).
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            // bincode cannot fail on these types; an empty payload would be refused by the
            // follower's decoder, which ends the stream.
            let requests = futures::stream::once(async { first })
                .chain(input)
                .map(|req| RaftMessage {
                    payload: encode(&req).unwrap_or_default(),
                });
            let answers = match tokio::time::timeout(setup, client.append_stream(requests)).await {
                Err(_) => {
                    return Err(unreachable(format!(
                        "member {target:x}: append stream not opened within {setup:?}"
                    )))
                }
                Ok(Err(status)) => {
                    return Err(unreachable(format!(
                        "member {target:x}: {}",
                        status.message()
                    )))
                }
                Ok(Ok(answers)) => answers.into_inner(),
            };
            let answers = answers.map(move |answer| match answer {
                Ok(msg) => decode(&msg.payload).map_err(unreachable),
                Err(status) => Err(unreachable(format!(
                    "member {target:x}: {}",
                    status.message()
                ))),
            });
            Ok(Box::pin(answers) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<TypeConfig>> {
        self.call(
            Kind::Vote,
            &VoteMessage {
                pre_vote: false,
                request: rpc,
            },
            option.hard_ttl(),
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<TypeConfig>> {
        self.call(
            Kind::Vote,
            &VoteMessage {
                pre_vote: true,
                request: rpc,
            },
            option.hard_ttl(),
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = snapshot.snapshot.into_inner();
        let msg = SnapshotMessage {
            vote,
            meta: snapshot.meta,
            crc32c: crc32c::crc32c(&data),
            data,
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = self.call(Kind::Snapshot, &msg, option.hard_ttl()) => res.map_err(StreamingError::from),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<TransferLeaderResponse<TypeConfig>> {
        self.call(Kind::Transfer, &req, option.hard_ttl()).await
    }
}

fn raft_status(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::unavailable(format!("raft: {e}"))
}

/// Server side of the peer Raft RPCs: decode, hand to the local Raft, encode the reply.
impl KeelRaft {
    pub async fn handle_append(&self, payload: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let req: AppendEntriesRequest<TypeConfig> = decode(payload)?;
        encode(&self.raft.append_entries(req).await.map_err(raft_status)?)
    }

    /// Serves one `AppendStream` call: every decoded request goes to the local Raft in order,
    /// and its answers come back in the same order. A request that does not decode ends the
    /// input (the leader sees the stream end with that request unanswered and resends it).
    pub fn handle_append_stream(
        &self,
        input: impl Stream<Item = Result<Vec<u8>, tonic::Status>> + Send + 'static,
    ) -> BoxStream<'static, Result<Vec<u8>, tonic::Status>> {
        let id = self.id();
        let requests = input.scan((), move |_, item| {
            let req = item.ok().and_then(|bytes| {
                decode::<AppendEntriesRequest<TypeConfig>>(&bytes)
                    .inspect_err(|e| tracing::warn!(member = id, "append stream: {e}"))
                    .ok()
            });
            std::future::ready(req)
        });
        Box::pin(
            self.raft
                .stream_append(requests)
                .map(|answer| match answer {
                    Ok(result) => encode(&result),
                    Err(fatal) => Err(raft_status(fatal)),
                }),
        )
    }

    pub async fn handle_vote(&self, payload: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let msg: VoteMessage = decode(payload)?;
        let resp = if msg.pre_vote {
            self.raft.pre_vote(msg.request).await
        } else {
            self.raft.vote(msg.request).await
        };
        encode(&resp.map_err(raft_status)?)
    }

    pub async fn handle_snapshot(&self, payload: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let msg: SnapshotMessage = decode(payload)?;
        if crc32c::crc32c(&msg.data) != msg.crc32c {
            return Err(tonic::Status::data_loss("snapshot checksum mismatch"));
        }
        let snapshot = openraft::storage::Snapshot {
            meta: msg.meta,
            snapshot: Cursor::new(msg.data),
        };
        encode(
            &self
                .raft
                .install_full_snapshot(msg.vote, snapshot)
                .await
                .map_err(raft_status)?,
        )
    }

    pub async fn handle_transfer_leader(&self, payload: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let req: TransferLeaderRequest<TypeConfig> = decode(payload)?;
        encode(
            &self
                .raft
                .handle_transfer_leader(req)
                .await
                .map_err(raft_status)?,
        )
    }
}
