//! Watch streams for tests: opening one stream with several watchers, splitting its
//! responses by watcher, and reading it in the background while a test does other things.
//! Must never: wait without a deadline (a reader task ends with its stream, and the members
//! end at the latest with the test).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse as PbWatchResponse};
use keel_sim::watch::{WatchResponse, WatchSpec};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{eventually, to_sim, RPC_TIMEOUT};

/// A watch on every key under `prefix` from `start_revision`.
pub fn prefix_watch(prefix: &str, start_revision: i64) -> WatchCreateRequest {
    let spec = WatchSpec::prefix(prefix.as_bytes(), start_revision);
    WatchCreateRequest {
        key: spec.key,
        range_end: spec.range_end,
        start_revision,
        ..Default::default()
    }
}

/// One stream with a watch per create request; returns the request sender and responses.
pub async fn open_stream(
    client_url: String,
    creates: Vec<WatchCreateRequest>,
) -> (mpsc::Sender<WatchRequest>, Streaming<PbWatchResponse>) {
    let (tx, rx) = mpsc::channel(creates.len() + 16);
    for create in creates {
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .expect("queue create");
    }
    let channel = tonic::transport::Endpoint::from_shared(client_url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let stream = tokio::time::timeout(
        RPC_TIMEOUT,
        WatchClient::new(channel).watch(ReceiverStream::new(rx)),
    )
    .await
    .expect("watch call in time")
    .expect("watch call")
    .into_inner();
    (tx, stream)
}

/// Every watcher's responses on one stream, by watch id; a stream-wide progress response
/// (watch id -1) belongs to every watcher still open.
#[derive(Default)]
pub struct Demux {
    pub by_watcher: BTreeMap<i64, Vec<WatchResponse>>,
    pub open: BTreeMap<i64, bool>,
}

impl Demux {
    pub fn push(&mut self, r: &PbWatchResponse) {
        let sim = to_sim(r);
        if r.watch_id == -1 {
            for (id, open) in &self.open {
                if *open {
                    self.by_watcher.entry(*id).or_default().push(sim.clone());
                }
            }
            return;
        }
        if r.created {
            self.open.insert(r.watch_id, !r.canceled);
        }
        if r.canceled {
            self.open.insert(r.watch_id, false);
        }
        self.by_watcher.entry(r.watch_id).or_default().push(sim);
    }

    /// Whether every watcher is canceled or has seen an event at `final_revision`.
    pub fn done(&self, watchers: usize, final_revision: i64) -> bool {
        self.open.len() == watchers
            && self.open.iter().all(|(id, open)| {
                !*open
                    || self.by_watcher[id]
                        .iter()
                        .any(|r| r.events.iter().any(|e| e.revision >= final_revision))
            })
    }
}

/// What a background reader collected from one watch stream.
#[derive(Default)]
pub struct Collected {
    pub demux: Demux,
    /// Why the stream ended, if it did (it must not, in these scenarios).
    pub ended: Option<String>,
}

/// Reads `stream` into a shared [`Collected`] until it ends (the members are gone at the
/// latest when the test drops its cluster, so the task is bounded by the test).
pub fn spawn_reader(mut stream: Streaming<PbWatchResponse>) -> Arc<Mutex<Collected>> {
    let shared = Arc::new(Mutex::new(Collected::default()));
    let collected = shared.clone();
    tokio::spawn(async move {
        loop {
            let message = stream.message().await;
            // A test that panicked while holding the lock has failed already; keep reading.
            let mut c = collected.lock().unwrap_or_else(|p| p.into_inner());
            match message {
                Ok(Some(r)) => c.demux.push(&r),
                Ok(None) => c.ended = Some("the server ended the stream".into()),
                Err(s) => c.ended = Some(format!("{:?}: {}", s.code(), s.message())),
            }
            if c.ended.is_some() {
                return;
            }
        }
    });
    shared
}

/// Waits until every watcher of `collected` (`watchers` of them) was created and, if
/// `final_revision` is set, delivered it; fails at once if the stream ended.
pub async fn wait_watchers(
    what: &str,
    timeout: Duration,
    collected: &Mutex<Collected>,
    watchers: usize,
    final_revision: Option<i64>,
) {
    eventually(what, timeout, async || {
        let c = collected.lock().expect("collected");
        if let Some(why) = &c.ended {
            panic!("{what}: the watch stream ended: {why}");
        }
        let created = c.demux.open.len() == watchers;
        match final_revision {
            _ if !created => Err(format!("{} of {watchers} created", c.demux.open.len())),
            Some(r) if !c.demux.done(watchers, r) => Err(format!("not all at revision {r}")),
            _ => Ok(()),
        }
    })
    .await;
}
