//! Reads server resource usage from /proc and the filesystem: CPU time, resident
//! memory, on-disk size. Linux only; a missing process reads as `None`.

use std::path::Path;

/// Clock ticks per second for /proc/<pid>/stat times. 100 on every Linux
/// architecture keel targets (USER_HZ); reading sysconf would need libc.
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// User + system CPU seconds the process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|t| t as f64 / CLOCK_TICKS_PER_S)
}

/// utime + stime from a /proc/<pid>/stat line. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Sum of CPU seconds over `pids`; `None` if no PIDs were given.
pub fn cpu_seconds_sum(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    Some(pids.iter().filter_map(|p| cpu_seconds(*p)).sum())
}

/// Resident set size in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_bytes(&status)
}

pub fn parse_vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes allocated on disk under `path` (st_blocks * 512), following no symlinks.
pub fn dir_allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return own;
    };
    own + entries
        .flatten()
        .map(|e| dir_allocated_bytes(&e.path()))
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_skips_command_names_with_spaces() {
        let stat =
            "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn vm_rss_is_reported_in_bytes() {
        let status = "Name:\tetcd\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\n";
        assert_eq!(parse_vm_rss_bytes(status), Some(2 * 1024 * 1024));
    }

    #[test]
    fn own_process_has_cpu_and_rss() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
    }

    #[test]
    fn dir_size_counts_nested_files() {
        let dir = std::env::temp_dir().join(format!("keel-bench-du-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), vec![1u8; 64 * 1024]).unwrap();
        let n = dir_allocated_bytes(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(n >= 64 * 1024, "{n}");
    }
}
