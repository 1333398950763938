//! Command-line flags and `KEEL_*` environment variables, named and defaulted like etcd's.
//!
//! Owns: parsing and validating the member's configuration.
//! Must never: start anything; `node.rs` does that from a validated `Config`.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Parser;

/// keel: a distributed, strongly consistent key-value store speaking etcd's v3 API.
#[derive(Parser, Debug, Clone)]
#[command(name = "keel", version, about)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "KEEL_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: `<name>.keel`).
    #[arg(long, env = "KEEL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to listen on for client traffic.
    #[arg(
        long,
        env = "KEEL_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    /// Comma-separated client URLs of this member to advertise to the cluster.
    #[arg(
        long,
        env = "KEEL_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub advertise_client_urls: String,
    /// Comma-separated URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "KEEL_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    /// Comma-separated peer URLs of this member to advertise to the cluster.
    #[arg(
        long,
        env = "KEEL_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: `name=peer-url,...`
    /// (default: `<name>=<initial-advertise-peer-urls>`).
    #[arg(long, env = "KEEL_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: `new` or `existing`.
    #[arg(long, env = "KEEL_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token, mixed into member and cluster ids.
    #[arg(
        long,
        env = "KEEL_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "KEEL_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "KEEL_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "KEEL_MAX_REQUEST_BYTES", default_value_t = 1572864)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "KEEL_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Number of applied entries after which a snapshot is taken and the log behind it purged.
    #[arg(long, env = "KEEL_SNAPSHOT_COUNT", default_value_t = 100000)]
    pub snapshot_count: u64,
    /// Log format: `text` or `json`.
    #[arg(long, env = "KEEL_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Splits a comma-separated URL list, trimming blanks.
pub fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// Resolves an `http://host:port` URL to a socket address to bind or dial.
pub fn url_to_addr(url: &str) -> Result<SocketAddr, ConfigError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        ConfigError(format!(
            "{url}: only http:// URLs are supported (TLS comes later)"
        ))
    })?;
    let hostport = rest.trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .map_err(|e| ConfigError(format!("{url}: {e}")))?
        .next()
        .ok_or_else(|| ConfigError(format!("{url}: resolves to no address")))
}

/// Environment variable of the peer dial map, a fault-injection seam for process-level tests.
pub const PEER_DIAL_MAP_ENV: &str = "KEEL_PEER_DIAL_MAP";

/// Parses `KEEL_PEER_DIAL_MAP` (see [`parse_peer_dial_map`]); empty when it is unset.
pub fn peer_dial_map_from_env() -> Result<HashMap<String, String>, ConfigError> {
    match std::env::var(PEER_DIAL_MAP_ENV) {
        Ok(spec) => parse_peer_dial_map(&spec),
        Err(std::env::VarError::NotPresent) => Ok(HashMap::new()),
        Err(e) => Err(ConfigError(format!("{PEER_DIAL_MAP_ENV}: {e}"))),
    }
}

/// Parses `peer-url=host:port,...`: dial `host:port` whenever this member contacts the peer
/// whose URL is `peer-url`. Tests use it to send each link between two members through a
/// proxy they control (to drop or delay it); production leaves it unset.
pub fn parse_peer_dial_map(spec: &str) -> Result<HashMap<String, String>, ConfigError> {
    let mut map = HashMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (url, addr) = part.split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "{PEER_DIAL_MAP_ENV} entry {part:?} is not peer-url=host:port"
            ))
        })?;
        url_to_addr(url)?;
        addr.parse::<SocketAddr>().map_err(|e| {
            ConfigError(format!("{PEER_DIAL_MAP_ENV} entry {part:?}: {addr:?}: {e}"))
        })?;
        let url = url.trim_end_matches('/').to_string();
        if map.insert(url.clone(), addr.to_string()).is_some() {
            return Err(ConfigError(format!(
                "{PEER_DIAL_MAP_ENV} names {url} twice"
            )));
        }
    }
    Ok(map)
}

impl Config {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.keel", self.name)))
    }

    /// `(name, peer URLs)` of each founding member, in the order given.
    pub fn initial_members(&self) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let spec = match &self.initial_cluster {
            Some(s) => s.clone(),
            None => format!("{}={}", self.name, self.initial_advertise_peer_urls),
        };
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) = part.split_once('=').ok_or_else(|| {
                ConfigError(format!("--initial-cluster entry {part:?} is not name=url"))
            })?;
            url_to_addr(url)?;
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        if !members.iter().any(|(n, _)| *n == self.name) {
            return Err(ConfigError(format!(
                "--initial-cluster has no entry for this member {:?}",
                self.name
            )));
        }
        Ok(members)
    }

    /// Checks everything that can be checked before binding sockets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.initial_cluster_state.as_str(), "new" | "existing") {
            return Err(ConfigError(format!(
                "--initial-cluster-state must be new or existing, not {:?}",
                self.initial_cluster_state
            )));
        }
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError(format!(
                "--election-timeout ({} ms) must be at least 5 x --heartbeat-interval ({} ms)",
                self.election_timeout, self.heartbeat_interval
            )));
        }
        if self.max_request_bytes == 0 || self.max_txn_ops == 0 {
            return Err(ConfigError(
                "--max-request-bytes and --max-txn-ops must be positive".into(),
            ));
        }
        for url in split_urls(&self.listen_client_urls)
            .iter()
            .chain(split_urls(&self.listen_peer_urls).iter())
        {
            url_to_addr(url)?;
        }
        self.initial_members()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["keel"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("flags parse")
    }

    #[test]
    fn defaults_are_a_single_local_member() {
        let c = parse(&[]);
        assert_eq!(c.data_dir(), PathBuf::from("default.keel"));
        assert_eq!(
            c.initial_members().expect("members"),
            vec![("default".into(), vec!["http://127.0.0.1:2380".into()])]
        );
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn etcd_style_cluster_flags_parse() {
        let c = parse(&[
            "--name",
            "m1",
            "--initial-cluster",
            "m0=http://127.0.0.1:1,m1=http://127.0.0.1:2",
            "--initial-cluster-state",
            "existing",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ]);
        c.validate().expect("valid");
        let members = c.initial_members().expect("members");
        assert_eq!(members.len(), 2);
        assert_eq!(members[1], ("m1".into(), vec!["http://127.0.0.1:2".into()]));
    }

    #[test]
    fn bad_flags_are_rejected_with_a_reason() {
        let c = parse(&["--initial-cluster-state", "maybe"]);
        assert!(c.validate().unwrap_err().0.contains("new or existing"));
        let c = parse(&["--initial-cluster", "other=http://127.0.0.1:1"]);
        assert!(c
            .validate()
            .unwrap_err()
            .0
            .contains("no entry for this member"));
        let c = parse(&["--listen-client-urls", "https://127.0.0.1:1"]);
        assert!(c.validate().unwrap_err().0.contains("only http://"));
        let c = parse(&["--election-timeout", "100"]);
        assert!(c.validate().unwrap_err().0.contains("at least 5"));
    }

    #[test]
    fn peer_dial_map_parses_and_rejects_bad_entries() {
        let map = parse_peer_dial_map(
            " http://127.0.0.1:2380/=127.0.0.1:4000 , http://127.0.0.1:2381=127.0.0.1:4001,",
        )
        .expect("valid map");
        assert_eq!(map.len(), 2);
        assert_eq!(map["http://127.0.0.1:2380"], "127.0.0.1:4000");
        assert_eq!(map["http://127.0.0.1:2381"], "127.0.0.1:4001");
        assert!(parse_peer_dial_map("").expect("empty").is_empty());
        let err = |spec: &str| parse_peer_dial_map(spec).unwrap_err().0;
        assert!(err("http://127.0.0.1:1").contains("not peer-url=host:port"));
        assert!(err("https://127.0.0.1:1=127.0.0.1:2").contains("only http://"));
        assert!(err("http://127.0.0.1:1=localhost").contains("\"localhost\""));
        assert!(
            err("http://127.0.0.1:1=127.0.0.1:2,http://127.0.0.1:1/=127.0.0.1:3").contains("twice")
        );
    }
}
