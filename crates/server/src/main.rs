//! The `keel` binary: parse etcd-style flags, start one member, stop cleanly on SIGTERM/SIGINT,
//! exit non-zero when the member stops on a fatal error (a failed commit or fsync).

use clap::Parser;
use keel_server::{Config, Listeners, Node};
use tokio::signal::unix::{signal, SignalKind};

/// jemalloc instead of glibc's malloc: less CPU per request under load at about the same RSS
/// (measurements: docs/architecture.md, the Allocator bullet).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    // No LIFO slot: a woken task queues behind the tasks already runnable instead of running
    // next, so when one apply answers many requests (or one revision reaches many watch
    // streams) every stream hands its frame to HTTP/2 before the connection task runs, and
    // that task writes them together instead of one send per frame. Measured in
    // docs/architecture.md ("Scheduler"); needs tokio_unstable (.cargo/config.toml).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().disable_lifo_slot();
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> std::process::ExitCode {
    let config = Config::parse();
    init_logging(&config.log_format);
    // Crash points named by FAILPOINTS; nothing unless built with the `failpoints` feature.
    #[allow(clippy::let_unit_value)]
    let _failpoints = keel_raft::failpoints::setup();
    let node = match start(&config).await {
        Ok(node) => node,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("keel: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("keel: cannot install signal handlers");
        return std::process::ExitCode::FAILURE;
    };
    let fatal = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: stopping"); None }
        _ = int.recv() => { tracing::info!("SIGINT: stopping"); None }
        reason = node.wait_fatal() => Some(reason),
    };
    match fatal {
        None => {
            node.stop().await;
            std::process::ExitCode::SUCCESS
        }
        Some(reason) => {
            // The member already stopped serving; release it without the final sync (the
            // store just failed one) and exit non-zero so a supervisor notices.
            eprintln!("keel: stopped after a fatal error: {reason}");
            node.kill().await;
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start(config: &Config) -> Result<Node, keel_server::StartError> {
    config.validate()?;
    // Fault-injection seam for process-level tests; empty (a no-op) unless the env is set.
    let dial_map = keel_server::config::peer_dial_map_from_env()?;
    if !dial_map.is_empty() {
        tracing::warn!(
            ?dial_map,
            "peer dial map active: peers are dialled at these addresses"
        );
        // This is the only place that installs the map, once per process.
        let _ = keel_raft::set_peer_dial_map(dial_map);
    }
    let listeners = Listeners::bind(config).await?;
    Node::start(config, listeners).await
}
