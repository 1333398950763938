//! `fsync-rate`: the disk's durable-write ceiling, measured as 4 KiB appends
//! each followed by fdatasync (what a WAL without group commit does).
//! Used when `fio` is not installed. Bounded by time and by a write count.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::stats::{Recorder, RunResult};

const BLOCK_BYTES: usize = 4096;
/// Upper bound on writes so a RAM-backed directory cannot fill up.
const WRITES_MAX: u64 = 200_000;

pub fn fsync_rate(dir: &Path, seconds: f64, label: &str) -> RunResult {
    let path = dir.join(format!(".keel-bench-fsync-{}", std::process::id()));
    let mut rec = Recorder::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds.max(0.1));
    match std::fs::File::create(&path) {
        Ok(mut f) => {
            let block = [0xA5u8; BLOCK_BYTES];
            let mut n = 0;
            while Instant::now() < deadline && n < WRITES_MAX {
                let t0 = Instant::now();
                match f.write_all(&block).and_then(|_| f.sync_data()) {
                    Ok(()) => rec.record(t0.elapsed()),
                    Err(e) => {
                        rec.record_error(format!("write+fdatasync: {e}"), false);
                        break;
                    }
                }
                n += 1;
            }
        }
        Err(e) => rec.record_error(format!("create {}: {e}", path.display()), false),
    }
    let _ = std::fs::remove_file(&path);
    RunResult::new("fsync-rate", "fsync-rate", label, &rec, start.elapsed())
        .with("block_bytes", BLOCK_BYTES)
        .with("dir", dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_rate_measures_some_writes_and_cleans_up() {
        let dir = std::env::temp_dir();
        let r = fsync_rate(&dir, 0.2, "t");
        assert_eq!(r.status, "ok", "{:?}", r.first_error);
        assert!(r.ops > 0);
        assert!(!dir
            .join(format!(".keel-bench-fsync-{}", std::process::id()))
            .exists());
    }
}
