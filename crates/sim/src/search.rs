//! The Wing & Gong linearizability search over one key's sub-history, with Lowe's
//! improvements as in Porcupine: call/return events in a doubly linked list that ops are
//! lifted out of as they are linearized, and a cache of (linearized set, model state) so
//! that no configuration is explored twice. Owns the search and its step budget; must never
//! read anything but the operations it is given (no keys, no other sub-histories).

use std::collections::HashSet;
use std::time::Instant;

use crate::model::{step, Input, KeyState, Output};

/// One operation of a key's sub-history in model terms.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyOp {
    /// Index in the caller's history, to name the op in verdicts.
    pub index: usize,
    pub call_ns: u64,
    /// `None` = unknown outcome: returns at +infinity and need never be linearized.
    pub return_ns: Option<u64>,
    pub input: Input,
    pub output: Option<Output>,
}

/// Which limit ended a search early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Steps,
    Time,
}

/// Steps and wall time one history may use, shared by all of its keys.
#[derive(Debug)]
pub(crate) struct Budget {
    pub steps_used: u64,
    steps_max: u64,
    deadline: Option<Instant>,
}

impl Budget {
    pub(crate) fn new(steps_max: u64, deadline: Option<Instant>) -> Budget {
        Budget {
            steps_used: 0,
            steps_max,
            deadline,
        }
    }

    /// A budget for one trial: at most `steps_max` of what is left here, same deadline.
    /// Charge it back with [`Budget::charge`].
    pub(crate) fn trial(&self, steps_max: u64) -> Budget {
        Budget::new(steps_max.min(self.steps_left()), self.deadline)
    }

    pub(crate) fn charge(&mut self, trial: &Budget) {
        self.steps_used += trial.steps_used;
    }

    pub(crate) fn steps_left(&self) -> u64 {
        self.steps_max.saturating_sub(self.steps_used)
    }

    /// Spends one step; the clock is read only every 4096 steps to keep steps cheap.
    fn spend(&mut self) -> Result<(), Limit> {
        self.steps_used += 1;
        if self.steps_used > self.steps_max {
            return Err(Limit::Steps);
        }
        match self.deadline {
            Some(deadline)
                if self.steps_used.is_multiple_of(4096) && Instant::now() >= deadline =>
            {
                Err(Limit::Time)
            }
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Linearizable,
    NotLinearizable,
    OutOfBudget(Limit),
}

const NIL: usize = usize::MAX;

/// The event list: node `2 * op` is op's call, `2 * op + 1` its return; `head` is a
/// sentinel. Lifting unlinks both nodes but keeps their own links, so unlifting in LIFO
/// order restores the list exactly (dancing links).
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl EventList {
    fn new(ops: &[KeyOp]) -> EventList {
        let mut order: Vec<usize> = (0..ops.len() * 2).collect();
        // Time order; at equal times calls come first, so touching intervals count as
        // concurrent (the permissive reading). Unknown returns sort last.
        order.sort_by_key(|&node| {
            let op = &ops[node / 2];
            let time = if node.is_multiple_of(2) {
                Some(op.call_ns)
            } else {
                op.return_ns
            };
            (time.is_none(), time.unwrap_or(0), node % 2, node)
        });
        let head = ops.len() * 2;
        let mut next = vec![NIL; head + 1];
        let mut prev = vec![NIL; head + 1];
        let mut last = head;
        for node in order {
            next[last] = node;
            prev[node] = last;
            last = node;
        }
        EventList { next, prev, head }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(2 * op);
        self.unlink(2 * op + 1);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(2 * op + 1);
        self.relink(2 * op);
    }
}

/// Searches for a linearization of `ops` starting from `initial`.
pub(crate) fn search(ops: &[KeyOp], initial: KeyState, budget: &mut Budget) -> Outcome {
    let mut list = EventList::new(ops);
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, KeyState)> = HashSet::new();
    let mut known_left = ops.iter().filter(|op| op.output.is_some()).count();
    // Each frame: the op linearized and the state before it.
    let mut stack: Vec<(usize, KeyState)> = Vec::new();
    let mut state = initial;
    let mut node = list.next[list.head];
    loop {
        if known_left == 0 {
            return Outcome::Linearizable;
        }
        if let Err(limit) = budget.spend() {
            return Outcome::OutOfBudget(limit);
        }
        // Known returns precede unknown ones, so with known ops left the walk meets the
        // return of one of them before running off the end.
        debug_assert_ne!(node, NIL);
        let op = node / 2;
        if node.is_multiple_of(2) {
            let next_state = step(state, ops[op].input, ops[op].output);
            match next_state.filter(|s| first_visit(&mut cache, &mut linearized, op, *s)) {
                Some(next_state) => {
                    stack.push((op, state));
                    list.lift(op);
                    known_left -= usize::from(ops[op].output.is_some());
                    state = next_state;
                    node = list.next[list.head];
                }
                None => node = list.next[node],
            }
        } else {
            // An op returned before anything could be linearized in front of it: undo the
            // most recent choice and try the next candidate after it.
            let Some((undone, before)) = stack.pop() else {
                return Outcome::NotLinearizable;
            };
            list.unlift(undone);
            clear_bit(&mut linearized, undone);
            known_left += usize::from(ops[undone].output.is_some());
            state = before;
            node = list.next[2 * undone];
        }
    }
}

/// Marks `op` linearized and records the configuration; unmarks it and returns false when
/// the configuration was explored before.
fn first_visit(
    cache: &mut HashSet<(Vec<u64>, KeyState)>,
    linearized: &mut [u64],
    op: usize,
    s: KeyState,
) -> bool {
    linearized[op / 64] |= 1 << (op % 64);
    let fresh = cache.insert((linearized.to_vec(), s));
    if !fresh {
        clear_bit(linearized, op);
    }
    fresh
}

fn clear_bit(bits: &mut [u64], op: usize) {
    bits[op / 64] &= !(1 << (op % 64));
}
