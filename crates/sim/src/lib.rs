//! keel-sim: the history checkers of keel's robustness suite (DESIGN.md §9, issue 4).
//!
//! Owns: judging what clients observed (KV operations, watch streams, leases, locks)
//! against etcd's guarantees. Must never: do I/O, read clocks or randomness for anything but
//! the checker's own wall-clock limit, or depend on keel's server crates. A recorder (the
//! coming turmoil simulation, process tests) turns what it saw into these types; the
//! checkers say whether that could have happened.
//!
//! # KV histories: [`history`], [`linearizability`]
//!
//! - [`history::Op`] `{ client, call_ns, return_ns: Option<u64>, kind }`; `return_ns` `None`
//!   means an unknown outcome (timeout, lost connection): the op may take effect at any time
//!   after its call, or never. [`history::OpKind`] is `Put`, `Get`, `Delete` or `Cas`
//!   (compare `ModRevision(r)` — 0 = absent — or `Value(v)`, then put), each with
//!   `result: Option<…>` holding what the server returned, revisions included.
//!   Constructors: `Op::put`, `Op::put_unknown`, `Op::get`, `Op::delete`,
//!   `Op::delete_unknown`, `Op::cas`, `Op::cas_unknown`.
//! - [`history::History`] `{ ops }`; an op's index there names it in every verdict.
//!   [`history::History::validate`] rejects malformed recordings ([`history::HistoryError`]).
//! - [`linearizability::check`]`(&History, &CheckOptions) -> Result<Report, HistoryError>`:
//!   1. cross-key revision rules ([`check_revisions`]): write revisions unique; if `a`
//!      returned before `b` was called, `a.rev < b.rev` for a write `b`, `<=` for a read;
//!   2. a read of a value no write called before it could have produced (no search needed);
//!   3. per key (linearizability is local), a Wing & Gong search with Lowe's/Porcupine's
//!      memoization of (linearized set, state) over an etcd key model that tracks value,
//!      `mod_revision` and a lower bound on the global revision, so reads must be served at
//!      or after, and writes get revisions above, everything linearized before them.
//!
//!   [`linearizability::Report`] `{ verdict, keys_checked, steps }`;
//!   [`linearizability::Verdict`] is `Linearizable`, `NotLinearizable(Violation)` or
//!   `Unknown { key, limit }` when [`linearizability::CheckOptions`] `steps_max` (shared by
//!   all keys, deterministic) or `duration_max` ran out. A
//!   [`linearizability::Violation`] `{ check, key, ops, minimal, detail }` names the few
//!   known-outcome ops that already conflict with every other op on the key taking effect
//!   or not: the failing key is cut to its shortest failing prefix, then to the latest
//!   window that fails from any starting state, then shrunk by forgetting results (each cut
//!   only widens what is allowed, so the explanation is itself a proof).
//!
//! # Watch streams: [`watch`]
//!
//! [`watch::validate_watch`]`(committed: &[WatchEvent], &WatchSpec, &[WatchResponse]) ->
//! Result<WatchReport, WatchViolation>`: `committed` is every committed write event in
//! revision order; the responses are what one watcher received (created, events,
//! progress, canceled/compacted, fragments). Checks ordered, unique, reliable, atomic,
//! resumable, valid (events are the committed ones in range), progress notifications and
//! framing; the violation names the [`watch::Guarantee`], response and event.
//!
//! # Leases: [`lease`]
//!
//! [`lease::validate_leases`]`(&[LeaseObservation], &LeaseBounds) -> Result<(),
//! LeaseViolation>` over grants, keep-alives, revokes (each possibly of unknown outcome),
//! key attachments, key reads, time-to-live readings and leader changes: attached keys are
//! never gone before the earliest possible expiry, always gone within `expiry_grace_ns` of
//! the latest; not-found never early; no keep-alive revives an expired lease; remaining TTL
//! never exceeds what refreshes allow and does not grow across a leader change.
//!
//! # Locks: [`lock`]
//!
//! [`lock::validate_lock`]`(&[LockHold], &[ResourceWrite]) -> Result<(), LockViolation>`:
//! fencing tokens unique and increasing with real-time acquisition order, and a resource
//! that rejects stale tokens never accepted a smaller token after a larger one, nor a token
//! its writer did not hold.

mod explain;
pub mod history;
pub mod lease;
pub mod linearizability;
pub mod lock;
mod model;
mod revisions;
mod search;
pub mod watch;

pub use revisions::check_revisions;
