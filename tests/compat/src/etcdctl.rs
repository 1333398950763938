//! Runs etcdctl 3.x (API v3) as a child process with a hard timeout.
//!
//! Owns: the command line and stdin of one etcdctl invocation. Never retries: what
//! etcdctl printed is the observation.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Wall-clock bound for one etcdctl invocation (its own command timeout is 5 s).
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(20);

/// What one etcdctl run produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The stdout, asserting the command exited 0.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "etcdctl failed: {self:#?}");
        &self.stdout
    }

    /// The last line starting with `Error:` on stderr, asserting a non-zero exit.
    /// (etcdctl first logs a JSON warning line from its retry interceptor.)
    pub fn error_line(&self) -> &str {
        assert_ne!(self.code, 0, "etcdctl unexpectedly succeeded: {self:#?}");
        self.stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("Error:"))
            .unwrap_or_else(|| panic!("no `Error:` line in etcdctl stderr: {self:#?}"))
    }

    /// Parses stdout as JSON, asserting success.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok().trim())
            .unwrap_or_else(|e| panic!("etcdctl stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Runs `etcdctl --endpoints=<endpoints> <args>` with optional stdin.
pub async fn run(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropping the future on timeout kills the child we started.
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .expect("spawn etcdctl (is etcd-client installed?)");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("etcdctl stdin");
        pipe.write_all(input.as_bytes())
            .await
            .expect("write etcdctl stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(ETCDCTL_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish within {ETCDCTL_TIMEOUT:?}"))
        .expect("wait for etcdctl");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs etcdctl against every running member of `cluster`.
pub async fn ctl(cluster: &crate::Cluster, args: &[&str]) -> Output {
    run(&cluster.live_endpoints(), args, None).await
}

/// Runs etcdctl against every running member of `cluster`, feeding `stdin`.
pub async fn ctl_stdin(cluster: &crate::Cluster, args: &[&str], stdin: &str) -> Output {
    run(&cluster.live_endpoints(), args, Some(stdin)).await
}
