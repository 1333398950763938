//! Shrinks a key's failing sub-history to a few operations a person can read. Owns the
//! cuts and their soundness arguments; must never report a set of operations that has not
//! itself been proven to fail (every step below keeps only proven failures).
//!
//! Three cuts, each sound because it can only widen what is allowed:
//! 1. Prefix: operations called before `T`, with those returning after `T` forgotten (made
//!    unknown). A linearization of the whole, truncated after its last operation that
//!    returned before `T`, linearizes the prefix.
//! 2. Window: of that prefix, the operations called at or after `S`, with those called
//!    before `S` but returning at or after it forgotten, starting from any state. The part of
//!    a linearization after the last operation that returned before `S` linearizes it.
//! 3. Forgetting: an operation whose result is forgotten may take effect at any time after
//!    its call, or never, so forgetting widens the allowed linearizations (delta debugging
//!    on halves, quarters, ... single operations).
//!
//! Operations left unknown at the end are dropped from the report: fewer optional
//! operations cannot make a failing history pass.
//!
//! Before all that, a read of a value that no operation called before the read returned
//! could have written is reported alone.

use std::collections::HashMap;

use crate::model::{Input, KeyState, Output, ValueId};
use crate::search::{search, Budget, KeyOp, Outcome};

pub(crate) struct Explanation {
    /// History indices of the conflicting known-outcome operations, by call time.
    pub ops: Vec<usize>,
    pub minimal: bool,
    /// Whether the conflict holds whatever state the key was in before the first of them.
    pub from_any_state: bool,
}

/// A trial that runs out of steps counts as "does not fail" (the cut is not taken) and
/// costs minimality.
struct Trials<'a> {
    budget: &'a mut Budget,
    steps_per_trial: u64,
    undecided: bool,
}

impl Trials<'_> {
    fn fails(&mut self, ops: &[KeyOp], initial: KeyState) -> bool {
        let mut trial = self.budget.trial(self.steps_per_trial);
        let outcome = search(ops, initial, &mut trial);
        self.budget.charge(&trial);
        match outcome {
            Outcome::NotLinearizable => true,
            Outcome::Linearizable => false,
            Outcome::OutOfBudget(_) => {
                self.undecided = true;
                false
            }
        }
    }
}

pub(crate) fn explain(ops: &[KeyOp], budget: &mut Budget, steps_per_trial: u64) -> Explanation {
    if let Some(read) = phantom_read(ops) {
        return Explanation {
            ops: vec![read],
            minimal: true,
            from_any_state: false,
        };
    }
    let mut trials = Trials {
        budget,
        steps_per_trial,
        undecided: false,
    };
    let prefix_end = shortest_failing_prefix(ops, &mut trials);
    let (mut window, initial) = latest_failing_window(ops, prefix_end, &mut trials);
    shrink(&mut window, initial, &mut trials);
    let mut known: Vec<&KeyOp> = window.iter().filter(|op| op.output.is_some()).collect();
    known.sort_by_key(|op| (op.call_ns, op.index));
    Explanation {
        ops: known.iter().map(|op| op.index).collect(),
        minimal: !trials.undecided,
        from_any_state: initial == KeyState::ANY,
    }
}

/// A known read of a value that no put or compare called before the read returned could
/// have written: a conflict on its own, found without searching.
pub(crate) fn phantom_read(ops: &[KeyOp]) -> Option<usize> {
    let mut first_write_call: HashMap<ValueId, u64> = HashMap::new();
    for w in ops {
        let failed_cas = matches!(
            w.output,
            Some(Output::Cas {
                succeeded: false,
                ..
            })
        );
        if let (Input::Put(v) | Input::Cas { new: v, .. }, false) = (w.input, failed_cas) {
            let first = first_write_call.entry(v).or_insert(w.call_ns);
            *first = (*first).min(w.call_ns);
        }
    }
    ops.iter().find_map(|read| {
        let Some(Output::Get {
            value: Some(seen), ..
        }) = read.output
        else {
            return None;
        };
        let read_return = read.return_ns.unwrap_or(u64::MAX);
        let written = first_write_call
            .get(&seen)
            .is_some_and(|&call| call < read_return);
        (!written).then_some(read.index)
    })
}

fn cut(ops: &[KeyOp], start_ns: u64, end_ns: u64) -> Vec<KeyOp> {
    ops.iter()
        .filter(|op| op.call_ns < end_ns && op.return_ns.is_none_or(|r| r >= start_ns))
        .map(|op| {
            let straddles = op.call_ns < start_ns || op.return_ns.is_none_or(|r| r >= end_ns);
            if straddles {
                forgotten(*op)
            } else {
                *op
            }
        })
        .collect()
}

fn forgotten(op: KeyOp) -> KeyOp {
    KeyOp {
        output: None,
        return_ns: None,
        ..op
    }
}

/// The smallest `T` (just past some known return) whose prefix fails; the whole history's
/// end when no shorter prefix is proven to.
fn shortest_failing_prefix(ops: &[KeyOp], trials: &mut Trials<'_>) -> u64 {
    let mut ends: Vec<u64> = ops
        .iter()
        .filter_map(|op| op.return_ns.filter(|_| op.output.is_some()))
        .collect();
    ends.sort_unstable();
    ends.dedup();
    let ends: Vec<u64> = ends.into_iter().map(|r| r.saturating_add(1)).collect();
    // Invariant: ends[hi] fails (the whole history does), ends[..lo] are not proven to.
    let (mut lo, mut hi) = (0, ends.len().saturating_sub(1));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if trials.fails(&cut(ops, 0, ends[mid]), KeyState::INITIAL) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    ends.get(hi).copied().unwrap_or(u64::MAX)
}

/// The latest `S` whose window `[S, end)` fails from any state; the prefix itself from the
/// fresh state when none is proven to. Failure is monotone (earlier starts keep more), and
/// small windows are cheap, so gallop back from the end and then bisect.
fn latest_failing_window(
    ops: &[KeyOp],
    end_ns: u64,
    trials: &mut Trials<'_>,
) -> (Vec<KeyOp>, KeyState) {
    let mut starts: Vec<u64> = ops
        .iter()
        .map(|op| op.call_ns)
        .filter(|&c| c < end_ns)
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let n = starts.len();
    let fails = |trials: &mut Trials<'_>, i: usize| {
        trials.fails(&cut(ops, starts[i], end_ns), KeyState::ANY)
    };
    // `passes` = smallest index known not to fail (n: the empty window).
    let (mut passes, mut back) = (n, 1);
    let failing = loop {
        let Some(i) = n.checked_sub(back) else {
            break None;
        };
        if fails(trials, i) {
            break Some(i);
        }
        passes = i;
        back = if i == 0 { n + 1 } else { (back * 2).min(n) };
    };
    let Some(mut lo) = failing else {
        return (cut(ops, 0, end_ns), KeyState::INITIAL);
    };
    while passes - lo > 1 {
        let mid = (lo + passes) / 2;
        if fails(trials, mid) {
            lo = mid;
        } else {
            passes = mid;
        }
    }
    (cut(ops, starts[lo], end_ns), KeyState::ANY)
}

/// Delta debugging by forgetting results: halves, then quarters, down to single operations.
fn shrink(ops: &mut Vec<KeyOp>, initial: KeyState, trials: &mut Trials<'_>) {
    let mut chunk = ops.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < ops.len() {
            let end = (start + chunk).min(ops.len());
            if ops[start..end].iter().any(|op| op.output.is_some()) {
                let mut trial = ops.clone();
                for op in &mut trial[start..end] {
                    *op = forgotten(*op);
                }
                if trials.fails(&trial, initial) {
                    *ops = trial;
                }
            }
            start = end;
        }
        if chunk == 1 {
            return;
        }
        chunk = chunk.div_ceil(2);
    }
}
