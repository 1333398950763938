//! The linearizability checker for KV histories. Owns the verdict, the partition of a
//! history into per-key sub-histories (linearizability is local, so each key is checked on
//! its own), the shrinking of a failing sub-history to an explanation, and the order in which
//! checks run; must never assume anything about the server beyond etcd's documented
//! semantics.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use crate::explain::{explain, phantom_read};
use crate::history::{CasExpect, History, HistoryError, Op, OpKind};
use crate::model::{Expect, Input, KeyState, Output, ValueId};
use crate::revisions::check_revisions;
use crate::search::{search, Budget, KeyOp, Outcome};

pub use crate::search::Limit;

/// Limits for one call of [`check`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Search steps for the whole history (all keys together); deterministic.
    pub steps_max: u64,
    /// Wall-clock bound for the whole history; `None` = steps only.
    pub duration_max: Option<Duration>,
    /// Shrink a failing key to a small set of conflicting operations (costs up to another
    /// `steps_max`; whatever runs out, the explanation stays a proven conflict but is
    /// reported as not minimal).
    pub minimize: bool,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            steps_max: 5_000_000,
            duration_max: Some(Duration::from_secs(10)),
            minimize: true,
        }
    }
}

/// Which property a [`Violation`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// No sequential order of one key's operations explains what clients saw.
    Linearizability,
    /// Two writes returned the same revision.
    RevisionUnique,
    /// Revisions go against real time: an operation that finished before another started
    /// has a larger revision (or, for a read after it, a larger-than-or-equal one is needed).
    RevisionOrder,
}

/// A proof that the history is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub check: CheckKind,
    /// The key whose sub-history fails; `None` for cross-key revision checks.
    pub key: Option<Vec<u8>>,
    /// Indices into [`History::ops`] of the operations that conflict, by call time. For
    /// [`CheckKind::Linearizability`] these known-outcome operations already have no
    /// linearization on their own, even if every other operation on the key may or may not
    /// have taken effect at any time.
    pub ops: Vec<usize>,
    /// Whether no operation can be dropped from `ops` and still conflict.
    pub minimal: bool,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key.as_deref().map(String::from_utf8_lossy);
        write!(
            f,
            "{:?} violated (key {:?}, ops {:?}): {}",
            self.check, key, self.ops, self.detail
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable(Violation),
    /// A limit ran out on `key` before the search finished; nothing is proven either way.
    Unknown {
        key: Vec<u8>,
        limit: Limit,
    },
}

/// The verdict and what it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub verdict: Verdict,
    pub keys_checked: usize,
    pub steps: u64,
}

/// Checks a history: first the cheap cross-key revision rules, then each key's
/// sub-history for linearizability. A violation on any key wins over a limit on another.
pub fn check(history: &History, options: &CheckOptions) -> Result<Report, HistoryError> {
    history.validate()?;
    if let Some(violation) = check_revisions(history) {
        return Ok(Report {
            verdict: Verdict::NotLinearizable(violation),
            keys_checked: 0,
            steps: 0,
        });
    }
    let deadline = options.duration_max.map(|d| Instant::now() + d);
    let mut budget = Budget::new(options.steps_max, deadline);
    let mut first_limit = None;
    let mut keys_checked = 0;
    for (key, ops) in partition(history) {
        keys_checked += 1;
        let steps_before = budget.steps_used;
        // A read of a value nobody wrote needs no search (and searching for it through many
        // unknown-outcome writes can take exponential time).
        let outcome = match phantom_read(&ops) {
            Some(_) => Outcome::NotLinearizable,
            None => search(&ops, KeyState::INITIAL, &mut budget),
        };
        match outcome {
            Outcome::Linearizable => {}
            Outcome::OutOfBudget(limit) => {
                first_limit.get_or_insert((key, limit));
            }
            Outcome::NotLinearizable => {
                let search_steps = budget.steps_used - steps_before;
                let violation = violation(key, &ops, search_steps, options, deadline);
                let verdict = Verdict::NotLinearizable(violation);
                return Ok(Report {
                    verdict,
                    keys_checked,
                    steps: budget.steps_used,
                });
            }
        }
    }
    let verdict = match first_limit {
        Some((key, limit)) => Verdict::Unknown { key, limit },
        None => Verdict::Linearizable,
    };
    Ok(Report {
        verdict,
        keys_checked,
        steps: budget.steps_used,
    })
}

/// Each key's values, interned.
type ValueIds = HashMap<Vec<u8>, ValueId>;

/// Splits the history by key, in key order, translating ops to model terms. Unknown-outcome
/// reads are dropped: they never have to be linearized and change nothing.
fn partition(history: &History) -> BTreeMap<Vec<u8>, Vec<KeyOp>> {
    let mut keys: BTreeMap<Vec<u8>, (Vec<KeyOp>, ValueIds)> = BTreeMap::new();
    for (index, op) in history.ops.iter().enumerate() {
        let (ops, values) = keys.entry(op.key().to_vec()).or_default();
        let (input, output) = translate(op, values);
        if input == Input::Get && output.is_none() {
            continue;
        }
        ops.push(KeyOp {
            index,
            call_ns: op.call_ns,
            return_ns: op.return_ns,
            input,
            output,
        });
    }
    keys.into_iter().map(|(key, (ops, _))| (key, ops)).collect()
}

fn translate(op: &Op, values: &mut ValueIds) -> (Input, Option<Output>) {
    let mut intern = |v: &[u8]| {
        let next = ValueId::try_from(values.len()).expect("fewer than 2^32 values per key");
        *values.entry(v.to_vec()).or_insert(next)
    };
    match &op.kind {
        OpKind::Put { value, result, .. } => (
            Input::Put(intern(value)),
            result.map(|r| Output::Put { rev: r.revision }),
        ),
        OpKind::Get { result, .. } => {
            let output = result.as_ref().map(|r| Output::Get {
                value: r.value.as_deref().map(&mut intern),
                mod_rev: r.mod_revision,
                rev: r.revision,
            });
            (Input::Get, output)
        }
        OpKind::Delete { result, .. } => (
            Input::Delete,
            result.map(|r| Output::Delete {
                deleted: r.deleted,
                rev: r.revision,
            }),
        ),
        OpKind::Cas {
            expect,
            new_value,
            result,
            ..
        } => {
            let expect = match expect {
                CasExpect::ModRevision(rev) => Expect::ModRev(*rev),
                CasExpect::Value(v) => Expect::Value(intern(v)),
            };
            let input = Input::Cas {
                expect,
                new: intern(new_value),
            };
            (
                input,
                result.map(|r| Output::Cas {
                    succeeded: r.succeeded,
                    rev: r.revision,
                }),
            )
        }
    }
}

/// Builds the violation for a failing key. Each shrinking trial may spend a few times what
/// the search that found the failure spent: cut-down histories should be no harder.
fn violation(
    key: Vec<u8>,
    ops: &[KeyOp],
    search_steps: u64,
    options: &CheckOptions,
    deadline: Option<Instant>,
) -> Violation {
    let (ops, minimal, from) = if options.minimize {
        let mut budget = Budget::new(options.steps_max, deadline);
        let steps_per_trial = search_steps.saturating_mul(4).max(10_000);
        let e = explain(ops, &mut budget, steps_per_trial);
        (
            e.ops,
            e.minimal,
            if e.from_any_state {
                "whatever the key held before them"
            } else {
                "from an empty store"
            },
        )
    } else {
        let mut known: Vec<&KeyOp> = ops.iter().filter(|op| op.output.is_some()).collect();
        known.sort_by_key(|op| (op.call_ns, op.index));
        (
            known.iter().map(|op| op.index).collect(),
            false,
            "from an empty store",
        )
    };
    let detail = format!(
        "no order of these {} operations explains their results ({from}, with the key's other \
         operations taking effect or not)",
        ops.len()
    );
    Violation {
        check: CheckKind::Linearizability,
        key: Some(key),
        ops,
        minimal,
        detail,
    }
}
