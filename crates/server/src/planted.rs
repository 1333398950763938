//! Planted bugs: deliberate faults the deterministic simulation must catch (issue 4, "done
//! when"). They exist only with the `planted-bugs` cargo feature, which only crates/sim's tests
//! enable, and even then each stays off until a simulation switches it on for one run.
//!
//! Owns: the switches. Must never: be on in a member process (without the feature every
//! switch is a constant `false`).

#[cfg(feature = "planted-bugs")]
mod switches {
    use std::cell::Cell;

    // Per thread: a simulation runs all its members on its own thread, and other tests may run
    // simulations on other threads at the same time.
    thread_local! {
        static STALE_READS: Cell<bool> = const { Cell::new(false) };
    }

    /// Serve linearizable reads from local state without the ReadIndex barrier (on this
    /// thread).
    pub fn set_stale_reads(on: bool) {
        STALE_READS.with(|c| c.set(on));
    }

    pub fn stale_reads() -> bool {
        STALE_READS.with(Cell::get)
    }
}

#[cfg(feature = "planted-bugs")]
pub use switches::{set_stale_reads, stale_reads};

/// Without the feature no bug can be switched on.
#[cfg(not(feature = "planted-bugs"))]
pub const fn stale_reads() -> bool {
    false
}
