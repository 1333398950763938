//! The sequential specification of one etcd key, as the linearizability search needs it.
//! Owns the key's abstract state and the step function; must never look at time (ordering
//! by time is the search's business).
//!
//! Besides the value, the state carries what revisions tell us: the key's `mod_revision`
//! (exact, or only a lower bound when the last write had an unknown outcome) and `floor`, a
//! lower bound on the store's global revision at this point of the linearization. etcd
//! assigns revisions in apply order, which is the linearization order, so a write placed
//! here must get a revision above `floor` and a read must be served at `floor` or later.

use crate::history::Revision;

/// A value, interned per key.
pub(crate) type ValueId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ModRev {
    Known(Revision),
    /// Written by an operation with an unknown outcome: only a lower bound is known.
    AtLeast(Revision),
}

/// The key's value, as far as the model knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Val {
    Absent,
    Is(ValueId),
    /// Anything, including absent: only in [`KeyState::ANY`] until an operation pins it.
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyState {
    value: Val,
    mod_rev: ModRev,
    floor: Revision,
}

impl KeyState {
    /// The key does not exist in a fresh store.
    pub(crate) const INITIAL: KeyState = KeyState {
        value: Val::Absent,
        mod_rev: ModRev::Known(0),
        floor: 0,
    };

    /// Every state at once: used to check a window cut out of the middle of a history,
    /// whose starting state is whatever the operations before it left.
    pub(crate) const ANY: KeyState = KeyState {
        value: Val::Any,
        mod_rev: ModRev::AtLeast(0),
        floor: 0,
    };

    fn present(&self) -> bool {
        self.value != Val::Absent
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    ModRev(Revision),
    Value(ValueId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    Put(ValueId),
    Get,
    Delete,
    Cas { expect: Expect, new: ValueId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    Put {
        rev: Revision,
    },
    Get {
        value: Option<ValueId>,
        mod_rev: Revision,
        rev: Revision,
    },
    Delete {
        deleted: bool,
        rev: Revision,
    },
    Cas {
        succeeded: bool,
        rev: Revision,
    },
}

/// Applies `input` with the observed `output` (`None` = unknown outcome) to `state`;
/// `None` when the operation cannot take effect here.
///
/// An operation with an unknown outcome may also never take effect, which the search
/// already allows, so transitions that would leave the state unchanged are not offered for
/// it. That also makes the model deterministic: a compare whose truth is unknown can only
/// matter by succeeding.
pub(crate) fn step(state: KeyState, input: Input, output: Option<Output>) -> Option<KeyState> {
    match output {
        Some(output) => step_known(state, input, output),
        None => step_unknown(state, input),
    }
}

fn step_known(s: KeyState, input: Input, output: Output) -> Option<KeyState> {
    match (input, output) {
        (Input::Put(v), Output::Put { rev }) => write_known(s, Some(v), rev),
        (
            Input::Get,
            Output::Get {
                value,
                mod_rev,
                rev,
            },
        ) => read_value(s, value, mod_rev, rev),
        (Input::Delete, Output::Delete { deleted: true, rev }) => {
            s.present().then(|| write_known(s, None, rev))?
        }
        (
            Input::Delete,
            Output::Delete {
                deleted: false,
                rev,
            },
        ) => match s.value {
            Val::Absent | Val::Any => read_known(
                KeyState {
                    value: Val::Absent,
                    mod_rev: ModRev::Known(0),
                    ..s
                },
                rev,
            ),
            Val::Is(_) => None,
        },
        (Input::Cas { expect, new }, Output::Cas { succeeded, rev }) => {
            match (compare(s, expect), succeeded) {
                (Truth::True | Truth::Maybe, true) => write_known(s, Some(new), rev),
                (Truth::False | Truth::Maybe, false) => read_known(s, rev),
                _ => None,
            }
        }
        _ => unreachable!("input and output kinds are paired when the history is partitioned"),
    }
}

fn step_unknown(s: KeyState, input: Input) -> Option<KeyState> {
    match input {
        Input::Put(v) => Some(write_unknown(s, Some(v))),
        Input::Get => None,
        Input::Delete => s.present().then(|| write_unknown(s, None)),
        Input::Cas { expect, new } => match compare(s, expect) {
            Truth::True | Truth::Maybe => Some(write_unknown(s, Some(new))),
            Truth::False => None,
        },
    }
}

enum Truth {
    True,
    False,
    /// Compare against a `mod_revision` known only as a lower bound.
    Maybe,
}

fn compare(s: KeyState, expect: Expect) -> Truth {
    let holds = |b: bool| if b { Truth::True } else { Truth::False };
    match (expect, s.value, s.mod_rev) {
        (_, Val::Any, _) => Truth::Maybe,
        (Expect::Value(want), value, _) => holds(value == Val::Is(want)),
        (Expect::ModRev(want), Val::Absent, _) => holds(want == 0),
        (Expect::ModRev(want), Val::Is(_), ModRev::Known(have)) => holds(want == have),
        (Expect::ModRev(want), Val::Is(_), ModRev::AtLeast(low)) if want >= low => Truth::Maybe,
        (Expect::ModRev(_), Val::Is(_), ModRev::AtLeast(_)) => Truth::False,
    }
}

/// A write with a known revision: the revision must be above everything seen before it.
fn write_known(s: KeyState, value: Option<ValueId>, rev: Revision) -> Option<KeyState> {
    (rev > s.floor).then(|| {
        let mod_rev = ModRev::Known(if value.is_some() { rev } else { 0 });
        KeyState {
            value: value.map_or(Val::Absent, Val::Is),
            mod_rev,
            floor: rev,
        }
    })
}

/// A write whose revision is unknown: it is at least one above the floor.
fn write_unknown(s: KeyState, value: Option<ValueId>) -> KeyState {
    let floor = s.floor + 1;
    let mod_rev = if value.is_some() {
        ModRev::AtLeast(floor)
    } else {
        ModRev::Known(0)
    };
    KeyState {
        value: value.map_or(Val::Absent, Val::Is),
        mod_rev,
        floor,
    }
}

/// An outcome that changed nothing but was served at header revision `rev`.
fn read_known(s: KeyState, rev: Revision) -> Option<KeyState> {
    (rev >= s.floor).then_some(KeyState { floor: rev, ..s })
}

fn read_value(
    s: KeyState,
    value: Option<ValueId>,
    mod_rev: Revision,
    rev: Revision,
) -> Option<KeyState> {
    let seen = value.map_or(Val::Absent, Val::Is);
    if (s.value != seen && s.value != Val::Any) || mod_rev > rev {
        return None;
    }
    let s = KeyState { value: seen, ..s };
    let mod_rev = match (value, s.mod_rev) {
        (None, _) => ModRev::Known(0),
        (Some(_), ModRev::Known(have)) if have == mod_rev => ModRev::Known(have),
        (Some(_), ModRev::AtLeast(low)) if mod_rev >= low => ModRev::Known(mod_rev),
        _ => return None,
    };
    read_known(KeyState { mod_rev, ..s }, rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_needs_a_revision_above_the_floor() {
        let s = step(
            KeyState::INITIAL,
            Input::Put(1),
            Some(Output::Put { rev: 5 }),
        )
        .unwrap();
        assert!(step(s, Input::Put(2), Some(Output::Put { rev: 5 })).is_none());
        assert!(step(s, Input::Put(2), Some(Output::Put { rev: 6 })).is_some());
    }

    #[test]
    fn read_refines_an_unknown_mod_revision() {
        let s = step(KeyState::INITIAL, Input::Put(1), None).unwrap();
        let read = Output::Get {
            value: Some(1),
            mod_rev: 7,
            rev: 9,
        };
        let s = step(s, Input::Get, Some(read)).unwrap();
        assert_eq!(s.mod_rev, ModRev::Known(7));
        assert_eq!(s.floor, 9);
        let stale_mod_rev = Output::Get {
            value: Some(1),
            mod_rev: 6,
            rev: 9,
        };
        assert!(step(s, Input::Get, Some(stale_mod_rev)).is_none());
    }

    #[test]
    fn unknown_cas_against_unknown_mod_revision_may_succeed() {
        let s = step(KeyState::INITIAL, Input::Put(1), None).unwrap();
        let cas = Input::Cas {
            expect: Expect::ModRev(3),
            new: 2,
        };
        assert_eq!(step(s, cas, None).map(|n| n.value), Some(Val::Is(2)));
        let below_bound = Input::Cas {
            expect: Expect::ModRev(0),
            new: 2,
        };
        assert!(step(s, below_bound, None).is_none());
    }

    #[test]
    fn any_state_is_pinned_by_the_first_read() {
        let read = Output::Get {
            value: Some(3),
            mod_rev: 7,
            rev: 9,
        };
        let s = step(KeyState::ANY, Input::Get, Some(read)).unwrap();
        assert_eq!(
            (s.value, s.mod_rev, s.floor),
            (Val::Is(3), ModRev::Known(7), 9)
        );
        let absent = Output::Delete {
            deleted: false,
            rev: 2,
        };
        assert_eq!(
            step(KeyState::ANY, Input::Delete, Some(absent))
                .unwrap()
                .value,
            Val::Absent
        );
        let present = Output::Delete {
            deleted: true,
            rev: 2,
        };
        assert_eq!(
            step(KeyState::ANY, Input::Delete, Some(present))
                .unwrap()
                .value,
            Val::Absent
        );
    }

    #[test]
    fn unknown_get_never_needs_linearizing() {
        assert!(step(KeyState::INITIAL, Input::Get, None).is_none());
    }
}
