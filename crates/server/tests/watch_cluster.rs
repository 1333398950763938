//! Watch on a three-member cluster across a leader crash: a watcher on a follower sees every
//! event of the store's history exactly once and in order, resuming on another member from
//! its last revision + 1 whenever its stream breaks, while a writer keeps putting through
//! whichever member answers (retrying writes whose outcome it does not know).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use keel_api::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// Puts the writer makes (one new key each).
const PUTS: usize = 200;
/// The put after which the leader is killed.
const KILL_AFTER: usize = 100;
/// Longest wait for the watcher to catch up with the writer's last revision.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// Longest silence on a watch stream before the watcher re-checks its exit condition.
const RECV_SLICE: Duration = Duration::from_millis(200);
/// Attempts per put before the test gives up (each bounded by the client's RPC timeout).
const PUT_ATTEMPTS_MAX: u32 = 20;

/// One put event as the watcher or the store history sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Put {
    revision: i64,
    key: String,
    value: String,
}

fn prefix_watch(prefix: &str, start_revision: i64) -> WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    WatchCreateRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: end,
        start_revision,
        ..Default::default()
    }
}

/// A watch stream to `url` watching `create`, after its `created` reply.
async fn open_watch(
    url: &str,
    create: WatchCreateRequest,
) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), String> {
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut responses = tokio::time::timeout(
        RPC_TIMEOUT,
        WatchClient::new(channel).watch(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| "watch call timed out".to_string())?
    .map_err(|e| e.to_string())?
    .into_inner();
    match tokio::time::timeout(RPC_TIMEOUT, responses.message()).await {
        Ok(Ok(Some(r))) if r.created && !r.canceled => Ok((tx, responses)),
        other => Err(format!("no created reply: {other:?}")),
    }
}

/// What the writer learned: puts it saw acknowledged, and attempts whose outcome it does not
/// know (the request failed after it may have reached a leader).
#[derive(Default)]
struct Written {
    acked: Vec<Put>,
    unknown: Vec<(String, String)>,
}

/// Puts `PUTS` new keys, starting on `first` and moving to the next member on any error;
/// signals `kill_tx` after put `KILL_AFTER`. Each attempt has its own value, so the store's
/// history says which attempts were applied.
async fn write(
    mut kvs: Vec<KvClient<Channel>>,
    first: usize,
    kill_tx: mpsc::Sender<()>,
) -> Written {
    let mut written = Written::default();
    let mut target = first;
    for i in 0..PUTS {
        let key = format!("w/{i:03}");
        let mut attempt = 0;
        // Retries on the next member (at `eventually`'s poll interval) while a new leader is
        // elected, until the put is acknowledged.
        let acked = eventually(&format!("put {key}"), LEADER_WAIT, async || {
            assert!(attempt < PUT_ATTEMPTS_MAX, "put {key}: too many attempts");
            let value = format!("{i}.{attempt}");
            match kvs[target].put(put_req(&key, &value)).await {
                Ok(resp) => Ok(Put {
                    revision: rev(&resp.into_inner()),
                    key: key.clone(),
                    value,
                }),
                Err(status) => {
                    tracing::warn!(key, target, %status, "put failed; outcome unknown, retrying");
                    written.unknown.push((key.clone(), value));
                    target = (target + 1) % kvs.len();
                    attempt += 1;
                    Err(status.to_string())
                }
            }
        })
        .await;
        written.acked.push(acked);
        if i + 1 == KILL_AFTER {
            kill_tx.send(()).await.expect("killer listens");
        }
    }
    written
}

/// Watches `w/` from `start` on member `first`, resuming on the next member from the last
/// seen revision + 1 whenever the stream breaks, until it has seen revision `until` (sent by
/// the writer's side once known). Returns every put event received, and how many resumes.
async fn watch(
    urls: &[String],
    first: usize,
    start: i64,
    mut until: tokio::sync::watch::Receiver<Option<i64>>,
) -> (Vec<Put>, usize) {
    let mut seen: Vec<Put> = Vec::new();
    let mut current = first;
    let mut resumes = 0;
    let (mut _tx, mut stream) = open_watch(&urls[current], prefix_watch("w/", start))
        .await
        .expect("watch on a follower");
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher did not catch up: last seen {:?}, until {:?}",
            seen.last(),
            *until.borrow()
        );
        if let (Some(last), Some(put)) = (*until.borrow_and_update(), seen.last()) {
            if put.revision >= last {
                return (seen, resumes);
            }
        }
        let response = match tokio::time::timeout(RECV_SLICE, stream.message()).await {
            Err(_) => continue, // re-check the exit condition
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let from = seen.last().map_or(start, |p| p.revision + 1);
                resumes += 1;
                tracing::info!(
                    current,
                    from,
                    "--- the watch stream broke; resume elsewhere"
                );
                let what = format!("a watch from revision {from} on another member");
                (_tx, stream) = eventually(&what, SETTLE_WAIT, async || {
                    current = (current + 1) % urls.len();
                    open_watch(&urls[current], prefix_watch("w/", from)).await
                })
                .await;
                continue;
            }
        };
        assert!(!response.canceled, "watch canceled: {response:?}");
        for event in &response.events {
            assert_eq!(event.r#type, EventType::Put as i32, "only puts: {event:?}");
            let kv = event.kv.as_ref().expect("event kv");
            seen.push(Put {
                revision: kv.mod_revision,
                key: text(&kv.key),
                value: text(&kv.value),
            });
        }
    }
}

/// Every revision of every key under `w/` in the store, oldest first: each key's versions
/// are walked back through historical reads (nothing is compacted).
async fn history(kv: &mut KvClient<Channel>) -> Vec<Put> {
    let mut puts = Vec::new();
    for latest in get(kv, prefix_req("w/")).await.kvs {
        let key = text(&latest.key);
        let mut kv_at = latest;
        loop {
            puts.push(Put {
                revision: kv_at.mod_revision,
                key: key.clone(),
                value: text(&kv_at.value),
            });
            if kv_at.version == 1 {
                break;
            }
            let older = RangeRequest {
                revision: kv_at.mod_revision - 1,
                ..range_req(&key, "")
            };
            kv_at = get(kv, older).await.kvs.pop().expect("older version");
        }
    }
    puts.sort();
    puts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_watch_sees_every_put_once_in_order_across_a_leader_kill() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let urls: Vec<String> = (0..cluster.len()).map(|i| cluster.client_url(i)).collect();
    let kvs: Vec<KvClient<Channel>> = (0..cluster.len()).map(|i| cluster.kv(i)).collect();
    let start = rev(&put(&mut cluster.kv(leader), "before", "x").await) + 1;

    tracing::info!(
        leader,
        follower,
        "--- phase 1: write through the leader, watch a follower"
    );
    let (kill_tx, mut kill_rx) = mpsc::channel::<()>(1);
    let (until_tx, until_rx) = tokio::sync::watch::channel(None::<i64>);
    let cluster_ref = &mut cluster;
    let mut reader = kvs[follower].clone();
    // The writer, then the final history's last revision for the watcher.
    let writer = async move {
        let written = write(kvs, leader, kill_tx).await;
        let last = history(&mut reader).await.last().map(|p| p.revision);
        until_tx.send(last).expect("watcher listens");
        written
    };
    let killer = async move {
        tokio::time::timeout(CATCH_UP_WAIT, kill_rx.recv())
            .await
            .expect("the writer reaches the kill point")
            .expect("kill signal");
        tracing::info!(leader, "--- phase 2: kill the leader mid-stream");
        cluster_ref.kill(leader).await;
    };
    let watcher = watch(&urls, follower, start, until_rx);
    let (written, (seen, resumes), ()) = tokio::join!(writer, watcher, killer);
    let new_leader = cluster.wait_for_leader().await;
    tracing::info!(
        resumes,
        unknown = written.unknown.len(),
        new_leader,
        "--- phase 3: compare with the store's history"
    );

    let mut reader = cluster.kv(new_leader);
    let history = history(&mut reader).await;
    assert_eq!(
        seen, history,
        "the watch saw exactly the store's history, in order, each event once"
    );
    let distinct: HashSet<i64> = seen.iter().map(|p| p.revision).collect();
    assert_eq!(distinct.len(), seen.len(), "no revision twice");
    for put in &written.acked {
        assert!(
            seen.contains(put),
            "acknowledged put {put:?} was not watched"
        );
    }
    let acked: HashSet<(String, String)> = written
        .acked
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    let unknown: HashSet<(String, String)> = written.unknown.iter().cloned().collect();
    let mut attempts_seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for put in &seen {
        let attempt = (put.key.clone(), put.value.clone());
        assert!(
            acked.contains(&attempt) || unknown.contains(&attempt),
            "watched {put:?}, which the writer never sent"
        );
        *attempts_seen.entry(attempt).or_default() += 1;
    }
    assert!(
        attempts_seen.values().all(|&n| n == 1),
        "an attempt applied twice: {attempts_seen:?}"
    );
    assert_eq!(written.acked.len(), PUTS);
    cluster.shutdown().await;
}
