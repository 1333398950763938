//! A TCP proxy for one directed link between two members, controlled by the test.
//!
//! Owns: one loopback listener that member `from` dials instead of member `to`'s peer URL
//! (through `KEEL_PEER_DIAL_MAP`), and every connection accepted on it. The link can pass
//! traffic, drop it (cut every open connection and refuse new ones by closing them at once)
//! or delay every chunk by a fixed time, in both directions of the connections it carries.
//! Must never: connect anywhere but the loopback address it was given, or outlive its owner
//! (dropping the proxy aborts its accept loop and every connection task).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a link does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    /// Cut open connections; accept new ones only to close them.
    Drop,
    /// Deliver every chunk this long after it was read.
    Delay(Duration),
}

/// Longest wait to connect to the real peer; the member's own connect timeout is 1 s.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Chunks in flight per direction before the reader waits (bounds memory under delay).
const IN_FLIGHT_CHUNKS_MAX: usize = 256;
const CHUNK_BYTES: usize = 64 * 1024;
/// Pause after a failed accept before the next one.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// One directed link's proxy.
pub struct LinkProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<LinkMode>,
    tasks: JoinSet<()>,
}

impl LinkProxy {
    /// Binds `127.0.0.1:0` and forwards every accepted connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> LinkProxy {
        assert!(upstream.ip().is_loopback(), "proxies only reach loopback");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(LinkMode::Pass);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, upstream, mode.subscribe()));
        LinkProxy { addr, mode, tasks }
    }

    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<LinkMode>) {
    // Connection tasks live in this set, so aborting the accept loop ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((downstream, _)) = accepted else {
                    // Out of descriptors or similar: pace the retries instead of spinning.
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    continue;
                };
                if *mode.borrow() == LinkMode::Drop {
                    drop(downstream);
                    continue;
                }
                connections.spawn(carry(downstream, upstream, mode.clone()));
            }
            // Reap finished connection tasks so the set does not grow over a long run.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Carries one connection until either side closes it or the link drops.
async fn carry(downstream: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<LinkMode>) {
    let connect = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream));
    let Ok(Ok(upstream)) = connect.await else {
        return;
    };
    let _ = downstream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (down_read, down_write) = downstream.into_split();
    let (up_read, up_write) = upstream.into_split();
    let (mode_out, mode_back) = (mode.clone(), mode.clone());
    let dropped = async {
        loop {
            if *mode.borrow_and_update() == LinkMode::Drop {
                return;
            }
            if mode.changed().await.is_err() {
                return;
            }
        }
    };
    // Whichever ends first ends the connection: both sockets close when this returns.
    tokio::select! {
        _ = pump(down_read, up_write, mode_out) => {}
        _ = pump(up_read, down_write, mode_back) => {}
        _ = dropped => {}
    }
}

/// Copies one direction, holding each chunk until its delivery time under the link's delay.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<LinkMode>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS_MAX);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = match *mode.borrow() {
                LinkMode::Delay(d) => d,
                _ => Duration::ZERO,
            };
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    // The reader ending closes the channel; the writer then delivers what is left and
    // half-closes, like a TCP FIN passing through.
    tokio::join!(reader, writer);
}
