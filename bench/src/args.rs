//! Command-line flags shared by every load-generating workload.

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Comma-separated client URLs; connections are spread round-robin over them.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Concurrent clients (each runs one request at a time).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// gRPC connections (HTTP/2 channels) shared by the clients; 0 = one per
    /// client up to 32, at least one per endpoint.
    #[arg(long, default_value_t = 0)]
    pub conns: usize,
    /// Size of the key space.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Measure for this many seconds (the default when --total is not given: 10).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Stop after this many operations (across all clients).
    #[arg(long)]
    pub total: Option<u64>,
    /// Operations per second across all clients; 0 = unlimited.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Write every key of the key space once before measuring.
    #[arg(long)]
    pub prefill: bool,
    /// Who is measured (e.g. `etcd`, `keel`); copied into the JSON line.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Case id joining runs across systems; default derived from workload and flags.
    #[arg(long)]
    pub case: Option<String>,
    /// Key prefix all keys of this run live under.
    #[arg(long, default_value = "bench/")]
    pub prefix: String,
    /// Per-request timeout; a request that takes longer counts as an error.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Server PIDs whose CPU time (utime+stime) is reported for the measured window.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
}

impl CommonArgs {
    pub fn conns_effective(&self) -> usize {
        let wanted = if self.conns == 0 {
            self.clients.clamp(1, 32)
        } else {
            self.conns
        };
        wanted.max(self.endpoints.len()).max(1)
    }

    /// The run length when neither --duration-s nor --total is given.
    pub fn duration_or_default(&self) -> Option<f64> {
        match (self.duration_s, self.total) {
            (None, None) => Some(10.0),
            (d, _) => d,
        }
    }
}
