//! The Watch service over real gRPC streams.
//!
//! Until apply publishes into the member's own hub, each test serves `WatchService` on its
//! own loopback port: the member (from the shared harness) provides the `Server` (headers,
//! limits); the hub watches a separate in-memory store that the test writes the way apply
//! does (commit, then `publish`). Every wait has a deadline; nothing sleeps to synchronise.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_create_request::FilterType;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::watch_server::WatchServer;
use keel_api::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use keel_api::mvccpb::event::EventType;
use keel_server::grpc::watch::WatchService;
use keel_server::watch::{WatchConfig, WatchHub};
use keel_storage::Store;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// Longest wait for one expected response.
const RESPONSE_WAIT: Duration = Duration::from_secs(10);
/// How long a test listens to make sure something does NOT arrive.
const QUIET_WAIT: Duration = Duration::from_millis(300);
const CLIENT_DECODE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A member (for `Server`), a hub over its own store, and a Watch server on loopback.
struct Fixture {
    cluster: TestCluster,
    store: Arc<Store>,
    hub: Arc<WatchHub>,
    addr: SocketAddr,
    serving: JoinHandle<()>,
}

impl Fixture {
    async fn start(config: WatchConfig) -> Fixture {
        let cluster = TestCluster::start(1, &[]).await;
        let server = cluster.node(0).server.clone();
        let store = Arc::new(Store::in_memory().expect("store"));
        let hub = WatchHub::new(store.clone(), config).expect("hub");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = WatchServer::new(WatchService {
            server,
            hub: hub.clone(),
        });
        let serving = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "test watch server failed");
            }
        });
        Fixture {
            cluster,
            store,
            hub,
            addr,
            serving,
        }
    }

    /// A new connection (its own HTTP/2 flow-control windows).
    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    async fn open(&self) -> WatchConn {
        WatchConn::open(self.channel().await).await
    }

    /// One txn of puts, committed then published, as apply does. Returns its revision.
    fn put_all(&self, kvs: &[(&str, Vec<u8>)]) -> i64 {
        let mut batch = self.store.write().expect("write");
        let mut txn = batch.begin_txn();
        for (k, v) in kvs {
            txn.put(k.as_bytes(), v, 0).expect("put");
        }
        let outcome = txn.end();
        batch.commit(false).expect("commit");
        self.hub
            .publish(&[(outcome.revision, outcome.events)], false);
        outcome.revision
    }

    fn put(&self, key: &str, value: &str) -> i64 {
        self.put_all(&[(key, value.as_bytes().to_vec())])
    }

    fn delete(&self, key: &str) -> i64 {
        let mut batch = self.store.write().expect("write");
        let mut txn = batch.begin_txn();
        txn.delete_range(key.as_bytes(), b"").expect("delete");
        let outcome = txn.end();
        batch.commit(false).expect("commit");
        self.hub
            .publish(&[(outcome.revision, outcome.events)], false);
        outcome.revision
    }

    async fn shutdown(self) {
        self.serving.abort();
        let _ = self.serving.await;
        self.cluster.shutdown().await;
    }
}

/// One client watch stream.
struct WatchConn {
    requests: Option<mpsc::Sender<WatchRequest>>,
    responses: Streaming<WatchResponse>,
}

impl WatchConn {
    async fn open(channel: Channel) -> WatchConn {
        let (tx, rx) = mpsc::channel(1024);
        let mut client =
            WatchClient::new(channel).max_decoding_message_size(CLIENT_DECODE_BYTES_MAX);
        let responses = tokio::time::timeout(RPC_TIMEOUT, client.watch(ReceiverStream::new(rx)))
            .await
            .expect("watch call timed out")
            .expect("watch call")
            .into_inner();
        WatchConn {
            requests: Some(tx),
            responses,
        }
    }

    async fn send(&self, request: RequestUnion) {
        let tx = self.requests.as_ref().expect("not half-closed");
        tx.send(WatchRequest {
            request_union: Some(request),
        })
        .await
        .expect("request stream open");
    }

    async fn create(&self, create: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(create)).await
    }

    /// Creates a watch and returns its ID from the `created` reply.
    async fn watch(&mut self, create: WatchCreateRequest) -> i64 {
        self.create(create).await;
        let reply = self.next().await;
        assert!(reply.created && !reply.canceled, "created reply: {reply:?}");
        reply.watch_id
    }

    async fn next(&mut self) -> WatchResponse {
        self.try_next(RESPONSE_WAIT)
            .await
            .expect("a watch response before the deadline")
    }

    /// The next response, or `None` if none arrives within `wait`. Panics on stream end.
    async fn try_next(&mut self, wait: Duration) -> Option<WatchResponse> {
        match tokio::time::timeout(wait, self.responses.message()).await {
            Err(_) => None,
            Ok(Ok(Some(r))) => Some(r),
            Ok(Ok(None)) => panic!("watch stream ended"),
            Ok(Err(status)) => panic!("watch stream failed: {status}"),
        }
    }

    /// Reads responses until `count` events arrived; returns (revision, key) per event.
    async fn events(&mut self, count: usize) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        while out.len() < count {
            let r = self.next().await;
            assert!(!r.canceled, "unexpected cancel: {r:?}");
            out.extend(
                r.events
                    .iter()
                    .map(|e| kv_of(e.kv.as_ref()).expect("event kv")),
            );
        }
        assert_eq!(out.len(), count, "more events than expected");
        out
    }
}

fn kv_of(kv: Option<&keel_api::mvccpb::KeyValue>) -> Option<(i64, String)> {
    kv.map(|kv| (kv.mod_revision, text(&kv.key)))
}

fn key(k: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: k.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn prefix(p: &str) -> WatchCreateRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    WatchCreateRequest {
        range_end: end,
        ..key(p)
    }
}

fn watch_config() -> WatchConfig {
    WatchConfig {
        progress_notify_interval: Duration::from_millis(200),
        ..WatchConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stream_creates_cancels_and_delivers_exactly_once() {
    let f = Fixture::start(watch_config()).await;
    let member_id = f.cluster.member_id(0);
    let mut conn = f.open().await;

    tracing::info!("--- phase 1: several creates on one stream, replies in request order");
    conn.create(key("a")).await;
    conn.create(WatchCreateRequest {
        watch_id: 7,
        ..prefix("b")
    })
    .await;
    conn.create(WatchCreateRequest {
        watch_id: 7,
        ..key("c")
    })
    .await;
    conn.create(WatchCreateRequest {
        filters: vec![FilterType::Noput as i32],
        prev_kv: true,
        ..key("a")
    })
    .await;
    conn.create(WatchCreateRequest {
        range_end: b"a".to_vec(),
        ..key("b")
    })
    .await;
    let replies = [
        conn.next().await,
        conn.next().await,
        conn.next().await,
        conn.next().await,
        conn.next().await,
    ];
    let summary: Vec<(i64, bool, bool, &str)> = replies
        .iter()
        .map(|r| (r.watch_id, r.created, r.canceled, r.cancel_reason.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, true, false, ""),
            (7, true, false, ""),
            (
                -1,
                true,
                true,
                "mvcc: duplicate watch ID provided on the WatchStream"
            ),
            (1, true, false, ""),
            (-1, true, true, "mvcc: watcher range is empty"),
        ]
    );
    let header = replies[0].header.as_ref().expect("header");
    assert_eq!(header.member_id, member_id);
    assert_eq!(header.revision, 1, "created at the hub's current revision");

    tracing::info!("--- phase 2: events, each exactly once, in order, header = revision");
    let r_a = f.put("a", "1");
    let r_b = f.put_all(&[("b1", b"x".to_vec()), ("b2", b"y".to_vec())]);
    let r_del = f.delete("a");
    let first = conn.next().await;
    assert_eq!((first.watch_id, rev_of(&first)), (0, r_a));
    let both = conn.next().await;
    assert_eq!(both.watch_id, 7);
    assert_eq!(
        both.events
            .iter()
            .map(|e| kv_of(e.kv.as_ref()))
            .collect::<Vec<_>>(),
        vec![Some((r_b, "b1".into())), Some((r_b, "b2".into()))],
        "one revision, one response"
    );
    // The delete reaches watch 0 and the NOPUT watch 1 (with prev_kv), in some order.
    let mut deletes = [conn.next().await, conn.next().await];
    deletes.sort_by_key(|r| r.watch_id);
    assert_eq!(deletes[0].watch_id, 0);
    assert!(deletes[0].events[0].prev_kv.is_none(), "prev_kv not asked");
    assert_eq!(deletes[1].watch_id, 1);
    let del = &deletes[1].events[0];
    assert_eq!(del.r#type, EventType::Delete as i32);
    assert_eq!(kv_of(del.kv.as_ref()), Some((r_del, "a".into())));
    assert_eq!(
        del.prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"1".to_vec())
    );

    tracing::info!("--- phase 3: cancel; an unknown ID gets no answer (etcd)");
    conn.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 0,
    }))
    .await;
    let canceled = conn.next().await;
    assert!(canceled.canceled && canceled.watch_id == 0 && canceled.compact_revision == 0);
    conn.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 99,
    }))
    .await;
    f.put("a", "2");
    assert!(
        conn.try_next(QUIET_WAIT).await.is_none(),
        "the put reaches neither the canceled watch nor the NOPUT one; 99 is not answered"
    );
    let r_del2 = f.delete("a");
    let after = conn.next().await;
    assert_eq!(after.watch_id, 1);
    assert_eq!(
        after
            .events
            .iter()
            .map(|e| kv_of(e.kv.as_ref()))
            .collect::<Vec<_>>(),
        vec![Some((r_del2, "a".into()))]
    );

    tracing::info!("--- phase 4: progress request answered on watch -1 with the revision");
    conn.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let progress = conn.next().await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty() && !progress.created && !progress.canceled);
    assert_eq!(rev_of(&progress), f.hub.stats().last_published);

    tracing::info!("--- phase 5: disconnect removes every watcher of the stream");
    assert_eq!(f.hub.stats().watchers, 2);
    drop(conn);
    eventually(
        "watchers removed after disconnect",
        SETTLE_WAIT,
        async || match f.hub.stats().watchers {
            0 => Ok(()),
            n => Err(format!("{n} watchers left")),
        },
    )
    .await;
    f.shutdown().await;
}

fn rev_of(r: &WatchResponse) -> i64 {
    r.header.as_ref().expect("header").revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_history_and_cancels_compacted_starts() {
    let f = Fixture::start(watch_config()).await;
    let mut conn = f.open().await;

    tracing::info!("--- phase 1: replay from a past revision, then live, exactly once");
    let revs: Vec<i64> = (0..30).map(|i| f.put(&format!("k{i:02}"), "v")).collect();
    let from = revs[10];
    let id = conn
        .watch(WatchCreateRequest {
            start_revision: from,
            prev_kv: true,
            ..prefix("k")
        })
        .await;
    let replay = conn.events(20).await;
    let expected: Vec<(i64, String)> = (10..30).map(|i| (revs[i], format!("k{i:02}"))).collect();
    assert_eq!(replay, expected);
    let live = f.put("k-live", "v");
    assert_eq!(conn.events(1).await, vec![(live, "k-live".into())]);

    tracing::info!("--- phase 2: compacted start -> created, then canceled with compact_revision");
    f.store.compact(revs[20]).expect("compact");
    conn.create(WatchCreateRequest {
        start_revision: revs[5],
        ..prefix("k")
    })
    .await;
    let created = conn.next().await;
    assert!(created.created && !created.canceled && created.compact_revision == 0);
    let canceled = conn.next().await;
    assert_eq!(canceled.watch_id, created.watch_id);
    assert!(canceled.canceled && !canceled.created);
    assert_eq!(canceled.compact_revision, revs[20]);
    assert!(canceled.events.is_empty());

    tracing::info!("--- phase 3: negative start revision is rejected like etcd");
    conn.create(WatchCreateRequest {
        start_revision: -1,
        ..key("k")
    })
    .await;
    let rejected = conn.next().await;
    assert!(rejected.created && rejected.canceled && rejected.watch_id == -1);
    assert_eq!(
        rejected.cancel_reason,
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert!(conn.try_next(QUIET_WAIT).await.is_none(), "nothing else");
    assert_eq!(id, 0);

    tracing::info!("--- phase 4: hub shutdown ends the stream with etcd's server stopped");
    f.hub.shutdown();
    match tokio::time::timeout(RESPONSE_WAIT, conn.responses.message()).await {
        Ok(Err(status)) => {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert_eq!(status.message(), "etcdserver: server stopped");
        }
        other => panic!("expected the stream to fail with server stopped: {other:?}"),
    }
    eventually(
        "watchers removed at shutdown",
        SETTLE_WAIT,
        async || match f.hub.stats().watchers {
            0 => Ok(()),
            n => Err(format!("{n} watchers left")),
        },
    )
    .await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_consumer_does_not_delay_others_and_loses_nothing() {
    // Small buffers so that the stalled stream is demoted quickly.
    let f = Fixture::start(WatchConfig {
        stream_buffer_messages_max: 8,
        stream_buffer_bytes_max: 256 * 1024,
        ..watch_config()
    })
    .await;
    let mut stalled = f.open().await;
    let mut prompt = f.open().await;
    stalled.watch(prefix("big/")).await;
    prompt.watch(prefix("big/")).await;

    tracing::info!("--- phase 1: the stalled stream reads nothing; the prompt one keeps up");
    let value = vec![b'x'; 64 * 1024];
    let mut written = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let name = format!("big/{i:03}");
        let sent = Instant::now();
        let rev = f.put_all(&[(&name, value.clone())]);
        written.push((rev, name));
        assert_eq!(prompt.events(1).await, vec![written[i].clone()]);
        slowest = slowest.max(sent.elapsed());
    }
    tracing::info!(?slowest, "prompt stream's slowest delivery");
    assert!(
        slowest < Duration::from_secs(2),
        "prompt stream delayed {slowest:?}"
    );
    assert!(
        f.hub.stats().unsynced >= 1,
        "the stalled watcher was demoted: {:?}",
        f.hub.stats()
    );

    tracing::info!("--- phase 2: the stalled stream reads again and gets everything once");
    assert_eq!(stalled.events(written.len()).await, written);
    eventually("stalled watcher rejoins", SETTLE_WAIT, async || {
        match f.hub.stats().unsynced {
            0 => Ok(()),
            n => Err(format!("{n} unsynced")),
        }
    })
    .await;
    let live = f.put("big/live", "v");
    assert_eq!(stalled.events(1).await, vec![(live, "big/live".into())]);
    assert!(stalled.try_next(QUIET_WAIT).await.is_none(), "no duplicate");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_watchers_on_one_stream() {
    let f = Fixture::start(watch_config()).await;
    let mut conn = f.open().await;
    tracing::info!("--- phase 1: 1,000 creates, 1,000 created replies in order");
    for i in 0..1000 {
        conn.create(key(&format!("w/{i:04}"))).await;
    }
    for i in 0..1000 {
        let reply = conn.next().await;
        assert!(reply.created && !reply.canceled);
        assert_eq!(reply.watch_id, i, "created replies in request order");
    }
    assert_eq!(f.hub.stats().watchers, 1000);

    tracing::info!("--- phase 2: one event per watcher, each to exactly its watcher");
    let revs: Vec<i64> = (0..1000)
        .map(|i| f.put(&format!("w/{i:04}"), "v"))
        .collect();
    let mut seen = vec![0; 1000];
    for _ in 0..1000 {
        let r = conn.next().await;
        let i = usize::try_from(r.watch_id).expect("watch id");
        assert_eq!(r.events.len(), 1);
        assert_eq!(
            kv_of(r.events[0].kv.as_ref()),
            Some((revs[i], format!("w/{i:04}")))
        );
        seen[i] += 1;
    }
    assert!(seen.iter().all(|n| *n == 1), "each watcher exactly once");
    assert!(conn.try_next(QUIET_WAIT).await.is_none(), "nothing more");

    tracing::info!("--- phase 3: half-close keeps watches running; disconnect cleans up");
    conn.requests = None;
    let r = f.put("w/0000", "again");
    assert_eq!(conn.events(1).await, vec![(r, "w/0000".into())]);
    drop(conn);
    eventually("watchers removed", SETTLE_WAIT, async || {
        match f.hub.stats().watchers {
            0 => Ok(()),
            n => Err(format!("{n} watchers left")),
        }
    })
    .await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_fragments_and_half_close_end() {
    let f = Fixture::start(watch_config()).await;
    let mut conn = f.open().await;

    tracing::info!("--- phase 1: progress_notify sends the revision to an idle watcher");
    let id = conn
        .watch(WatchCreateRequest {
            progress_notify: true,
            ..key("idle")
        })
        .await;
    let r = f.put("other", "v");
    let notice = conn.next().await;
    assert_eq!(notice.watch_id, id);
    assert!(notice.events.is_empty());
    assert_eq!(rev_of(&notice), r);

    tracing::info!("--- phase 2: a revision above the fragment limit comes in fragments");
    // The member runs with etcd's default 1.5 MiB limit: fragments above ~2 MiB.
    let frag = conn
        .watch(WatchCreateRequest {
            fragment: true,
            ..prefix("huge/")
        })
        .await;
    let mb = vec![b'z'; 1024 * 1024];
    let kvs: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("huge/{i}"), mb.clone())).collect();
    let refs: Vec<(&str, Vec<u8>)> = kvs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let rev = f.put_all(&refs);
    let mut parts = Vec::new();
    loop {
        let r = conn.next().await;
        if r.watch_id != frag {
            continue; // progress notices of the idle watch
        }
        let more = r.fragment;
        parts.push(r);
        if !more {
            break;
        }
        assert!(parts.len() < 10, "too many fragments");
    }
    assert!(parts.len() >= 2, "split into fragments");
    let keys: Vec<_> = parts
        .iter()
        .flat_map(|p| p.events.iter().map(|e| kv_of(e.kv.as_ref())))
        .collect();
    let expected: Vec<_> = (0..4).map(|i| Some((rev, format!("huge/{i}")))).collect();
    assert_eq!(keys, expected);

    tracing::info!("--- phase 3: half-close with no watch left ends the stream cleanly");
    for watch_id in [id, frag] {
        conn.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await;
    }
    conn.requests = None;
    let deadline = Instant::now() + RESPONSE_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.responses.message()).await {
            Err(_) => panic!("stream did not end after half-close"),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(_))) => {} // the cancels, maybe a last progress notice
            Ok(Err(status)) => panic!("stream failed instead of ending: {status}"),
        }
    }
    assert_eq!(f.hub.stats().watchers, 0);
    f.shutdown().await;
}
