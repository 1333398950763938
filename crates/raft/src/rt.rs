//! keel's openraft runtime: tokio, with a random source a simulation can seed.
//!
//! Owns: where openraft's randomness (election timeouts, first tick waits) comes from. In a
//! member process it is the OS-seeded thread RNG, as with openraft's own tokio runtime. A
//! deterministic simulation (crates/sim, turmoil) runs every member on one thread and calls
//! [`seed_thread_rng`] first, so every draw on that thread follows from the seed.
//! Must never: change anything else about the runtime (everything else delegates to tokio).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::rt::{AsyncRuntime, OptionalSend};
use openraft_rt_tokio::TokioRuntime;
use rand::rngs::SmallRng;
use rand::SeedableRng;

thread_local! {
    /// `Some` once a simulation seeded this thread: the state of a SplitMix64 sequence from
    /// which each `thread_rng()` call takes one seed.
    static SIM_SEED: RefCell<Option<u64>> = const { RefCell::new(None) };
}

/// Makes every openraft random draw on this thread follow from `seed` (simulation only).
/// `None` returns the thread to OS-seeded randomness.
pub fn seed_thread_rng(seed: Option<u64>) {
    SIM_SEED.with(|s| *s.borrow_mut() = seed);
}

fn next_sim_seed() -> Option<u64> {
    SIM_SEED.with(|s| {
        let mut state = s.borrow_mut();
        let current = (*state)?;
        // SplitMix64 step: a bijective mix, so consecutive draws are independent enough for
        // election jitter.
        let next = current.wrapping_add(0x9e37_79b9_7f4a_7c15);
        *state = Some(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Some(z ^ (z >> 31))
    })
}

/// openraft's tokio runtime with a seedable `thread_rng`.
#[derive(Debug)]
pub struct KeelRuntime(TokioRuntime);

impl AsyncRuntime for KeelRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match next_sim_seed() {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => rand::make_rng(),
        }
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        KeelRuntime(TokioRuntime::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use rand::RngExt;

    use super::*;

    #[test]
    fn seeded_draws_repeat_and_unseeded_draws_do_not_follow_the_seed() {
        let draw = || -> Vec<u64> {
            (0..4)
                .map(|_| KeelRuntime::thread_rng().random_range(0..1_000_000u64))
                .collect()
        };
        seed_thread_rng(Some(42));
        let first = draw();
        seed_thread_rng(Some(42));
        let second = draw();
        seed_thread_rng(Some(43));
        let other = draw();
        seed_thread_rng(None);
        assert_eq!(first, second, "the same seed gives the same draws");
        assert_ne!(first, other, "another seed gives other draws");
        assert_ne!(first[0], first[1], "consecutive draws differ");
    }
}
