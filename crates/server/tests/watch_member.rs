//! Watch through a member's own client port, fed by the real apply path (KV writes via
//! Raft -> apply -> publish), on one member and across a leader kill with client resume.

mod common;

use std::time::Duration;

use common::*;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{CompactionRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::Streaming;

/// Longest wait for one expected response.
const RESPONSE_WAIT: Duration = Duration::from_secs(10);

/// A watch stream to member `i` with one watch on `create`; returns the stream after its
/// `created` reply, or an error if the member cannot be reached.
async fn open_watch(
    cluster: &TestCluster,
    i: usize,
    create: WatchCreateRequest,
) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), String> {
    let channel = Endpoint::from_shared(cluster.client_url(i))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(16);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut responses = WatchClient::new(channel)
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let created = next(&mut responses).await?;
    if !created.created || created.canceled {
        return Err(format!("not created: {created:?}"));
    }
    Ok((tx, responses))
}

async fn next(responses: &mut Streaming<WatchResponse>) -> Result<WatchResponse, String> {
    match tokio::time::timeout(RESPONSE_WAIT, responses.message()).await {
        Err(_) => Err("no watch response before the deadline".into()),
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => Err("watch stream ended".into()),
        Ok(Err(status)) => Err(format!("watch stream failed: {status}")),
    }
}

fn prefix(p: &str, start_revision: i64) -> WatchCreateRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    WatchCreateRequest {
        key: p.as_bytes().to_vec(),
        range_end: end,
        start_revision,
        ..Default::default()
    }
}

/// (revision, key) of every event in `r`.
fn events(r: &WatchResponse) -> Vec<(i64, String)> {
    r.events
        .iter()
        .filter_map(|e| e.kv.as_ref().map(|kv| (kv.mod_revision, text(&kv.key))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_watch_follows_kv_writes_and_compaction() {
    let cluster = TestCluster::start(1, &[]).await;
    let mut kv = cluster.kv(0);

    tracing::info!("--- phase 1: a live watch sees each put as it is applied");
    let (_tx, mut live) = open_watch(&cluster, 0, prefix("k/", 0))
        .await
        .expect("watch");
    let mut written = Vec::new();
    for i in 0..20 {
        let key = format!("k/{i:02}");
        let rev = rev(&put(&mut kv, &key, "v").await);
        written.push((rev, key));
        let r = next(&mut live).await.expect("event");
        assert_eq!(events(&r), vec![written[i].clone()]);
    }

    tracing::info!("--- phase 2: a watch from a past revision replays history exactly once");
    let (_tx2, mut replay) = open_watch(&cluster, 0, prefix("k/", written[5].0))
        .await
        .expect("watch");
    let mut got = Vec::new();
    while got.len() < 15 {
        got.extend(events(&next(&mut replay).await.expect("replay")));
    }
    assert_eq!(got, written[5..].to_vec());

    tracing::info!("--- phase 3: after Compact, an older start is created then canceled");
    let compact = written[10].0;
    ok(
        "compact",
        kv.compact(CompactionRequest {
            revision: compact,
            physical: false,
        })
        .await,
    );
    let (_tx3, mut old) = open_watch(&cluster, 0, prefix("k/", written[2].0))
        .await
        .expect("created first");
    let canceled = next(&mut old).await.expect("cancel");
    assert!(canceled.canceled);
    assert_eq!(canceled.compact_revision, compact);
    // Close the client streams first: a graceful stop waits for open streams.
    drop((_tx, live, _tx2, replay, _tx3, old));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_on_another_member_after_leader_kill_without_gap_or_duplicate() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let via = cluster.followers(leader)[0];
    let (_tx, mut stream) = open_watch(&cluster, leader, prefix("w/", 0))
        .await
        .expect("watch on the leader");

    tracing::info!(
        leader,
        via,
        "--- phase 1: write through a follower, watch the leader"
    );
    let (kill_tx, mut kill_rx) = mpsc::channel::<()>(1);
    let (done_tx, done_rx) = tokio::sync::watch::channel(None::<i64>);
    let mut kv = cluster.kv(via);
    // Both run in this task (the harness's retry helper is not `Send`).
    let writer = async move {
        let mut acked = Vec::new();
        for i in 0..120 {
            let key = format!("w/{i:03}");
            acked.push((rev(&put_retrying(&mut kv, &key, "v").await), key));
            if i == 40 {
                let _ = kill_tx.send(()).await;
            }
        }
        let _ = done_tx.send(acked.last().map(|(rev, _)| *rev));
        acked
    };
    let watcher = async {
        let mut seen: Vec<(i64, String)> = Vec::new();
        let mut current = leader;
        let mut killed = false;
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT * 2;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "watch did not catch up"
            );
            if !killed && kill_rx.try_recv().is_ok() {
                tracing::info!(leader, "--- phase 2: kill the leader the client watches");
                // A crash breaks the member's connections; `Node::kill` leaves hyper's
                // connection tasks running, so end the watch streams as the crash would.
                cluster.node(leader).server.watch_hub.shutdown();
                cluster.kill(leader).await;
                killed = true;
            }
            let last_acked = *done_rx.borrow();
            if let (Some(last), Some((rev, _))) = (last_acked, seen.last()) {
                if *rev >= last {
                    break;
                }
            }
            let response =
                match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                    Err(_) => continue, // check the kill signal and the writer again
                    Ok(Ok(Some(r))) => r,
                    Ok(Ok(None)) | Ok(Err(_)) => {
                        // The member went away: resume from the next revision elsewhere.
                        let from = seen.last().map_or(0, |(rev, _)| rev + 1);
                        current = cluster
                            .running()
                            .into_iter()
                            .find(|&i| i != current)
                            .expect("a running member");
                        tracing::info!(current, from, "--- phase 3: resume the watch");
                        stream = eventually("watch resumed", SETTLE_WAIT, async || {
                            open_watch(&cluster, current, prefix("w/", from)).await
                        })
                        .await
                        .1;
                        continue;
                    }
                };
            assert!(!response.canceled, "watch canceled: {response:?}");
            seen.extend(events(&response));
        }
        (seen, killed)
    };
    let (acked, (seen, killed)) = tokio::join!(writer, watcher);
    assert!(killed, "the leader was killed mid-stream");

    tracing::info!("--- phase 4: every revision exactly once, in order, acked puts included");
    let first = seen[0].0;
    let revisions: Vec<i64> = seen.iter().map(|(rev, _)| *rev).collect();
    let expected: Vec<i64> = (first..first + seen.len() as i64).collect();
    assert_eq!(revisions, expected, "contiguous, no duplicate");
    for put in &acked {
        assert!(seen.contains(put), "acknowledged put {put:?} was watched");
    }
    drop((_tx, stream));
    cluster.shutdown().await;
}
