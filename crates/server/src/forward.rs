//! Forwarded writes: one long-lived `keelpb.Peer/Forward` stream from this member to each
//! leader it forwards to, both directions.
//!
//! Owns: matching the leader's answers (which come in any order) to the waiting writes by
//! request id, failing every waiting write when a stream breaks, and the leader's side that
//! proposes each forwarded write as it arrives.
//! Must never: report a write that may have reached the leader as "not delivered" (only a
//! stream that never connected says so, through its "tcp connect error" status, so the caller
//! may retry elsewhere), or wait without the stream's keepalive bounding a dead connection.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::channel::mpsc;
use futures::Stream;
use keel_api::keelpb::{ForwardRequest, ForwardResponse, InternalResponse};
use keel_raft::{NodeId, PeerRpc};
use tokio::sync::oneshot;
use tonic::{Code, Status, Streaming};

use crate::propose::Proposer;

/// The leader's answer: the entry's log index and its applied response, or why it has none.
type Answer = Result<Option<(u64, InternalResponse)>, Status>;
/// Waiting writes by request id; `None` once the stream has ended.
type Pending = Arc<Mutex<Option<BTreeMap<u64, oneshot::Sender<Answer>>>>>;

fn lock(pending: &Pending) -> MutexGuard<'_, Option<BTreeMap<u64, oneshot::Sender<Answer>>>> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

/// An open stream to one leader.
struct Link {
    requests: mpsc::UnboundedSender<ForwardRequest>,
    pending: Pending,
}

impl Link {
    fn open(mut client: PeerRpc) -> Self {
        let (requests, rx) = mpsc::unbounded();
        let pending: Pending = Arc::new(Mutex::new(Some(BTreeMap::new())));
        let routes = pending.clone();
        tokio::spawn(async move {
            let ended = match client.forward(rx).await {
                Err(status) => status,
                Ok(answers) => route(answers.into_inner(), &routes).await,
            };
            let waiting = lock(&routes).take().unwrap_or_default();
            for (_, tx) in waiting {
                let _ = tx.send(Err(ended.clone()));
            }
        });
        Self { requests, pending }
    }

    /// Queues `req` (whose request id is `id`) and returns where its answer will arrive;
    /// gives `req` back if the stream has ended.
    fn send(
        &self,
        id: u64,
        req: ForwardRequest,
    ) -> Result<oneshot::Receiver<Answer>, ForwardRequest> {
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => return Err(req),
        };
        // If the stream ends after the insert, its task fails the waiter.
        let _ = self.requests.unbounded_send(req);
        Ok(rx)
    }
}

/// Hands each answer to its waiter until the stream ends; returns why it ended.
async fn route(mut answers: Streaming<ForwardResponse>, pending: &Pending) -> Status {
    loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                let waiter = lock(pending)
                    .as_mut()
                    .and_then(|p| p.remove(&answer.request_id));
                if let Some(tx) = waiter {
                    let _ = tx.send(if answer.code == Code::Ok as i32 {
                        Ok(answer.response.map(|r| (answer.index, r)))
                    } else {
                        Err(Status::new(Code::from_i32(answer.code), answer.message))
                    });
                }
            }
            Ok(None) => return Status::unavailable("forward stream ended by the leader"),
            Err(status) => return status,
        }
    }
}

/// This member's forward streams, one per leader.
#[derive(Default)]
pub struct Forwarder {
    links: Mutex<HashMap<NodeId, Link>>,
}

impl Forwarder {
    /// Sends one write to `leader` and waits for its answer: the applied response, or the
    /// status the leader (or the broken stream) gave.
    pub async fn forward(&self, leader: NodeId, client: PeerRpc, req: ForwardRequest) -> Answer {
        let id = req
            .request
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("forward without request"))?
            .request_id;
        let answer = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            let link = links
                .entry(leader)
                .or_insert_with(|| Link::open(client.clone()));
            match link.send(id, req) {
                Ok(answer) => answer,
                Err(req) => {
                    // The old stream ended (its waiters already have their error): open anew.
                    let link = Link::open(client);
                    let answer = link.send(id, req);
                    links.insert(leader, link);
                    answer.map_err(|_| Status::unavailable("forward stream ended"))?
                }
            }
        };
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("forward stream dropped")))
    }
}

/// The leader's side of one member's stream: proposes every write as it arrives and answers
/// each when it is applied (or refused), in whatever order they finish.
pub fn serve(
    proposer: Arc<Proposer>,
    mut requests: Streaming<ForwardRequest>,
) -> Pin<Box<dyn Stream<Item = Result<ForwardResponse, Status>> + Send>> {
    let (answers, rx) = mpsc::unbounded();
    tokio::spawn(async move {
        while let Ok(Some(forward)) = requests.message().await {
            let Some(req) = forward.request else {
                continue;
            };
            let (proposer, answers) = (proposer.clone(), answers.clone());
            tokio::spawn(async move {
                let request_id = req.request_id;
                let answer = match proposer.propose_local(req).await {
                    Ok((index, response)) => ForwardResponse {
                        response: Some(response),
                        request_id,
                        index,
                        ..Default::default()
                    },
                    Err(e) => {
                        let status = Status::from(e);
                        ForwardResponse {
                            response: None,
                            request_id,
                            code: status.code() as i32,
                            message: status.message().to_string(),
                            index: 0,
                        }
                    }
                };
                let _ = answers.unbounded_send(Ok(answer));
            });
        }
    });
    Box::pin(rx)
}
