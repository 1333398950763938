//! Known linearizable and non-linearizable KV histories, and the checker's limits.

use std::time::Duration;

use keel_sim::history::{CasExpect, CasOk, History, HistoryError, Op};
use keel_sim::linearizability::{check, CheckKind, CheckOptions, Limit, Verdict, Violation};

fn verdict(ops: Vec<Op>) -> Verdict {
    check(&History::new(ops), &CheckOptions::default())
        .expect("well-formed history")
        .verdict
}

fn violation(ops: Vec<Op>) -> Violation {
    match verdict(ops) {
        Verdict::NotLinearizable(v) => v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

fn assert_linearizable(ops: Vec<Op>) {
    assert_eq!(verdict(ops), Verdict::Linearizable);
}

#[test]
fn sequential_put_then_read_is_linearizable() {
    assert_linearizable(vec![
        Op::put(1, 0, 10, b"x", b"1", 2),
        Op::get(2, 20, 30, b"x", Some(b"1"), 2, 2),
        Op::delete(1, 40, 50, b"x", true, 3),
        Op::get(2, 60, 70, b"x", None, 0, 3),
    ]);
}

#[test]
fn concurrent_read_may_see_either_side_of_a_write() {
    for (value, mod_rev, revision) in [(None, 0, 1), (Some(&b"1"[..]), 2, 2)] {
        let read = Op::get(2, 10, 20, b"x", value, mod_rev, revision);
        assert_linearizable(vec![Op::put(1, 0, 100, b"x", b"1", 2), read]);
    }
    // A read served at the write's revision must include the write.
    let v = violation(vec![
        Op::put(1, 0, 100, b"x", b"1", 2),
        Op::get(2, 10, 20, b"x", None, 0, 2),
    ]);
    assert_eq!(v.ops, vec![0, 1]);
}

#[test]
fn stale_read_after_a_completed_write_is_caught_by_value() {
    // The read's header revision is fine; its value is from before the write.
    let v = violation(vec![
        Op::put(1, 0, 10, b"x", b"1", 2),
        Op::get(2, 20, 30, b"x", None, 0, 2),
    ]);
    assert_eq!(v.check, CheckKind::Linearizability);
    assert_eq!(v.key.as_deref(), Some(&b"x"[..]));
    assert_eq!(v.ops, vec![0, 1]);
    assert!(v.minimal);
}

#[test]
fn stale_read_after_a_completed_write_is_caught_by_revision() {
    let v = violation(vec![
        Op::put(1, 0, 10, b"x", b"1", 2),
        Op::get(2, 20, 30, b"x", None, 0, 1),
    ]);
    assert_eq!(v.check, CheckKind::RevisionOrder);
    assert_eq!(v.ops, vec![0, 1]);
}

#[test]
fn concurrent_writes_read_back_in_contradictory_orders() {
    // Clients 2 and 3 each read twice while both writes are in flight: client 2 sees 1 then
    // 2, client 3 sees 2 then 1. No single order of the writes explains both.
    let v = violation(vec![
        Op::put(1, 0, 100, b"x", b"1", 2),
        Op::put(4, 0, 100, b"x", b"2", 3),
        Op::get(2, 10, 20, b"x", Some(b"1"), 2, 2),
        Op::get(2, 30, 40, b"x", Some(b"2"), 3, 3),
        Op::get(3, 10, 20, b"x", Some(b"2"), 3, 3),
        Op::get(3, 30, 40, b"x", Some(b"1"), 2, 3),
    ]);
    // Every revision is plausible on its own; only the per-key search sees the conflict.
    assert_eq!(v.check, CheckKind::Linearizability);
    assert!(v.minimal);
    assert_eq!(v.ops.len(), 2, "{v}");
    assert!(
        v.ops.contains(&5),
        "client 3's second read is in every conflict: {v}"
    );
}

#[test]
fn consistent_reads_of_concurrent_writes_are_linearizable() {
    assert_linearizable(vec![
        Op::put(1, 0, 100, b"x", b"1", 2),
        Op::put(4, 0, 100, b"x", b"2", 3),
        Op::get(2, 10, 20, b"x", Some(b"1"), 2, 2),
        Op::get(2, 30, 40, b"x", Some(b"2"), 3, 3),
        Op::get(3, 10, 20, b"x", Some(b"1"), 2, 2),
        Op::get(3, 30, 40, b"x", Some(b"2"), 3, 3),
    ]);
}

#[test]
fn lost_acknowledged_write_is_caught() {
    let v = violation(vec![
        Op::put(1, 0, 10, b"x", b"1", 2),
        Op::put(1, 20, 30, b"x", b"2", 3),
        Op::get(2, 40, 50, b"x", Some(b"1"), 2, 3),
    ]);
    assert_eq!(v.check, CheckKind::Linearizability);
    assert_eq!(
        v.ops,
        vec![1, 2],
        "the first put is not needed to explain the conflict"
    );
}

#[test]
fn unknown_outcome_write_that_shows_up_later_is_fine() {
    assert_linearizable(vec![
        Op::put_unknown(1, 0, b"x", b"1"),
        Op::get(2, 50, 60, b"x", None, 0, 1),
        Op::get(2, 1_000, 1_010, b"x", Some(b"1"), 2, 2),
    ]);
}

#[test]
fn unknown_outcome_write_that_never_shows_up_is_fine() {
    assert_linearizable(vec![
        Op::put_unknown(1, 0, b"x", b"1"),
        Op::get(2, 1_000, 1_010, b"x", None, 0, 1),
    ]);
}

#[test]
fn unknown_outcome_write_seen_before_it_was_called_is_caught() {
    let v = violation(vec![
        Op::get(2, 0, 10, b"x", Some(b"1"), 2, 2),
        Op::put_unknown(1, 20, b"x", b"1"),
    ]);
    assert_eq!(v.ops, vec![0], "the read alone has no explanation");
}

#[test]
fn unknown_outcome_write_that_vanishes_again_is_caught() {
    let v = violation(vec![
        Op::put_unknown(1, 0, b"x", b"1"),
        Op::get(2, 100, 110, b"x", Some(b"1"), 2, 2),
        Op::get(2, 200, 210, b"x", None, 0, 2),
    ]);
    assert_eq!(v.ops, vec![1, 2]);
}

#[test]
fn unknown_outcome_write_seen_with_an_impossible_mod_revision_is_caught() {
    // The unknown put was called after revision 5 was known to exist, so it cannot have
    // mod_revision 4.
    let v = violation(vec![
        Op::put(1, 0, 10, b"y", b"a", 5),
        Op::get(2, 20, 30, b"x", None, 0, 5),
        Op::put_unknown(1, 40, b"x", b"1"),
        Op::get(2, 100, 110, b"x", Some(b"1"), 4, 6),
    ]);
    assert_eq!(v.key.as_deref(), Some(&b"x"[..]));
    assert_eq!(v.ops, vec![1, 3]);
}

#[test]
fn two_lock_holders_from_create_if_absent_are_caught() {
    let create = |client, call, ret, rev| {
        let ok = CasOk {
            succeeded: true,
            revision: rev,
        };
        Op::cas(
            client,
            call,
            ret,
            b"lock",
            CasExpect::ModRevision(0),
            b"held",
            ok,
        )
    };
    let v = violation(vec![create(1, 0, 10, 2), create(2, 5, 15, 3)]);
    assert_eq!(v.ops, vec![0, 1]);
    let released = vec![
        create(1, 0, 10, 2),
        Op::delete(1, 11, 12, b"lock", true, 3),
        create(2, 20, 30, 4),
    ];
    assert_linearizable(released);
}

#[test]
fn cas_on_value_and_unknown_cas_are_modelled() {
    let ok = |succeeded, revision| CasOk {
        succeeded,
        revision,
    };
    assert_linearizable(vec![
        Op::put(1, 0, 10, b"x", b"a", 2),
        Op::cas(
            1,
            20,
            30,
            b"x",
            CasExpect::Value(b"a".to_vec()),
            b"b",
            ok(true, 3),
        ),
        Op::cas(
            2,
            40,
            50,
            b"x",
            CasExpect::Value(b"a".to_vec()),
            b"c",
            ok(false, 3),
        ),
        Op::cas_unknown(2, 60, b"x", CasExpect::ModRevision(3), b"d"),
        Op::get(1, 100, 110, b"x", Some(b"d"), 4, 4),
    ]);
    let v = violation(vec![
        Op::put(1, 0, 10, b"x", b"a", 2),
        Op::cas(
            2,
            40,
            50,
            b"x",
            CasExpect::Value(b"a".to_vec()),
            b"c",
            ok(false, 2),
        ),
    ]);
    assert_eq!(v.ops, vec![0, 1]);
}

#[test]
fn keys_are_checked_independently() {
    // Interleaved, overlapping operations on two keys; each key is fine on its own.
    assert_linearizable(vec![
        Op::put(1, 0, 100, b"a", b"1", 2),
        Op::put(2, 10, 90, b"b", b"1", 3),
        Op::get(3, 20, 30, b"a", None, 0, 1),
        Op::get(3, 40, 50, b"b", Some(b"1"), 3, 3),
        Op::get(4, 95, 120, b"a", Some(b"1"), 2, 3),
    ]);
    // A violation on `b` is reported for `b` alone, with indices into the whole history.
    let v = violation(vec![
        Op::put(1, 0, 10, b"a", b"1", 2),
        Op::put(1, 20, 30, b"b", b"1", 3),
        Op::get(2, 40, 50, b"a", Some(b"1"), 2, 3),
        Op::get(2, 60, 70, b"b", Some(b"2"), 3, 3),
    ]);
    assert_eq!(v.key.as_deref(), Some(&b"b"[..]));
    assert_eq!(v.ops, vec![3]);
}

#[test]
fn duplicate_write_revisions_are_caught() {
    let v = violation(vec![
        Op::put(1, 0, 10, b"a", b"1", 2),
        Op::put(2, 0, 10, b"b", b"1", 2),
    ]);
    assert_eq!(v.check, CheckKind::RevisionUnique);
}

#[test]
fn write_revisions_against_real_time_are_caught_across_keys() {
    let v = violation(vec![
        Op::put(1, 0, 10, b"a", b"1", 5),
        Op::put(2, 20, 30, b"b", b"1", 4),
    ]);
    assert_eq!(v.check, CheckKind::RevisionOrder);
    assert_eq!(v.ops, vec![0, 1]);
}

#[test]
fn malformed_recordings_are_rejected() {
    let mut op = Op::put(1, 10, 5, b"a", b"1", 2);
    assert_eq!(
        check(&History::new(vec![op.clone()]), &CheckOptions::default()),
        Err(HistoryError::ReturnBeforeCall { op: 0 })
    );
    op.return_ns = None;
    let err = check(&History::new(vec![op]), &CheckOptions::default()).unwrap_err();
    assert_eq!(err, HistoryError::ResultWithoutReturn { op: 0 });
}

/// A read of an overwritten value, concurrent with many unknown-outcome writes: to prove it
/// stale, the search must try every subset and order of the unknown writes.
fn pathological(writes: u64) -> History {
    let mut ops = vec![
        Op::put(0, 0, 10, b"x", b"old", 2),
        Op::put(0, 20, 30, b"x", b"new", 3),
    ];
    ops.extend((0..writes).map(|i| Op::put_unknown(i + 1, 40, b"x", &i.to_be_bytes())));
    ops.push(Op::get(0, 40, 1_000, b"x", Some(b"old"), 2, 3));
    History::new(ops)
}

#[test]
fn step_bound_returns_unknown() {
    let options = CheckOptions {
        steps_max: 200_000,
        duration_max: None,
        minimize: true,
    };
    let report = check(&pathological(40), &options).unwrap();
    assert_eq!(
        report.verdict,
        Verdict::Unknown {
            key: b"x".to_vec(),
            limit: Limit::Steps
        }
    );
    assert!(report.steps <= 200_001);
}

#[test]
fn time_bound_returns_unknown() {
    let options = CheckOptions {
        steps_max: u64::MAX,
        duration_max: Some(Duration::from_millis(200)),
        minimize: true,
    };
    let report = check(&pathological(40), &options).unwrap();
    assert_eq!(
        report.verdict,
        Verdict::Unknown {
            key: b"x".to_vec(),
            limit: Limit::Time
        }
    );
}

#[test]
fn small_pathological_history_is_decided() {
    // The same shape with few writes is small enough to search exhaustively.
    let v = match check(&pathological(8), &CheckOptions::default())
        .unwrap()
        .verdict
    {
        Verdict::NotLinearizable(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(v.ops, vec![1, 10], "{v}");
    assert!(v.minimal);
}
