//! Named crash points at keel's persistence and apply boundaries, for crash tests.
//!
//! Owns: the [`crash_point!`](crate::crash_point) macro and the process-wide setup. Compiled
//! in only with the `failpoints` cargo feature (off by default): without it every crash point
//! expands to nothing, so a release build has none.
//!
//! With the feature, a point is configured through the `fail` crate, normally by the
//! `FAILPOINTS` environment variable the `keel` binary reads at start
//! (`FAILPOINTS="apply::after_commit=20*off->return"`). The `return` action crashes the
//! process at that point (`std::process::abort`: no unwinding, no final sync, like a power
//! cut or `kill -9` there); `panic`, `sleep(ms)`, `pause` and `off` keep their `fail` meaning.
//!
//! Points (name: where):
//! * `apply::before_commit`, `apply::after_commit`: around the store commit of an apply batch.
//! * `compact::before_step`, `compact::after_step`: around one physical compaction step.
//! * `snapshot::before_build`, `snapshot::after_build`: building a snapshot (before the sync
//!   that lets Raft purge its log; after the dump, before Raft purges).
//! * `snapshot::before_install`, `snapshot::after_install`: installing a leader's snapshot.
//!
//! Must never: be compiled into a default build, or do anything while unconfigured.

#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub use fail as __fail;

/// Reads `FAILPOINTS` and configures the points it names; keep the guard for the life of the
/// process. A no-op without the `failpoints` feature.
#[cfg(feature = "failpoints")]
pub fn setup() -> impl Drop {
    fail::FailScenario::setup()
}

/// Without the `failpoints` feature there is nothing to configure.
#[cfg(not(feature = "failpoints"))]
pub fn setup() {}

/// A named crash point; see the [module doc](crate::failpoints). Expands to nothing without
/// the `failpoints` feature.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        $crate::failpoints::__fail::fail_point!($name, |_| ::std::process::abort())
    };
}

/// A named crash point (disabled: built without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {};
}
