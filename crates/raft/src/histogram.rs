//! Durations counted into fixed buckets without locks, for the metrics endpoint: the buckets of
//! etcd's disk histograms (`etcd_disk_wal_fsync_duration_seconds`,
//! `etcd_disk_backend_commit_duration_seconds`): 1 ms, doubling up to 8.192 s, then +Inf.
//!
//! Owns: the counts. Must never: block or allocate on `observe` (the log writer calls it after
//! every fsync).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds below +Inf.
pub const BUCKETS: usize = 14;

/// The upper bound of bucket `i` in seconds: 0.001 * 2^i.
pub fn bucket_bound_s(i: usize) -> f64 {
    0.001 * f64::from(1u32 << i)
}

#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BUCKETS + 1],
    sum_nanos: AtomicU64,
}

/// A consistent-enough copy for one scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_s: f64,
    pub count: u64,
    /// `(upper bound in seconds, observations in that bucket)`, ending with +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl DurationHistogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = (0..BUCKETS)
            .find(|&i| s <= bucket_bound_s(i))
            .unwrap_or(BUCKETS);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = if i < BUCKETS {
                    bucket_bound_s(i)
                } else {
                    f64::INFINITY
                };
                (bound, n.load(Ordering::Relaxed))
            })
            .collect();
        HistogramSnapshot {
            sum_s: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_micros(400));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets.len(), BUCKETS + 1);
        assert_eq!(s.buckets[0], (0.001, 2), "0.4 ms and exactly 1 ms");
        assert_eq!(s.buckets[2], (0.004, 1), "3 ms is above 2 ms, at most 4 ms");
        assert_eq!(s.buckets[BUCKETS - 1].0, 8.192);
        assert_eq!(s.buckets[BUCKETS], (f64::INFINITY, 1), "a minute");
        assert!((s.sum_s - 60.0044).abs() < 1e-9, "{}", s.sum_s);
    }
}
