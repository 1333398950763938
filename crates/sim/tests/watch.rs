//! Watch streams that keep and that break each of etcd's watch guarantees.

use keel_sim::watch::{
    validate_watch, Guarantee, WatchEvent, WatchReport, WatchResponse, WatchSpec, WatchViolation,
};

/// rev 2: put a=1; rev 3: put b=1; rev 4: txn (put a=2, put c=1); rev 5: delete a;
/// rev 6: put z=1 (outside the watched range [a, d)).
fn committed() -> Vec<WatchEvent> {
    vec![
        WatchEvent::put(b"a", b"1", 2),
        WatchEvent::put(b"b", b"1", 3),
        WatchEvent::put(b"a", b"2", 4),
        WatchEvent::put(b"c", b"1", 4),
        WatchEvent::delete(b"a", 5),
        WatchEvent::put(b"z", b"1", 6),
    ]
}

fn range(start_revision: i64) -> WatchSpec {
    WatchSpec {
        key: b"a".to_vec(),
        range_end: b"d".to_vec(),
        start_revision,
        ..WatchSpec::default()
    }
}

fn a2() -> WatchEvent {
    WatchEvent::put(b"a", b"1", 2)
}
fn b3() -> WatchEvent {
    WatchEvent::put(b"b", b"1", 3)
}
fn a4() -> WatchEvent {
    WatchEvent::put(b"a", b"2", 4)
}
fn c4() -> WatchEvent {
    WatchEvent::put(b"c", b"1", 4)
}
fn del_a5() -> WatchEvent {
    WatchEvent::delete(b"a", 5)
}

fn check(spec: &WatchSpec, responses: Vec<WatchResponse>) -> Result<WatchReport, WatchViolation> {
    validate_watch(&committed(), spec, &responses)
}

fn broken(spec: &WatchSpec, responses: Vec<WatchResponse>) -> Guarantee {
    check(spec, responses)
        .expect_err("the stream breaks a guarantee")
        .guarantee
}

#[test]
fn complete_stream_with_progress_is_valid() {
    let report = check(
        &range(2),
        vec![
            WatchResponse::created(1),
            WatchResponse::events(3, vec![a2(), b3()]),
            WatchResponse::events(4, vec![a4(), c4()]),
            WatchResponse::events(5, vec![del_a5()]),
            WatchResponse::progress(6),
        ],
    )
    .unwrap();
    assert_eq!(
        report,
        WatchReport {
            events_delivered: 5,
            synced_through: 6
        }
    );
}

#[test]
fn a_stream_may_stop_early() {
    let report = check(
        &range(2),
        vec![
            WatchResponse::created(6),
            WatchResponse::events(6, vec![a2()]),
        ],
    )
    .unwrap();
    assert_eq!(report.events_delivered, 1);
}

#[test]
fn filters_and_single_key_watches_are_respected() {
    let puts_only = WatchSpec {
        no_delete: true,
        ..WatchSpec::key(b"a", 2)
    };
    let responses = vec![
        WatchResponse::created(6),
        WatchResponse::events(2, vec![a2()]),
        WatchResponse::events(4, vec![a4()]),
    ];
    assert!(check(&puts_only, responses.clone()).is_ok());
    let mut with_delete = responses;
    with_delete.push(WatchResponse::events(5, vec![del_a5()]));
    assert_eq!(broken(&puts_only, with_delete), Guarantee::Valid);
}

#[test]
fn out_of_order_events_break_ordered() {
    let responses = vec![
        WatchResponse::created(1),
        WatchResponse::events(3, vec![b3(), a2()]),
    ];
    assert_eq!(broken(&range(2), responses), Guarantee::Ordered);
    let swapped = vec![
        WatchResponse::created(1),
        WatchResponse::events(4, vec![a2(), b3(), c4(), a4()]),
    ];
    assert_eq!(broken(&range(2), swapped), Guarantee::Ordered);
}

#[test]
fn duplicate_event_breaks_unique() {
    let responses = vec![
        WatchResponse::created(1),
        WatchResponse::events(2, vec![a2()]),
        WatchResponse::events(3, vec![a2(), b3()]),
    ];
    assert_eq!(broken(&range(2), responses), Guarantee::Unique);
}

#[test]
fn skipped_event_breaks_reliable() {
    let responses = vec![
        WatchResponse::created(1),
        WatchResponse::events(4, vec![a2(), a4(), c4()]),
    ];
    let v = check(&range(2), responses).unwrap_err();
    assert_eq!(v.guarantee, Guarantee::Reliable);
    assert_eq!((v.response, v.event), (1, Some(1)));
}

#[test]
fn split_revision_breaks_atomic_unless_fragmented() {
    let split = vec![
        WatchResponse::created(1),
        WatchResponse::events(4, vec![a2(), b3(), a4()]),
        WatchResponse::events(4, vec![c4()]),
    ];
    assert_eq!(broken(&range(2), split.clone()), Guarantee::Atomic);
    let mut fragmented = split;
    fragmented[1].fragment = true;
    assert!(check(&range(2), fragmented).is_ok());
}

#[test]
fn resumed_watch_starts_exactly_at_its_revision() {
    let resumed = vec![
        WatchResponse::created(6),
        WatchResponse::events(4, vec![a4(), c4()]),
    ];
    assert!(check(&range(4), resumed).is_ok());
    let too_early = vec![
        WatchResponse::created(6),
        WatchResponse::events(4, vec![b3(), a4(), c4()]),
    ];
    assert_eq!(broken(&range(4), too_early), Guarantee::Resumable);
    let too_late = vec![
        WatchResponse::created(6),
        WatchResponse::events(5, vec![del_a5()]),
    ];
    assert_eq!(broken(&range(3), too_late), Guarantee::Resumable);
}

#[test]
fn watch_from_now_starts_after_the_created_header() {
    let responses = vec![
        WatchResponse::created(3),
        WatchResponse::events(4, vec![a4(), c4()]),
    ];
    assert!(check(&range(0), responses).is_ok());
    let stale = vec![
        WatchResponse::created(3),
        WatchResponse::events(3, vec![b3()]),
    ];
    assert_eq!(broken(&range(0), stale), Guarantee::Resumable);
}

#[test]
fn premature_progress_notification_is_caught() {
    let responses = vec![
        WatchResponse::created(1),
        WatchResponse::events(3, vec![a2(), b3()]),
        WatchResponse::progress(4),
    ];
    assert_eq!(broken(&range(2), responses), Guarantee::Progress);
    let fine = vec![
        WatchResponse::created(1),
        WatchResponse::events(3, vec![a2(), b3()]),
        WatchResponse::progress(3),
    ];
    assert!(check(&range(2), fine).is_ok());
}

#[test]
fn invented_or_altered_events_break_valid() {
    let altered = vec![
        WatchResponse::created(1),
        WatchResponse::events(2, vec![WatchEvent::put(b"a", b"9", 2)]),
    ];
    assert_eq!(broken(&range(2), altered), Guarantee::Valid);
    let out_of_range = vec![
        WatchResponse::created(1),
        WatchResponse::events(5, vec![a2(), b3(), a4(), c4(), del_a5()]),
        WatchResponse::events(6, vec![WatchEvent::put(b"z", b"1", 6)]),
    ];
    assert_eq!(broken(&range(2), out_of_range), Guarantee::Valid);
}

#[test]
fn compaction_is_only_reported_when_needed_revisions_are_gone() {
    let compacted = WatchResponse {
        header_revision: 6,
        canceled: true,
        compact_revision: 4,
        ..WatchResponse::default()
    };
    assert!(check(
        &range(2),
        vec![WatchResponse::created(6), compacted.clone()]
    )
    .is_ok());
    let needless = WatchResponse {
        compact_revision: 2,
        ..compacted
    };
    assert_eq!(
        broken(&range(2), vec![WatchResponse::created(6), needless]),
        Guarantee::Reliable
    );
}

#[test]
fn framing_errors_are_caught() {
    assert_eq!(
        broken(&range(2), vec![WatchResponse::events(2, vec![a2()])]),
        Guarantee::Protocol
    );
    let canceled = WatchResponse {
        canceled: true,
        ..WatchResponse::default()
    };
    let after_cancel = vec![
        WatchResponse::created(1),
        canceled,
        WatchResponse::events(2, vec![a2()]),
    ];
    assert_eq!(broken(&range(2), after_cancel), Guarantee::Protocol);
    let header_behind = vec![
        WatchResponse::created(1),
        WatchResponse::events(2, vec![a2(), b3()]),
    ];
    assert_eq!(broken(&range(2), header_behind), Guarantee::Protocol);
}

#[test]
fn prefix_spec_covers_exactly_the_prefix() {
    let spec = WatchSpec::prefix(b"a", 2);
    assert_eq!(spec.range_end, b"b".to_vec());
    let responses = vec![
        WatchResponse::created(6),
        WatchResponse::events(2, vec![a2()]),
        WatchResponse::events(4, vec![a4()]),
        WatchResponse::events(5, vec![del_a5()]),
    ];
    assert!(check(&spec, responses).is_ok());
    assert_eq!(WatchSpec::prefix(&[0xff], 0).range_end, vec![0]);
}
