//! The closed-loop client driver every workload runs on: connections, the run
//! budget (duration, total ops, rate), per-request timeouts and error accounting.
//!
//! Every loop here is bounded by the budget, and every request by a timeout, so a
//! run against a dead or stuck endpoint ends with errors counted, never a hang.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::args::CommonArgs;
use crate::pacer::Pacer;
use crate::stats::Recorder;

/// After a failed request a client pauses this long, so a refused connection
/// does not turn into a busy loop that starves the runtime.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// One gRPC channel per connection, each pinned to one endpoint round-robin.
#[derive(Clone)]
pub struct Conns {
    channels: Vec<Channel>,
}

impl Conns {
    /// Channels connect lazily: an unreachable endpoint shows up as request
    /// errors (bounded by the connect timeout), not as a failure to start.
    pub fn new(endpoints: &[String], conns: usize, timeout: Duration) -> Result<Self, String> {
        if endpoints.is_empty() {
            return Err("no endpoints given".into());
        }
        let mut channels = Vec::with_capacity(conns);
        for i in 0..conns.max(1) {
            let url = normalize_url(&endpoints[i % endpoints.len()]);
            let ep = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("bad endpoint {url}: {e}"))?
                .connect_timeout(timeout.min(Duration::from_secs(3)))
                .tcp_nodelay(true);
            channels.push(ep.connect_lazy());
        }
        Ok(Self { channels })
    }

    /// The channel client `i` uses.
    pub fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }
}

pub fn normalize_url(s: &str) -> String {
    let s = s.trim();
    if s.starts_with("http://") || s.starts_with("https://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// A failed operation: its message, and whether the server said UNIMPLEMENTED.
#[derive(Debug, Clone)]
pub struct OpError {
    pub message: String,
    pub unsupported: bool,
}

impl From<tonic::Status> for OpError {
    fn from(s: tonic::Status) -> Self {
        Self {
            unsupported: s.code() == tonic::Code::Unimplemented,
            message: format!("{:?}: {}", s.code(), s.message()),
        }
    }
}

impl OpError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unsupported: false,
        }
    }
}

/// Awaits one request with a timeout.
pub async fn call<T, F>(timeout: Duration, fut: F) -> Result<T, OpError>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(OpError::new(format!("timeout after {timeout:?}"))),
    }
}

/// How much work a run may do: until a deadline, a total count, at a rate,
/// or until stopped (the server answered UNIMPLEMENTED).
pub struct Budget {
    pub start: Instant,
    deadline: Option<Instant>,
    total: Option<u64>,
    issued: AtomicU64,
    pacer: Option<Pacer>,
    stop: AtomicBool,
    pub timeout: Duration,
}

impl Budget {
    pub fn new(duration_s: Option<f64>, total: Option<u64>, rate: f64, timeout: Duration) -> Self {
        let start = Instant::now();
        Self {
            start,
            deadline: duration_s.map(|d| start + Duration::from_secs_f64(d.max(0.0))),
            total,
            issued: AtomicU64::new(0),
            pacer: Pacer::new(rate),
            stop: AtomicBool::new(false),
            timeout,
        }
    }

    pub fn from_args(args: &CommonArgs) -> Self {
        Self::new(
            args.duration_or_default(),
            args.total,
            args.rate,
            Duration::from_millis(args.timeout_ms),
        )
    }

    /// Admits the next operation, waiting for its rate slot; false ends the loop.
    pub async fn next(&self) -> bool {
        if self.stopped() {
            return false;
        }
        if let Some(total) = self.total {
            if self.issued.fetch_add(1, Ordering::Relaxed) >= total {
                return false;
            }
        }
        if let Some(p) = &self.pacer {
            if !p.wait(self.start, self.deadline).await {
                return false;
            }
        }
        !self.stopped()
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Records one operation that started at `t0`. On error: counts it, stops
    /// the whole run if the server does not implement the call, and backs off.
    pub async fn finish(&self, rec: &mut Recorder, t0: Instant, result: Result<(), OpError>) {
        match result {
            Ok(()) => rec.record(t0.elapsed()),
            Err(e) => {
                rec.record_error(e.message, e.unsupported);
                if e.unsupported {
                    self.stop();
                }
                self.pause(ERROR_BACKOFF).await;
            }
        }
    }

    /// Sleeps, but not past the deadline.
    pub async fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let until = self.deadline.map_or(until, |dl| until.min(dl));
        tokio::time::sleep_until(until).await;
    }
}

/// Runs `clients` copies of `client` concurrently and merges their recorders.
/// A client task that panics is counted as one error, not a crashed run.
pub async fn drive<F, Fut>(clients: usize, client: F) -> Recorder
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Recorder> + Send + 'static,
{
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|i| tokio::spawn(client(i)))
        .collect();
    let mut all = Recorder::new();
    for t in tasks {
        match t.await {
            Ok(rec) => all.merge(&rec),
            Err(e) => all.record_error(format!("client task failed: {e}"), false),
        }
    }
    all
}

/// Small fast PRNG (SplitMix64) for key choice; statistical quality is plenty here.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// `<prefix><space>/<index, zero-padded>`: fixed width so keys sort numerically.
pub fn key(prefix: &str, space: &str, index: u64) -> Vec<u8> {
    format!("{prefix}{space}/{index:010}").into_bytes()
}

pub use keel_api::prefix_end;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn budget_total_bounds_operations_across_clients() {
        let budget = Arc::new(Budget::new(None, Some(25), 0.0, Duration::from_secs(1)));
        let rec = drive(4, |_| {
            let b = budget.clone();
            async move {
                let mut rec = Recorder::new();
                while b.next().await {
                    rec.record(Duration::from_millis(1));
                }
                rec
            }
        })
        .await;
        assert_eq!(rec.ops(), 25);
    }

    #[tokio::test(start_paused = true)]
    async fn unsupported_error_stops_every_client() {
        let budget = Arc::new(Budget::new(Some(3600.0), None, 0.0, Duration::from_secs(1)));
        let rec = drive(8, |_| {
            let b = budget.clone();
            async move {
                let mut rec = Recorder::new();
                while b.next().await {
                    let t0 = Instant::now();
                    let err = tonic::Status::unimplemented("no lease");
                    b.finish(&mut rec, t0, Err(err.into())).await;
                }
                rec
            }
        })
        .await;
        assert!(rec.unsupported);
        assert!(rec.errors >= 1 && rec.errors <= 8, "errors {}", rec.errors);
    }

    #[test]
    fn keys_are_fixed_width() {
        assert_eq!(key("b/", "kv", 42), b"b/kv/0000000042".to_vec());
    }
}
