//! Coordination: leases, watches, locks and elections through etcdctl 3.4 and etcd-client,
//! each body run against keel and etcd and their transcripts compared.
//!
//! Long-running etcdctl commands (`watch`, `lock`, `elect`, `lease keep-alive`) run as child
//! processes of this test: their output is read line by line under deadlines, and they are
//! stopped by their own PID (SIGTERM where etcdctl must clean up, then SIGKILL).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use etcd_client::{
    Client, EventType, GetOptions, LeaderKey, LeaseTimeToLiveOptions, LockOptions, ProclaimOptions,
    ResignOptions, WatchOptions, WatchResponse, WatchStream,
};
use keel_compat::cluster::eventually;
use keel_compat::etcdctl::ctl;
use keel_compat::{current_revision, for_each_server, grpc_error, Cluster, Transcript};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// Longest wait for one expected line of output or one expected event.
const LINE_WAIT: Duration = Duration::from_secs(10);
/// Silence after which a readiness probe is written again.
const PROBE_SILENCE: Duration = Duration::from_millis(500);
/// Probes written before a watch is declared broken.
const PROBES_MAX: usize = 20;
/// Longest wait for a child process to exit after it was signalled (or finished on its own).
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for a polled condition.
const SETTLE_WAIT: Duration = Duration::from_secs(15);

// ---- long-running etcdctl --------------------------------------------------------------------

/// One etcdctl child process whose stdout is read line by line.
struct Background {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    args: Vec<String>,
}

fn forward_lines(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Background {
    /// Starts `etcdctl --endpoints=<live members> <args>` with stdin kept open.
    fn start(cluster: &Cluster, args: &[&str]) -> Background {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints={}",
                cluster.live_endpoints().join(",")
            ))
            .arg("--dial-timeout=3s")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Also killed (by its PID) if the test panics and drops it.
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcdctl");
        let lines = forward_lines(child.stdout.take().expect("stdout"));
        let stderr = forward_lines(child.stderr.take().expect("stderr"));
        Background {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The next stdout line, or `None` if none arrives within `wait` (or stdout ended).
    async fn line_within(&mut self, wait: Duration) -> Option<String> {
        tokio::time::timeout(wait, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next `n` stdout lines; panics if they do not arrive within `LINE_WAIT` each.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            match self.line_within(LINE_WAIT).await {
                Some(line) => out.push(line),
                None => {
                    let stderr = self.drain_stderr();
                    panic!(
                        "etcdctl {:?}: expected {n} lines, got {out:?} within {LINE_WAIT:?}; stderr: {stderr:?}",
                        self.args
                    )
                }
            }
        }
        out
    }

    /// Asserts nothing more was printed so far.
    fn assert_quiet(&mut self) {
        if let Ok(line) = self.lines.try_recv() {
            panic!("etcdctl {:?} printed {line:?} too early", self.args);
        }
    }

    fn drain_stderr(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.stderr.try_recv() {
            out.push(line);
        }
        out
    }

    async fn send_stdin(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    }

    /// Waits (bounded) for the process to exit by itself; returns its exit code.
    async fn exit_code(&mut self) -> i32 {
        match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait etcdctl").code().unwrap_or(-1),
            Err(_) => panic!("etcdctl {:?} did not exit in {EXIT_WAIT:?}", self.args),
        }
    }

    /// SIGTERM by PID (etcdctl resigns / unlocks on it), then waits for the exit, escalating
    /// to SIGKILL at the deadline. Returns the exit code (-1 when killed by a signal).
    async fn terminate(mut self) -> i32 {
        if let Some(pid) = self.child.id() {
            let status = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -TERM {pid}");
        }
        match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait etcdctl").code().unwrap_or(-1),
            Err(_) => {
                self.child.start_kill().expect("SIGKILL etcdctl");
                let _ = tokio::time::timeout(EXIT_WAIT, self.child.wait()).await;
                panic!("etcdctl {:?} ignored SIGTERM for {EXIT_WAIT:?}", self.args);
            }
        }
    }

    /// SIGKILL by PID and reap.
    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL etcdctl");
        let _ = tokio::time::timeout(EXIT_WAIT, self.child.wait())
            .await
            .expect("etcdctl exits on SIGKILL");
    }
}

/// Makes sure a freshly started etcdctl watch is registered: puts `probe_key`=`probe` until
/// the watch prints that event (each probe after `PROBE_SILENCE` without output), and
/// consumes the probe events' lines (`lines_per_event` each). Later output is the test's own.
async fn await_watch_ready(
    w: &mut Background,
    c: &mut Client,
    probe_key: &str,
    lines_per_event: usize,
) {
    for _ in 0..PROBES_MAX {
        c.put(probe_key, "probe", None).await.expect("probe put");
        if let Some(first) = w.line_within(PROBE_SILENCE).await {
            assert_eq!(first, "PUT", "a probe event");
            w.lines(lines_per_event - 1).await;
            // A slow earlier probe may still arrive; swallow any within one silence.
            while let Some(line) = w.line_within(PROBE_SILENCE).await {
                assert_eq!(line, "PUT", "only probe events before the test's own");
                w.lines(lines_per_event - 1).await;
            }
            return;
        }
    }
    panic!("etcdctl {:?} never printed a probe event", w.args);
}

// ---- normalisation --------------------------------------------------------------------------

/// Replaces lease ids (printed in hex by etcdctl and inside lock/election keys) with stable
/// labels in order of first appearance, so keel's and etcd's transcripts compare.
#[derive(Default)]
struct LeaseIds {
    labels: BTreeMap<String, String>,
    count: usize,
}

impl LeaseIds {
    /// Labels `id`, both as etcdctl prints it (`%016x`) and as keys embed it (`%x`).
    fn learn(&mut self, id: i64) -> String {
        let hex = format!("{id:x}");
        if let Some(label) = self.labels.get(&hex) {
            return label.clone();
        }
        self.count += 1;
        let label = format!("<lease{}>", self.count);
        self.labels.insert(hex, label.clone());
        self.labels.insert(format!("{id:016x}"), label.clone());
        label
    }

    fn learn_hex(&mut self, hex: &str) -> String {
        self.learn(i64::from_str_radix(hex, 16).expect("hex lease id"))
    }

    /// `text` with every known id (longest first) replaced by its label.
    fn apply(&self, text: &str) -> String {
        let mut ids: Vec<(&String, &String)> = self.labels.iter().collect();
        ids.sort_by_key(|(hex, _)| std::cmp::Reverse(hex.len()));
        let mut out = text.to_string();
        for (hex, label) in ids {
            out = out.replace(hex.as_str(), label);
        }
        out
    }

    fn lines(&self, lines: &[String]) -> Vec<String> {
        lines.iter().map(|l| self.apply(l)).collect()
    }
}

/// The lease id in `<name>/<hex>`.
fn key_lease_hex(key: &str) -> &str {
    key.rsplit('/').next().expect("key has a /")
}

/// Polls `probe` until it returns `Some`, under `SETTLE_WAIT`.
async fn poll<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    eventually(what, SETTLE_WAIT, async || {
        probe().await.ok_or_else(|| "not yet".to_string())
    })
    .await
}

async fn keys_under(c: &mut Client, prefix: &str) -> Vec<String> {
    let r = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get prefix");
    keel_compat::keys(r.kvs())
}

/// Waits until exactly `n` keys exist under `prefix`; returns them.
async fn await_key_count(c: &mut Client, prefix: &str, n: usize) -> Vec<String> {
    poll(&format!("{n} keys under {prefix}"), async || {
        let keys = keys_under(c, prefix).await;
        (keys.len() == n).then_some(keys)
    })
    .await
}

// ---- leases ---------------------------------------------------------------------------------

/// `lease grant` output: "lease <hex> granted with TTL(<n>s)".
fn granted_hex(out: &str) -> String {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"lease"), "{out:?}");
    words[1].to_string()
}

/// Sorts the key list of `lease timetolive --keys` output: `attached keys([k1 k2 ...])`.
fn sorted_attached_keys(out: &str) -> String {
    let start = out.find("attached keys([").expect("attached keys") + "attached keys([".len();
    let end = start + out[start..].find("])").expect("])");
    let mut keys: Vec<&str> = out[start..end].split(' ').collect();
    keys.sort_unstable();
    format!("{}{}{}", &out[..start], keys.join(" "), &out[end..])
}

/// Replaces the remaining seconds in `lease timetolive` output with a placeholder after
/// checking it lies in `range`.
fn remaining(out: &str, range: std::ops::RangeInclusive<i64>) -> String {
    let start = out.find("remaining(").expect("remaining(") + "remaining(".len();
    let end = start + out[start..].find("s)").expect("s)");
    let secs: i64 = out[start..end].parse().expect("seconds");
    assert!(range.contains(&secs), "remaining {secs} s not in {range:?}");
    format!("{}<n>{}", &out[..start], &out[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_grant_timetolive_keepalive_list_revoke() {
    for_each_server("etcdctl_lease", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut ids = LeaseIds::default();
        let mut c = cluster.client().await;

        eprintln!("--- phase 1: grant, attach keys, timetolive with and without keys");
        let out = ctl(cluster, &["lease", "grant", "60"]).await;
        let hex = granted_hex(out.ok());
        ids.learn_hex(&hex);
        t.record("grant", ids.apply(out.ok()));
        for (k, v) in [("l/a", "1"), ("l/b", "2")] {
            let out = ctl(cluster, &["put", &format!("--lease={hex}"), k, v]).await;
            assert_eq!(out.ok(), "OK\n");
        }
        let out = ctl(cluster, &["lease", "timetolive", &hex]).await;
        t.record("timetolive", ids.apply(&remaining(out.ok(), 55..=60)));
        let out = ctl(cluster, &["lease", "timetolive", "--keys", &hex]).await;
        // etcd lists a lease's keys from a Go map, in no fixed order: compare them sorted.
        let line = sorted_attached_keys(&ids.apply(&remaining(out.ok(), 55..=60)));
        assert!(line.contains("attached keys([l/a l/b])"), "{line}");
        t.record("timetolive --keys", line);
        let r = c.get("l/a", None).await.expect("get");
        assert_eq!(r.kvs()[0].lease(), i64::from_str_radix(&hex, 16).unwrap());

        eprintln!("--- phase 2: list, keep-alive --once, a running keep-alive");
        let out = ctl(cluster, &["lease", "list"]).await;
        t.record("list", ids.apply(out.ok()));
        let out = ctl(cluster, &["lease", "keep-alive", "--once", &hex]).await;
        t.record("keep-alive --once", ids.apply(out.ok()));
        let mut keeper = Background::start(cluster, &["lease", "keep-alive", &hex]);
        let first = keeper.lines(1).await;
        t.record("keep-alive", ids.lines(&first));
        keeper.kill().await;

        eprintln!("--- phase 3: revoke deletes the keys; the lease is gone");
        let out = ctl(cluster, &["lease", "revoke", &hex]).await;
        t.record("revoke", ids.apply(out.ok()));
        assert_eq!(ctl(cluster, &["get", "--prefix", "l/"]).await.ok(), "");
        let out = ctl(cluster, &["lease", "timetolive", &hex]).await;
        t.record("timetolive revoked", ids.apply(out.ok()));
        let out = ctl(cluster, &["lease", "revoke", &hex]).await;
        t.record("revoke again", (out.code, ids.apply(out.error_line())));
        let out = ctl(cluster, &["lease", "keep-alive", "--once", &hex]).await;
        t.record(
            "keep-alive --once revoked",
            (out.code, ids.apply(out.error_line())),
        );
        let out = ctl(cluster, &["put", "--lease=1234abcd", "l/x", "v"]).await;
        t.record(
            "put unknown lease",
            (out.code, out.error_line().to_string()),
        );
        assert_eq!(
            out.error_line(),
            "Error: etcdserver: requested lease not found"
        );

        eprintln!("--- phase 4: a short lease expires with its key");
        let out = ctl(cluster, &["lease", "grant", "2"]).await;
        let short = granted_hex(out.ok());
        ids.learn_hex(&short);
        t.record("grant short", ids.apply(out.ok()));
        ctl(
            cluster,
            &["put", &format!("--lease={short}"), "l/short", "v"],
        )
        .await
        .ok();
        poll("the short lease's key to expire", async || {
            keys_under(&mut c, "l/short").await.is_empty().then_some(())
        })
        .await;
        let out = ctl(cluster, &["lease", "timetolive", &short]).await;
        t.record("timetolive expired", ids.apply(out.ok()));
        let out = ctl(cluster, &["lease", "list"]).await;
        t.record("list empty", out.ok().to_string());
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_lease_keepalive_and_time_to_live() {
    for_each_server("client_lease", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut ids = LeaseIds::default();
        let mut c = cluster.client().await;

        let granted = c.lease_grant(10, None).await.expect("grant");
        let id = granted.id();
        assert_eq!(granted.ttl(), 10);
        t.record("grant", (ids.learn(id), granted.ttl()));
        c.put(
            "cl/k",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(id)),
        )
        .await
        .expect("put with lease");

        let (mut keeper, mut stream) = c.lease_keep_alive(id).await.expect("keepalive");
        for round in 0..3 {
            keeper.keep_alive().await.expect("send keepalive");
            let resp = tokio::time::timeout(LINE_WAIT, stream.message())
                .await
                .expect("keepalive reply in time")
                .expect("keepalive reply")
                .expect("stream open");
            assert_eq!((resp.id(), resp.ttl()), (id, 10));
            t.record(
                &format!("keepalive {round}"),
                (ids.learn(resp.id()), resp.ttl()),
            );
        }

        let ttl = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("ttl");
        assert!((8..=10).contains(&ttl.ttl()), "ttl {}", ttl.ttl());
        let keys: Vec<String> = ttl
            .keys()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        t.record("time to live", (ttl.granted_ttl(), keys));
        let leases = c.leases().await.expect("leases");
        let listed: Vec<String> = leases.leases().iter().map(|l| ids.learn(l.id())).collect();
        t.record("leases", listed);

        let unknown = c
            .lease_time_to_live(0x7eed, None)
            .await
            .expect("unknown ttl");
        t.record(
            "time to live unknown",
            (unknown.ttl(), unknown.granted_ttl()),
        );
        assert_eq!(unknown.ttl(), -1);
        // The server answers TTL 0; etcd-client turns that first reply into an error.
        let err = c.lease_keep_alive(0x7eed).await.expect_err("unknown lease");
        assert!(
            matches!(&err, etcd_client::Error::LeaseKeepAliveError(m) if m == "lease not found"),
            "{err:?}"
        );
        t.record("keepalive unknown", format!("{err:?}"));

        c.lease_revoke(id).await.expect("revoke");
        let gone = c.get("cl/k", None).await.expect("get");
        t.record("after revoke", gone.kvs().len());
        let err = c.lease_revoke(id).await.expect_err("revoke twice");
        t.record("revoke twice", grpc_error(&err));
        t
    })
    .await;
}

// ---- watch ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_key_prefix_rev_prev_kv_and_interactive() {
    for_each_server("etcdctl_watch", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut c = cluster.client().await;

        eprintln!("--- phase 1: watch KEY");
        let mut w = Background::start(cluster, &["watch", "wk"]);
        await_watch_ready(&mut w, &mut c, "wk", 3).await;
        c.put("wk", "1", None).await.unwrap();
        c.put("wk-other", "x", None).await.unwrap();
        c.delete("wk", None).await.unwrap();
        c.put("wk", "2", None).await.unwrap();
        t.record("watch key", w.lines(9).await);
        w.kill().await;

        eprintln!("--- phase 2: watch --prefix");
        let mut w = Background::start(cluster, &["watch", "--prefix", "wp/"]);
        await_watch_ready(&mut w, &mut c, "wp/probe", 3).await;
        for (k, v) in [("wp/a", "1"), ("wq", "no"), ("wp/b", "2"), ("wp/a", "3")] {
            c.put(k, v, None).await.unwrap();
        }
        c.delete("wp/", Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
        t.record("watch prefix", w.lines(3 * 3 + 3 * 3).await);
        w.kill().await;

        eprintln!("--- phase 3: watch --rev replays history; --prev-kv adds the old value");
        let base = current_revision(&mut c).await;
        for v in ["r1", "r2", "r3"] {
            c.put("wr", v, None).await.unwrap();
        }
        c.delete("wr", None).await.unwrap();
        let from = (base + 2).to_string();
        let mut w = Background::start(cluster, &["watch", "--rev", &from, "wr"]);
        t.record("watch --rev", w.lines(3 * 3).await);
        w.kill().await;
        let mut w = Background::start(cluster, &["watch", "--prev-kv", "--rev", &from, "wr"]);
        t.record("watch --prev-kv --rev", w.lines(5 + 5 + 5).await);
        w.kill().await;

        eprintln!("--- phase 4: interactive watch -i");
        let mut w = Background::start(cluster, &["watch", "-i"]);
        w.send_stdin("watch wi\n").await;
        await_watch_ready(&mut w, &mut c, "wi", 3).await;
        c.put("wi", "1", None).await.unwrap();
        c.put("wi", "2", None).await.unwrap();
        t.record("watch -i", w.lines(6).await);
        w.kill().await;
        t
    })
    .await;
}

/// The next watch response with events (skipping created/progress replies), bounded.
async fn next_response(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(LINE_WAIT, stream.message())
        .await
        .expect("watch response in time")
        .expect("watch response")
        .expect("watch stream open")
}

/// (type, key, value, mod revision - base) of every event in `r`.
fn events(r: &WatchResponse, base: i64) -> Vec<(String, String, String, i64)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event kv");
            let kind = match e.event_type() {
                EventType::Put => "PUT",
                EventType::Delete => "DELETE",
            };
            (
                kind.to_string(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision() - base,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_start_revision_and_compaction_cancel() {
    for_each_server("watch_compaction", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut c = cluster.client().await;
        let base = current_revision(&mut c).await;
        for i in 1..=5 {
            c.put(format!("wc/{i}"), format!("v{i}"), None)
                .await
                .unwrap();
        }

        eprintln!("--- phase 1: replay from a start revision, then live events");
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(base + 2)
            .with_prev_key();
        let mut stream = c.watch("wc/", Some(opts)).await.expect("watch");
        let created = next_response(&mut stream).await;
        assert!(created.created() && !created.canceled());
        t.record("created", (created.created(), created.events().len()));
        let mut seen = Vec::new();
        while seen.len() < 4 {
            seen.extend(events(&next_response(&mut stream).await, base));
        }
        c.put("wc/1", "again", None).await.unwrap();
        let live = next_response(&mut stream).await;
        let prev = live.events()[0].prev_kv().map(|kv| kv.value().to_vec());
        assert_eq!(prev, Some(b"v1".to_vec()), "prev kv");
        seen.extend(events(&live, base));
        assert_eq!(
            seen.iter().map(|e| e.3).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6]
        );
        t.record("events", &seen);
        stream.cancel(created.watch_id()).await.expect("cancel");
        let canceled = next_response(&mut stream).await;
        assert!(canceled.canceled());
        t.record(
            "cancel",
            (
                canceled.canceled(),
                canceled.watch_id() == created.watch_id(),
            ),
        );

        eprintln!("--- phase 2: a watch below the compaction is created, then canceled");
        c.compact(base + 4, None).await.expect("compact");
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(base + 2);
        let mut stream = c.watch("wc/", Some(opts)).await.expect("watch");
        let created = next_response(&mut stream).await;
        assert!(created.created(), "the created reply comes first");
        assert_eq!(created.compact_revision(), 0, "not on the created reply");
        let canceled = next_response(&mut stream).await;
        assert!(canceled.canceled());
        assert_eq!(canceled.compact_revision(), base + 4);
        t.record(
            "compacted watch",
            (
                created.created(),
                created.canceled(),
                canceled.canceled(),
                canceled.compact_revision() - base,
                canceled.events().len(),
            ),
        );

        eprintln!("--- phase 3: etcdctl watch --rev below the compaction exits");
        let from = (base + 2).to_string();
        let mut w = Background::start(cluster, &["watch", "--prefix", "--rev", &from, "wc/"]);
        let code = w.exit_code().await;
        let stderr: Vec<String> = w
            .drain_stderr()
            .into_iter()
            .filter(|l| !l.starts_with('{'))
            .collect();
        t.record("etcdctl compacted watch", (code, &stderr));
        w.kill().await;
        t
    })
    .await;
}

// ---- lock and election ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_exec_and_handover() {
    for_each_server("etcdctl_lock", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut ids = LeaseIds::default();
        let mut c = cluster.client().await;
        let base = current_revision(&mut c).await;

        eprintln!("--- phase 1: lock NAME -- command runs the command while holding");
        let out = ctl(cluster, &["lock", "job", "--", "echo", "held"]).await;
        t.record("lock exec", out.ok().to_string());
        assert_eq!(out.ok(), "held\n");
        let script = "echo $ETCD_LOCK_KEY $ETCD_LOCK_REV";
        let out = ctl(cluster, &["lock", "job", "--", "sh", "-c", script]).await;
        let words: Vec<&str> = out.ok().split_whitespace().collect();
        ids.learn_hex(key_lease_hex(words[0]));
        let rev: i64 = words[1].parse().expect("lock revision");
        t.record("lock env", (ids.apply(words[0]), rev - base));
        assert_eq!(keys_under(&mut c, "job/").await, Vec::<String>::new());

        eprintln!("--- phase 2: a held lock; a second etcdctl waits; SIGTERM hands it over");
        let mut holder = Background::start(cluster, &["lock", "job"]);
        let held = holder.lines(1).await;
        ids.learn_hex(key_lease_hex(&held[0]));
        t.record("holder", ids.lines(&held));
        let mut waiter = Background::start(cluster, &["lock", "job", "--", "echo", "second"]);
        let queued = await_key_count(&mut c, "job/", 2).await;
        for key in &queued {
            ids.learn_hex(key_lease_hex(key));
        }
        waiter.assert_quiet();
        let code = holder.terminate().await;
        t.record("holder exit", code);
        let got = waiter.lines(1).await;
        t.record("waiter", &got);
        t.record("waiter exit", waiter.exit_code().await);
        await_key_count(&mut c, "job/", 0).await;
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_observe() {
    for_each_server("etcdctl_elect", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut ids = LeaseIds::default();
        let mut c = cluster.client().await;

        eprintln!("--- phase 1: a campaigner wins; an observer sees it");
        let mut first = Background::start(cluster, &["elect", "pick", "p1"]);
        let won = first.lines(2).await;
        ids.learn_hex(key_lease_hex(&won[0]));
        t.record("first", ids.lines(&won));
        let mut observer = Background::start(cluster, &["elect", "-l", "pick"]);
        t.record("observer", ids.lines(&observer.lines(2).await));

        eprintln!("--- phase 2: a second campaigner waits; the first resigns on SIGTERM");
        let mut second = Background::start(cluster, &["elect", "pick", "p2"]);
        for key in await_key_count(&mut c, "pick/", 2).await {
            ids.learn_hex(key_lease_hex(&key));
        }
        second.assert_quiet();
        t.record("first exit", first.terminate().await);
        t.record("second", ids.lines(&second.lines(2).await));
        t.record("observer", ids.lines(&observer.lines(2).await));
        t.record("second exit", second.terminate().await);
        observer.kill().await;
        t
    })
    .await;
}

fn lock_rev(r: &etcd_client::LockResponse) -> i64 {
    r.header().expect("lock header").revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_lock_unlock_and_election() {
    for_each_server("client_lock_election", 1, async |cluster: &mut Cluster| {
        let mut t = Transcript::new();
        let mut ids = LeaseIds::default();
        let mut c = cluster.client().await;
        let base = current_revision(&mut c).await;
        let a = c.lease_grant(30, None).await.expect("grant").id();
        let b = c.lease_grant(30, None).await.expect("grant").id();
        ids.learn(a);
        ids.learn(b);

        eprintln!("--- phase 1: lock, read the key back, unlock, lock again");
        let first = c
            .lock("cl", Some(LockOptions::new().with_lease(a)))
            .await
            .expect("lock");
        let key = String::from_utf8_lossy(first.key()).into_owned();
        let stored = c.get(key.as_str(), None).await.expect("get");
        let create = stored.kvs()[0].create_revision();
        assert_eq!(
            lock_rev(&first),
            create,
            "uncontended: header = create revision"
        );
        t.record("lock", (ids.apply(&key), lock_rev(&first) - base));
        c.unlock(first.key()).await.expect("unlock");
        t.record("after unlock", keys_under(&mut c, "cl/").await);

        eprintln!("--- phase 2: a waiter gets the lock right after the holder unlocks");
        let held = c
            .lock("cl", Some(LockOptions::new().with_lease(a)))
            .await
            .expect("lock");
        let mut wc = c.clone();
        let waiting =
            tokio::spawn(
                async move { wc.lock("cl", Some(LockOptions::new().with_lease(b))).await },
            );
        await_key_count(&mut c, "cl/", 2).await;
        assert!(!waiting.is_finished(), "acquired while held");
        c.unlock(held.key()).await.expect("unlock");
        let second = tokio::time::timeout(LINE_WAIT, waiting)
            .await
            .expect("waiter acquires")
            .expect("task")
            .expect("lock");
        assert!(lock_rev(&second) > lock_rev(&held));
        t.record(
            "handover",
            ids.apply(&String::from_utf8_lossy(second.key())),
        );
        c.unlock(second.key()).await.expect("unlock");

        eprintln!("--- phase 3: election through the client");
        let err = c.leader("ce").await.expect_err("empty election");
        t.record("leader empty", grpc_error(&err));
        let won = c.campaign("ce", "v1", a).await.expect("campaign");
        let leader: LeaderKey = won.leader().expect("leader key").clone();
        t.record("campaign", ids.apply(leader.key_str().unwrap()));
        let mut observe = c.observe("ce").await.expect("observe");
        let seen = tokio::time::timeout(LINE_WAIT, observe.message())
            .await
            .expect("observe in time")
            .expect("observe")
            .expect("open");
        let value = |r: &etcd_client::LeaderResponse| {
            String::from_utf8_lossy(r.kv().expect("kv").value()).into_owned()
        };
        t.record("observe", value(&seen));
        c.proclaim(
            "v1b",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .expect("proclaim");
        t.record("leader", value(&c.leader("ce").await.expect("leader")));
        let seen = tokio::time::timeout(LINE_WAIT, observe.message())
            .await
            .expect("observe in time")
            .expect("observe")
            .expect("open");
        t.record("observe proclaimed", value(&seen));
        c.resign(Some(ResignOptions::new().with_leader(leader.clone())))
            .await
            .expect("resign");
        let err = c.leader("ce").await.expect_err("resigned");
        t.record("leader after resign", grpc_error(&err));
        let err = c
            .proclaim(
                "stale",
                Some(ProclaimOptions::new().with_leader(leader.clone())),
            )
            .await
            .expect_err("stale proclaim");
        t.record("stale proclaim", grpc_error(&err));
        let stale = c
            .resign(Some(ResignOptions::new().with_leader(leader.clone())))
            .await;
        t.record(
            "stale resign",
            stale.map(|_| ()).map_err(|e| grpc_error(&e)),
        );
        let err = c.proclaim("x", None).await.expect_err("no leader key");
        t.record("proclaim without leader", grpc_error(&err));
        drop(observe);
        t
    })
    .await;
}
