//! Open-loop rate limiting shared by all clients of a run.
//!
//! The schedule is a function of the operation count only: ticket `n` may start
//! no earlier than `start + n / rate`. So however a run stalls, the number of
//! operations started by time `t` never exceeds `rate * t + 1`, and a stall is
//! followed by catch-up rather than by a permanently lower rate. It owns no I/O
//! beyond sleeping until a ticket's slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Pacer {
    interval_ns: u64,
    next_ticket: AtomicU64,
}

impl Pacer {
    /// `None` for `ops_per_s == 0` (unlimited).
    pub fn new(ops_per_s: f64) -> Option<Self> {
        if ops_per_s.is_nan() || ops_per_s <= 0.0 {
            return None;
        }
        let interval_ns = (1e9 / ops_per_s).round().max(1.0) as u64;
        Some(Self {
            interval_ns,
            next_ticket: AtomicU64::new(0),
        })
    }

    /// Offset from the run's start at which ticket `n` may start.
    pub fn slot(&self, n: u64) -> Duration {
        Duration::from_nanos(n.saturating_mul(self.interval_ns))
    }

    /// Takes the next ticket and returns its slot offset.
    pub fn take(&self) -> Duration {
        self.slot(self.next_ticket.fetch_add(1, Ordering::Relaxed))
    }

    /// Waits for the next ticket's slot, but never past `deadline`.
    /// Returns false if the slot lies after the deadline.
    pub async fn wait(&self, start: Instant, deadline: Option<Instant>) -> bool {
        let at = start + self.take();
        if let Some(d) = deadline {
            if at >= d {
                tokio::time::sleep_until(d).await;
                return false;
            }
        }
        tokio::time::sleep_until(at).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_is_unlimited() {
        assert!(Pacer::new(0.0).is_none());
        assert!(Pacer::new(-1.0).is_none());
    }

    #[test]
    fn slots_are_spaced_by_count_not_by_when_taken() {
        let p = Pacer::new(1000.0).unwrap();
        // Tickets taken back to back (no time passes) still get 1 ms apart slots.
        let slots: Vec<Duration> = (0..1000).map(|_| p.take()).collect();
        for (n, s) in slots.iter().enumerate() {
            assert_eq!(*s, Duration::from_millis(n as u64), "ticket {n}");
        }
        // Ops started by t never exceed rate * t + 1.
        let t = Duration::from_millis(250);
        let started_by_t = slots.iter().filter(|s| **s <= t).count();
        assert_eq!(started_by_t, 251);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_respects_schedule_and_deadline() {
        let p = Pacer::new(100.0).unwrap(); // 10 ms per ticket
        let start = Instant::now();
        let deadline = start + Duration::from_millis(35);
        let mut admitted = 0;
        while p.wait(start, Some(deadline)).await {
            admitted += 1;
        }
        // Tickets at 0, 10, 20, 30 ms fit; 40 ms does not.
        assert_eq!(admitted, 4);
        assert_eq!(Instant::now(), deadline);
    }
}
