//! Starting and stopping one keel member.
//!
//! Owns: the data directory layout, bootstrapping Raft from `--initial-cluster`, binding the
//! client and peer listeners, the member's background tasks (publishing its attributes, the
//! periodic durable commit, physical compaction), an orderly shutdown, and the fatal stop:
//! when the store fails a commit or a durable sync (Raft stops on a failed apply, the
//! maintenance task on a failed sync) the member stops serving and stops Raft at once and
//! reports why through [`Node::wait_fatal`] (the binary then exits non-zero).
//! Must never: serve a request before Raft and the store are open, serve a client before the
//! member's attributes are published (etcd's readiness), or carry on after a
//! failed fsync (the pages it lost would be reported durable by the next sync that works).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use keel_api::keelpb::internal_request::Request as Command;
use keel_api::keelpb::MemberAttributes;
use keel_raft::{KeelRaft, MemLog, MemLogDisk, Member, RaftConfig};
use keel_storage::{Backend, BufferedBackend, RedbBackend, Store, COMPACT_STEP_VERSIONS};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;

use crate::apply::{member_attributes, ApplyObserver, Committed, KvApplier};
use crate::cluster::{cluster_id, member_id};
use crate::config::{split_urls, url_to_addr, Config, ConfigError};
use crate::grpc;
use crate::grpc::h2_authority::AuthorityFix;
use crate::grpc::kill_switch::KillSwitch;
use crate::http;
use crate::lease::Leases;
use crate::propose::Proposer;
use crate::server::{Limits, Server};
use crate::transport::StreamListener;
use crate::watch::{WatchConfig, WatchHub};

/// How often everything applied so far is made durable (the Raft log covers the gap).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How long a graceful stop lets open calls finish before it cuts their connections.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Longest wait for a stopped member's store to close.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("storage: {0}")]
    Storage(#[from] keel_storage::StorageError),
    #[error("raft: {0}")]
    Raft(#[from] keel_raft::RaftError),
    #[error("listen on {0}: {1}")]
    Listen(String, std::io::Error),
}

/// Wraps the member's state-machine engine before the store opens it (tests insert a
/// fault-injecting engine here; the binary never sets one).
pub type WrapBackend = Arc<dyn Fn(Arc<dyn Backend>) -> Arc<dyn Backend> + Send + Sync>;

/// Why a member stopped on its own; `None` while it runs (or after an orderly stop).
type FatalReason = watch::Sender<Option<String>>;

/// Sockets a member serves on, bound before it starts (tests bind port 0 and read the
/// addresses back; the binary binds the configured URLs).
pub struct Listeners {
    pub client: Vec<TcpListener>,
    pub peer: Vec<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        Ok(Self {
            client: bind_all(&config.listen_client_urls).await?,
            peer: bind_all(&config.listen_peer_urls).await?,
        })
    }
}

/// What a member serves on.
pub enum Served {
    /// TCP listeners (the binary, cluster tests).
    Tcp(Listeners),
    /// Streams of connections from elsewhere (the simulation's turmoil network).
    Streams {
        client: Vec<StreamListener>,
        peer: Vec<StreamListener>,
    },
}

/// Where a member keeps its state.
pub enum Storage {
    /// redb files in the data directory (the binary, cluster tests); `wrap`, if any, wraps
    /// the state-machine engine (fault-injection tests).
    DataDir { wrap: Option<WrapBackend> },
    /// Handed in by the deterministic simulation: a store over its own backend (whose
    /// durable commits model the disk) and an in-memory Raft log on a simulated disk. No
    /// file, thread or blocking task is used, and a failed sync stops only this member.
    Simulated {
        store: Arc<Store>,
        log_disk: MemLogDisk,
    },
}

async fn bind_all(urls: &str) -> Result<Vec<TcpListener>, StartError> {
    let mut out = Vec::new();
    for url in split_urls(urls) {
        let addr = url_to_addr(&url)?;
        out.push(
            TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Listen(url.clone(), e))?,
        );
    }
    Ok(out)
}

/// A running member.
pub struct Node {
    pub server: Arc<Server>,
    pub client_addrs: Vec<SocketAddr>,
    pub peer_addrs: Vec<SocketAddr>,
    election_timeout: Duration,
    connections: Arc<KillSwitch>,
    shutdown: Arc<watch::Sender<bool>>,
    fatal: Arc<FatalReason>,
    tasks: JoinSet<()>,
}

impl Node {
    /// Opens storage and Raft, bootstraps or rejoins the cluster, and starts serving.
    pub async fn start(config: &Config, listeners: Listeners) -> Result<Node, StartError> {
        Self::start_with(config, listeners, None).await
    }

    /// [`Node::start`] with the state-machine engine passed through `wrap` first.
    pub async fn start_with(
        config: &Config,
        listeners: Listeners,
        wrap: Option<WrapBackend>,
    ) -> Result<Node, StartError> {
        Self::start_on(config, Served::Tcp(listeners), Storage::DataDir { wrap }).await
    }

    /// [`Node::start`] with the transport and storage chosen by the caller (the simulation).
    pub async fn start_on(
        config: &Config,
        served: Served,
        storage: Storage,
    ) -> Result<Node, StartError> {
        config.validate()?;
        let member_dir = config.data_dir().join("member");
        if matches!(storage, Storage::DataDir { .. }) {
            std::fs::create_dir_all(&member_dir)
                .map_err(|e| StartError::DataDir(member_dir.clone(), e))?;
            let old_log = member_dir.join("raft.redb");
            if old_log.exists() {
                // Before the write-ahead log, the Raft log was a redb file; there is no converter.
                return Err(StartError::DataDir(
                    old_log,
                    std::io::Error::other(
                        "Raft log of an older keel format; start from a new data dir",
                    ),
                ));
            }
        }

        let founders = config.initial_members()?;
        let token = &config.initial_cluster_token;
        let ids: Vec<u64> = founders
            .iter()
            .map(|(_, urls)| member_id(urls, token))
            .collect();
        let (_, my_urls) = founders
            .iter()
            .find(|(n, _)| *n == config.name)
            .ok_or_else(|| {
                ConfigError(format!(
                    "--initial-cluster has no entry for this member {:?}",
                    config.name
                ))
            })?;
        let my_id = member_id(my_urls, token);

        let (store, log_disk) = match storage {
            Storage::DataDir { wrap } => {
                let file: Arc<dyn Backend> =
                    Arc::new(RedbBackend::open(member_dir.join("kv.redb"))?);
                // Apply's commits reach redb a few milliseconds later, many at a time.
                let mut engine: Arc<dyn Backend> = Arc::new(BufferedBackend::new(file)?);
                if let Some(wrap) = wrap {
                    engine = wrap(engine);
                }
                (Arc::new(Store::open(engine)?), None)
            }
            Storage::Simulated { store, log_disk } => (store, Some(log_disk)),
        };
        let simulated = log_disk.is_some();
        let raft_config = RaftConfig {
            id: my_id,
            heartbeat_interval_ms: config.heartbeat_interval,
            election_timeout_ms: config.election_timeout,
            log_path: member_dir.join("wal"),
            snapshot_every_entries: config.snapshot_count,
        };
        let leases = Arc::new(Leases::default());
        let watch_hub = WatchHub::new(store.clone(), WatchConfig::default())?;
        let observer = Arc::new(Observers {
            leases: leases.clone(),
            watch_hub: watch_hub.clone(),
        });
        let applier = Arc::new(KvApplier::new(store.clone(), Some(observer)));
        let raft = match &log_disk {
            None => KeelRaft::start(&raft_config, applier).await?,
            Some(disk) => {
                KeelRaft::start_with_log(&raft_config, applier, MemLog::open(disk)).await?
            }
        };
        let server = Arc::new(Server {
            name: config.name.clone(),
            member_id: my_id,
            cluster_id: cluster_id(&ids),
            client_urls: split_urls(&config.advertise_client_urls),
            limits: Limits {
                max_request_bytes: config.max_request_bytes,
                max_txn_ops: config.max_txn_ops,
                min_lease_ttl_s: min_lease_ttl_s(config.election_timeout),
            },
            leases: leases.clone(),
            watch_hub,
            store,
            proposer: Proposer::new(raft.clone(), Duration::from_millis(config.election_timeout)),
            raft: raft.clone(),
        });

        let shutdown = Arc::new(watch::channel(false).0);
        let fatal: Arc<FatalReason> = Arc::new(watch::channel(None).0);
        let connections = Arc::new(KillSwitch::default());
        let mut tasks = JoinSet::new();
        let (client_listeners, peer_addrs) = match served {
            Served::Tcp(listeners) => {
                let peer = serve_all(
                    &mut tasks,
                    tcp_incoming(listeners.peer),
                    grpc::peer_routes(&server),
                    &shutdown,
                    &connections,
                    None,
                );
                (
                    Served::Tcp(Listeners {
                        client: listeners.client,
                        peer: Vec::new(),
                    }),
                    peer,
                )
            }
            Served::Streams { client, peer } => {
                let peer = serve_all(
                    &mut tasks,
                    stream_incoming(peer),
                    grpc::peer_routes(&server),
                    &shutdown,
                    &connections,
                    None,
                );
                (
                    Served::Streams {
                        client,
                        peer: Vec::new(),
                    },
                    peer,
                )
            }
        };
        if config.initial_cluster_state == "new" {
            let members: BTreeMap<u64, Member> = founders
                .iter()
                .map(|(name, urls)| {
                    (
                        member_id(urls, token),
                        Member {
                            name: name.clone(),
                            peer_urls: urls.clone(),
                        },
                    )
                })
                .collect();
            raft.initialize(members).await?;
        }
        let observed = Arc::new(http::Observed::default());
        let client_routes = http::with_http(
            grpc::client_routes(&server).await,
            server.clone(),
            observed.clone(),
        );
        let (published, published_rx) = watch::channel(false);
        let client_addrs = match client_listeners {
            Served::Tcp(listeners) => serve_all(
                &mut tasks,
                tcp_incoming(listeners.client),
                client_routes,
                &shutdown,
                &connections,
                Some(published_rx.clone()),
            ),
            Served::Streams { client, .. } => serve_all(
                &mut tasks,
                stream_incoming(client),
                client_routes,
                &shutdown,
                &connections,
                Some(published_rx.clone()),
            ),
        };
        tasks.spawn(publish_attributes(
            server.clone(),
            published,
            shutdown.subscribe(),
        ));
        if simulated {
            tasks.spawn(maintain_simulated_store(
                server.store.clone(),
                fatal.clone(),
                shutdown.subscribe(),
            ));
        } else {
            tasks.spawn(maintain_store(
                server.store.clone(),
                observed.clone(),
                fatal.clone(),
                shutdown.subscribe(),
            ));
        }
        let (raft, seen) = (server.raft.clone(), observed.clone());
        tasks.spawn(async move {
            raft.each_new_leader(|| {
                seen.leader_changes.fetch_add(1, Ordering::Relaxed);
            })
            .await;
        });
        tasks.spawn(halt_on_fatal(
            server.clone(),
            fatal.clone(),
            shutdown.clone(),
            connections.clone(),
        ));
        let election_timeout = Duration::from_millis(config.election_timeout);
        tasks.spawn(leases.run(server.clone(), election_timeout, shutdown.subscribe()));
        tracing::info!(name = %config.name, member_id = %format!("{my_id:x}"), ?client_addrs, ?peer_addrs, "keel member started");
        Ok(Node {
            server,
            client_addrs,
            peer_addrs,
            election_timeout: Duration::from_millis(config.election_timeout),
            connections,
            shutdown,
            fatal,
            tasks,
        })
    }

    /// Why this member stopped on its own, if it did (see [`Node::wait_fatal`]).
    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.borrow().clone()
    }

    /// Waits until this member stops on its own because of a fatal error (a failed commit or
    /// sync of its store, Raft's storage failing) and returns the reason. By then it serves
    /// nothing and Raft has stopped; `stop` or `kill` still release its files.
    pub async fn wait_fatal(&self) -> String {
        let mut fatal = self.fatal.subscribe();
        let reason = fatal
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|reason| reason.clone());
        match reason {
            Some(reason) => reason,
            // The sender lives in `self`, so it cannot be dropped while we borrow `self`.
            None => std::future::pending().await,
        }
    }

    /// Hands over leadership, stops serving, stops Raft and makes everything applied durable.
    pub async fn stop(mut self) {
        self.server.raft.step_down(self.election_timeout * 2).await;
        // Watch streams never end on their own; end them so the graceful stop can finish.
        self.server.watch_hub.shutdown();
        let _ = self.shutdown.send(true);
        // In-flight calls get a grace period; streams a client keeps open (keepalive,
        // Observe, a waiting Lock) would otherwise hold the stop forever.
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!("cutting connections still open {STOP_GRACE:?} after stop");
            self.connections.kill();
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        self.server.raft.shutdown().await;
        // After a fatal storage error a sync that "works" would promise nothing: skip it.
        if self.fatal_error().is_none() {
            if let Err(e) = self.server.store.sync() {
                tracing::error!(error = %e, "final sync failed");
            }
        }
        tracing::info!(name = %self.server.name, "keel member stopped");
        release(self.server).await;
    }

    /// Simulates a crash for tests: stops serving and Raft without the final sync.
    pub async fn kill(mut self) {
        let _ = self.shutdown.send(true);
        self.server.watch_hub.shutdown();
        self.connections.kill();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.server.raft.shutdown().await;
        release(self.server).await;
    }
}

/// Waits (bounded) until the store is closed, so the data directory can be opened again at
/// once: gRPC connection tasks end in the background and hold the server until they do.
async fn release(server: Arc<Server>) {
    let store = Arc::downgrade(&server.store);
    drop(server);
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    while store.strong_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if store.strong_count() > 0 {
        tracing::warn!("store still in use {RELEASE_WAIT:?} after stopping");
    }
}

/// Each TCP listener's address and its stream of accepted connections.
fn tcp_incoming(
    listeners: Vec<TcpListener>,
) -> Vec<(
    Option<SocketAddr>,
    futures::stream::BoxStream<'static, std::io::Result<tokio::net::TcpStream>>,
)> {
    listeners
        .into_iter()
        .map(|l| {
            let addr = l.local_addr().ok();
            // tonic's own `tcp_nodelay` applies only to listeners it binds itself: without
            // TCP_NODELAY here, a response written in two segments waits for the peer's
            // delayed ACK (~40 ms) under Nagle's algorithm.
            let incoming = TcpListenerStream::new(l).map_ok(|conn| {
                if let Err(e) = conn.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
                conn
            });
            (addr, futures::StreamExt::boxed(incoming))
        })
        .collect()
}

fn stream_incoming(
    listeners: Vec<StreamListener>,
) -> Vec<(
    Option<SocketAddr>,
    futures::stream::BoxStream<'static, std::io::Result<crate::transport::StreamConn>>,
)> {
    listeners
        .into_iter()
        .map(|l| (Some(l.addr), l.incoming))
        .collect()
}

/// Serves `routes` on every listener. With `ready` (client listeners): only once it turns true
/// (until then connections wait in the listen backlog, as etcd's client listeners wait for its
/// publish), and HTTP/1.1 as well as HTTP/2 (for `/health`, `/metrics`).
fn serve_all<I, IO>(
    tasks: &mut JoinSet<()>,
    listeners: Vec<(Option<SocketAddr>, I)>,
    routes: tonic::service::Routes,
    shutdown: &watch::Sender<bool>,
    connections: &Arc<KillSwitch>,
    ready: Option<watch::Receiver<bool>>,
) -> Vec<SocketAddr>
where
    I: Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
{
    let mut addrs = Vec::new();
    for (addr, incoming) in listeners {
        addrs.extend(addr);
        let routes = routes.clone();
        let connections = connections.clone();
        let mut stop = shutdown.subscribe();
        let mut ready = ready.clone();
        tasks.spawn(async move {
            if let Some(ready) = ready.as_mut() {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    published = ready.wait_for(|r| *r) => if published.is_err() { return },
                }
            }
            // etcdctl 3.4 sends URL-shaped :authority headers that h2 would reject.
            let incoming = incoming.map_ok(move |conn| AuthorityFix::new(connections.wrap(conn)));
            // HTTP/1.1 too on client listeners, for `/health` and `/metrics` (etcd serves both).
            let result = tonic::transport::Server::builder()
                .accept_http1(ready.is_some())
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
    }
    addrs
}

/// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds, so a lease
/// cannot expire during the election that follows a leader failure.
fn min_lease_ttl_s(election_timeout_ms: u64) -> i64 {
    (election_timeout_ms * 3 / 2).div_ceil(1000).max(1) as i64
}

/// Fans each committed apply batch out to the parts of the member that follow it.
struct Observers {
    leases: Arc<Leases>,
    watch_hub: Arc<WatchHub>,
}

impl ApplyObserver for Observers {
    fn wants_prev_kv(&self) -> bool {
        self.watch_hub.has_prev_kv_watchers()
    }

    fn committed(&self, batch: &Committed) {
        if !batch.revisions.is_empty() {
            self.watch_hub
                .publish(&batch.revisions, batch.put_prev_kv_omitted);
        }
        self.leases.committed(batch);
    }

    fn restored(&self, current_revision: i64) {
        self.watch_hub.restored(current_revision);
    }
}

/// Like etcd's publish: once a leader exists, replicate this member's name and client URLs
/// so that every member's `MemberList` shows them. Retries until it lands or shutdown; then
/// (or at once when the store already holds them) sets `published`, which opens the client
/// listeners.
async fn publish_attributes(
    server: Arc<Server>,
    published: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let attrs = MemberAttributes {
        id: server.member_id,
        name: server.name.clone(),
        client_urls: server.client_urls.clone(),
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        if member_attributes(&server.store, server.member_id).as_ref() == Some(&attrs) {
            break;
        }
        match server
            .proposer
            .propose(Command::MemberAttributes(attrs.clone()))
            .await
        {
            Ok(_) => break,
            Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    published.send_replace(true);
}

/// [`maintain_store`] for a simulated member: the same periodic compaction and durable
/// commit, inline (a simulated member may not use blocking threads); a failure is fatal for
/// the member as in [`maintain_store`].
async fn maintain_simulated_store(
    store: Arc<Store>,
    fatal: Arc<FatalReason>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let result = (|| -> Result<(), keel_storage::StorageError> {
            while store.compaction_pending()? {
                if store.compact_step(COMPACT_STEP_VERSIONS)? {
                    break;
                }
            }
            store.sync()
        })();
        if let Err(e) = result {
            fatal.send_replace(Some(format!("store maintenance (sync) failed: {e}")));
            return;
        }
    }
}

/// Stops the member when Raft stops on a fatal error or the store fails a sync: stop
/// accepting, cut every connection, end watch streams, stop Raft. Nothing is retried.
async fn halt_on_fatal(
    server: Arc<Server>,
    fatal: Arc<FatalReason>,
    shutdown: Arc<watch::Sender<bool>>,
    connections: Arc<KillSwitch>,
) {
    let mut stop = shutdown.subscribe();
    let mut reported = fatal.subscribe();
    let reason = tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => return,
        reason = reported.wait_for(Option::is_some) => {
            match reason.ok().and_then(|reason| reason.clone()) {
                Some(reason) => reason,
                None => return,
            }
        }
        reason = server.raft.stopped() => match reason {
            Some(reason) => format!("raft stopped: {reason}"),
            None => return,
        },
    };
    tracing::error!(name = %server.name, error = %reason, "fatal storage failure; member stopping");
    fatal.send_replace(Some(reason));
    let _ = shutdown.send(true);
    server.watch_hub.shutdown();
    connections.kill();
    server.raft.shutdown().await;
}

/// Periodic durable commit and physical compaction, off the apply path. A failure is fatal
/// for the member: a failed fsync is not retryable (the next one may succeed without the
/// lost pages ever reaching the disk).
async fn maintain_store(
    store: Arc<Store>,
    observed: Arc<http::Observed>,
    fatal: Arc<FatalReason>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let (store, observed) = (store.clone(), observed.clone());
        let result =
            tokio::task::spawn_blocking(move || -> Result<(), keel_storage::StorageError> {
                while store.compaction_pending()? {
                    keel_raft::crash_point!("compact::before_step");
                    let done = store.compact_step(COMPACT_STEP_VERSIONS)?;
                    keel_raft::crash_point!("compact::after_step");
                    if done {
                        break;
                    }
                }
                let started = std::time::Instant::now();
                store.sync()?;
                observed.backend_commits.observe(started.elapsed());
                Ok(())
            })
            .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                fatal.send_replace(Some(format!("store maintenance (sync) failed: {e}")));
                return;
            }
            Err(e) => tracing::error!(error = %e, "store maintenance task panicked"),
        }
    }
}
