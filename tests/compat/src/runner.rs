//! Runs one test body against every selected server and compares what each observed.
//!
//! Owns: choosing targets from the environment, the transcript a body records, and the
//! normalisation of server-specific fields (ids, terms, absolute revisions). A body asserts
//! the expected values itself; the transcript comparison then catches any remaining
//! difference between keel and etcd.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use crate::cluster::{Cluster, Server};

/// What a body observed, line by line, already normalised.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    lines: Vec<String>,
}

impl Transcript {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one observation under a label.
    pub fn record(&mut self, label: &str, value: impl Debug) {
        self.lines.push(format!("{label}: {value:?}"));
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The keel binary: `KEEL_BIN`, else `<repo>/target/debug/keel`.
pub fn keel_bin() -> PathBuf {
    match std::env::var_os("KEEL_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/keel"),
    }
}

/// The servers to run each body against, from `COMPAT_TARGETS` (etcd|keel|both, default
/// both), `COMPAT_ETCD=0`, `KEEL_BIN` and `COMPAT_REQUIRE_KEEL`.
pub fn targets() -> Vec<Server> {
    let wanted = std::env::var("COMPAT_TARGETS").unwrap_or_else(|_| "both".to_string());
    let (want_keel, want_etcd) = match wanted.as_str() {
        "both" | "" => (
            true,
            !matches!(std::env::var("COMPAT_ETCD").as_deref(), Ok("0")),
        ),
        "keel" => (true, false),
        "etcd" => (false, true),
        other => panic!("COMPAT_TARGETS must be etcd, keel or both, not {other:?}"),
    };
    let mut servers = Vec::new();
    if want_keel {
        let bin = keel_bin();
        if bin.is_file() {
            servers.push(Server::Keel(bin));
        } else if env_flag("COMPAT_REQUIRE_KEEL") || wanted == "keel" {
            panic!(
                "keel binary {} is missing and keel is required",
                bin.display()
            );
        } else {
            eprintln!(
                "!!!!! SKIPPING KEEL: binary {} not found (set KEEL_BIN, or COMPAT_REQUIRE_KEEL=1 to fail) !!!!!",
                bin.display()
            );
        }
    }
    if want_etcd {
        if on_path("etcd") {
            servers.push(Server::Etcd);
        } else if wanted == "etcd" {
            panic!("COMPAT_TARGETS=etcd but no `etcd` on PATH");
        } else {
            eprintln!("note: no `etcd` on PATH; running keel only, without a reference");
        }
    }
    assert!(
        !servers.is_empty(),
        "no server to test against (no keel binary, no etcd)"
    );
    servers
}

/// Runs `body` once per selected server on a fresh `members`-member cluster, then
/// asserts every server produced the same transcript.
pub async fn for_each_server<B>(test: &str, members: usize, body: B)
where
    B: AsyncFn(&mut Cluster) -> Transcript,
{
    let mut results: Vec<(&'static str, Transcript)> = Vec::new();
    for server in targets() {
        let name = server.name();
        eprintln!("===== {test}: against {name} ({members} member(s)) =====");
        let mut cluster = Cluster::start(server, members).await;
        let transcript = body(&mut cluster).await;
        drop(cluster);
        // Shown by `cargo test -- --nocapture`, and by the harness when a test fails.
        for line in transcript.lines() {
            eprintln!("  [{name}] {line}");
        }
        results.push((name, transcript));
    }
    let Some((first_name, first)) = results.first() else {
        return;
    };
    for (name, other) in &results[1..] {
        if other != first {
            panic!(
                "{test}: {first_name} and {name} disagree\n{}",
                diff(first_name, first, name, other)
            );
        }
    }
}

fn diff(a_name: &str, a: &Transcript, b_name: &str, b: &Transcript) -> String {
    let mut out = String::new();
    let len = a.lines.len().max(b.lines.len());
    for i in 0..len {
        let la = a.lines.get(i).map(String::as_str).unwrap_or("<missing>");
        let lb = b.lines.get(i).map(String::as_str).unwrap_or("<missing>");
        if la == lb {
            out.push_str(&format!("  {la}\n"));
        } else {
            out.push_str(&format!("- {a_name}: {la}\n+ {b_name}: {lb}\n"));
        }
    }
    out
}

/// The gRPC (code, message) of an etcd-client error; code as tonic names it
/// (`InvalidArgument`, `OutOfRange`, ...).
pub fn grpc_error(err: &etcd_client::Error) -> (String, String) {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            (format!("{:?}", status.code()), status.message().to_string())
        }
        other => panic!("expected a gRPC status error, got {other:?}"),
    }
}

/// Asserts `result` failed with exactly this gRPC code and message; returns them.
pub fn expect_grpc_error<T: Debug>(
    result: Result<T, etcd_client::Error>,
    code: &str,
    message: &str,
) -> (String, String) {
    let err = match result {
        Ok(v) => panic!("expected {code} {message:?}, got success: {v:?}"),
        Err(e) => e,
    };
    let got = grpc_error(&err);
    assert_eq!(
        (got.0.as_str(), got.1.as_str()),
        (code, message),
        "wrong error from server"
    );
    got
}

/// A key-value with revisions made relative to `base` (the revision a body started at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create: i64,
    pub modified: i64,
    pub version: i64,
    pub lease: i64,
}

impl Kv {
    pub fn of(kv: &etcd_client::KeyValue, base: i64) -> Kv {
        Kv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create: kv.create_revision() - base,
            modified: kv.mod_revision() - base,
            version: kv.version(),
            lease: kv.lease(),
        }
    }

    pub fn all(kvs: &[etcd_client::KeyValue], base: i64) -> Vec<Kv> {
        kvs.iter().map(|kv| Kv::of(kv, base)).collect()
    }
}

/// Keys of a response, as strings, in response order.
pub fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// The store's current revision, read through a linearizable get.
pub async fn current_revision(client: &mut etcd_client::Client) -> i64 {
    let resp = client
        .get("compat/revision-probe", None)
        .await
        .expect("get current revision");
    resp.header().expect("range header").revision()
}

/// Replaces etcdctl JSON fields that legitimately differ between servers: ids and terms
/// become placeholders, revisions become deltas from `base`.
pub fn normalize_json(value: &mut serde_json::Value, base: i64) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match k.as_str() {
                    "cluster_id" | "member_id" | "raft_term" if !v.is_object() => {
                        *v = Value::String(format!("<{k}>"));
                    }
                    "revision" | "create_revision" | "mod_revision" | "compact_revision" => {
                        if let Some(n) = v.as_i64() {
                            *v = Value::from(n - base);
                        }
                    }
                    _ => normalize_json(v, base),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| normalize_json(v, base)),
        _ => {}
    }
}

/// Decodes etcdctl JSON's base64 `key`/`value` fields in place to plain strings, so a
/// transcript reads as text.
pub fn decode_json_bytes(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if matches!(k.as_str(), "key" | "value") {
                    if let Some(s) = v.as_str() {
                        let bytes = base64_decode(s).expect("etcdctl JSON bytes are base64");
                        *v = Value::String(String::from_utf8_lossy(&bytes).into_owned());
                        continue;
                    }
                }
                decode_json_bytes(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(decode_json_bytes),
        _ => {}
    }
}

/// Standard base64 (with padding), enough for etcdctl's JSON output.
fn base64_decode(input: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in input.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_only_differing_lines() {
        let mut a = Transcript::new();
        let mut b = Transcript::new();
        a.record("same", 1);
        b.record("same", 1);
        a.record("x", "left");
        b.record("x", "right");
        b.record("extra", true);
        assert_ne!(a, b);
        assert_eq!(
            diff("etcd", &a, "keel", &b),
            "  same: 1\n- etcd: x: \"left\"\n+ keel: x: \"right\"\n- etcd: <missing>\n+ keel: extra: true\n"
        );
    }

    #[test]
    fn base64_decodes_etcdctl_keys() {
        assert_eq!(base64_decode("cy9h").unwrap(), b"s/a");
        assert_eq!(base64_decode("Mg==").unwrap(), b"2");
        assert_eq!(base64_decode("djE=").unwrap(), b"v1");
    }

    #[test]
    fn normalize_replaces_ids_and_shifts_revisions() {
        let mut v: serde_json::Value = serde_json::from_str(
            r#"{"header":{"cluster_id":1,"member_id":2,"revision":7,"raft_term":3},
                "kvs":[{"key":"cy9h","create_revision":2,"mod_revision":5,"version":3}]}"#,
        )
        .unwrap();
        normalize_json(&mut v, 1);
        decode_json_bytes(&mut v);
        assert_eq!(
            v.to_string(),
            r#"{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","raft_term":"<raft_term>","revision":6},"kvs":[{"create_revision":1,"key":"s/a","mod_revision":4,"version":3}]}"#
        );
    }
}
