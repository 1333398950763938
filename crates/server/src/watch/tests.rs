//! Hub unit tests: no gRPC, an in-memory store written the way apply writes it (commit, then
//! publish). Every wait is a bounded loop; none sleeps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_storage::{Event, EventKind, Store};

use super::*;

/// Upper bound on drain/catch-up rounds in one `drain` call.
const DRAIN_ROUNDS_MAX: usize = 100_000;

struct Fixture {
    store: Arc<Store>,
    hub: Arc<WatchHub>,
}

fn config() -> WatchConfig {
    WatchConfig {
        progress_notify_interval: Duration::from_millis(50),
        ..WatchConfig::default()
    }
}

impl Fixture {
    fn new(config: WatchConfig) -> Fixture {
        let store = Arc::new(Store::in_memory().expect("store"));
        let hub = WatchHub::new(store.clone(), config).expect("hub");
        Fixture { store, hub }
    }

    /// Commits one txn without publishing it (what apply does before `publish`).
    fn commit(&self, f: impl FnOnce(&mut keel_storage::TxnWriter<'_>)) -> (i64, Vec<Event>) {
        let mut batch = self.store.write().expect("write");
        let mut txn = batch.begin_txn();
        f(&mut txn);
        let outcome = txn.end();
        batch.commit(false).expect("commit");
        (outcome.revision, outcome.events)
    }

    fn put(&self, key: &str, value: &str) -> i64 {
        let (revision, events) = self.commit(|t| {
            t.put(key.as_bytes(), value.as_bytes(), 0).expect("put");
        });
        self.hub.publish(&[(revision, events)], false);
        revision
    }

    fn delete(&self, key: &str) -> i64 {
        let (revision, events) = self.commit(|t| {
            t.delete_range(key.as_bytes(), b"").expect("delete");
        });
        self.hub.publish(&[(revision, events)], false);
        revision
    }

    fn compact(&self, revision: i64) {
        self.store.compact(revision).expect("compact");
    }
}

fn watch(key: &str, start_revision: i64) -> CreateWatch {
    CreateWatch {
        key: key.as_bytes().to_vec(),
        start_revision,
        ..CreateWatch::default()
    }
}

fn prefix(p: &str, start_revision: i64) -> CreateWatch {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    CreateWatch {
        range_end: end,
        ..watch(p, start_revision)
    }
}

/// Creates a watch and returns its ID, checking the `Created` reply comes first.
fn create(stream: &StreamHandle, request: &CreateWatch) -> i64 {
    stream.create(request);
    match stream.pop() {
        Some(WatchMessage::Created { watch_id, .. }) => watch_id,
        other => panic!("expected Created, got {other:?}"),
    }
}

/// Everything the stream has to say now, including all catch-up work.
fn drain(stream: &StreamHandle) -> Vec<WatchMessage> {
    let mut out = Vec::new();
    for _ in 0..DRAIN_ROUNDS_MAX {
        while let Some(message) = stream.pop() {
            out.push(message);
        }
        if !stream.catch_up() {
            return out;
        }
    }
    panic!("stream did not settle in {DRAIN_ROUNDS_MAX} rounds");
}

/// (watch ID, header revision, [(event revision, key, is_put)]) of each events message.
type Delivered = Vec<(i64, i64, Vec<(i64, String, bool)>)>;

fn events_of(messages: &[WatchMessage]) -> Delivered {
    messages
        .iter()
        .filter_map(|m| match m {
            WatchMessage::Events {
                watch_id,
                revision,
                events,
                ..
            } => Some((
                *watch_id,
                *revision,
                events
                    .iter()
                    .map(|e| {
                        (
                            e.kv.mod_revision,
                            String::from_utf8_lossy(&e.kv.key).into_owned(),
                            e.kind == EventKind::Put,
                        )
                    })
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

/// Event revisions in delivery order, flattened.
fn revisions(messages: &[WatchMessage]) -> Vec<i64> {
    events_of(messages)
        .into_iter()
        .flat_map(|(_, _, events)| events.into_iter().map(|(rev, _, _)| rev))
        .collect()
}

#[test]
fn publish_reaches_synced_watchers_in_order_with_their_revision() {
    let f = Fixture::new(config());
    let stream = f.hub.open_stream();
    let id = create(&stream, &prefix("a", 0));
    let r1 = f.put("a1", "x");
    let _ = f.put("b1", "x");
    let r3 = f.put("a2", "y");
    let r4 = f.delete("a1");
    let got = events_of(&drain(&stream));
    assert_eq!(
        got,
        vec![
            (id, r1, vec![(r1, "a1".into(), true)]),
            (id, r3, vec![(r3, "a2".into(), true)]),
            (id, r4, vec![(r4, "a1".into(), false)]),
        ]
    );
}

#[test]
fn one_created_per_request_in_order_with_etcd_ids() {
    let f = Fixture::new(config());
    let stream = f.hub.open_stream();
    let requests = [
        watch("a", 0),
        CreateWatch {
            watch_id: 1,
            ..watch("b", 0)
        },
        watch("c", 0),
        CreateWatch {
            watch_id: 1,
            ..watch("d", 0)
        },
        CreateWatch {
            range_end: b"a".to_vec(),
            ..watch("b", 0)
        },
        watch("e", -1),
        watch("f", 0),
    ];
    for r in &requests {
        stream.create(r);
    }
    let replies = drain(&stream);
    let summary: Vec<String> = replies
        .iter()
        .map(|m| match m {
            WatchMessage::Created { watch_id, .. } => format!("created {watch_id}"),
            WatchMessage::Rejected { reason, .. } => format!("rejected {reason}"),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "created 0".to_string(),
            "created 1".into(),
            // Auto IDs skip the client's 1.
            "created 2".into(),
            format!("rejected {DUPLICATE_WATCH_ID}"),
            format!("rejected {EMPTY_WATCHER_RANGE}"),
            "rejected etcdserver: mvcc: required revision has been compacted".into(),
            "created 3".into(),
        ]
    );
    assert_eq!(stream.active_watchers(), 4);
}

#[test]
fn filters_drop_puts_or_deletes() {
    let f = Fixture::new(config());
    let stream = f.hub.open_stream();
    let no_put = create(
        &stream,
        &CreateWatch {
            no_put: true,
            ..watch("k", 0)
        },
    );
    let no_delete = create(
        &stream,
        &CreateWatch {
            no_delete: true,
            ..watch("k", 0)
        },
    );
    let put = f.put("k", "v");
    let del = f.delete("k");
    let got = events_of(&drain(&stream));
    assert_eq!(
        got,
        vec![
            (no_delete, put, vec![(put, "k".into(), true)]),
            (no_put, del, vec![(del, "k".into(), false)]),
        ]
    );
}

#[test]
fn prev_kv_travels_with_events_when_asked() {
    let f = Fixture::new(config());
    f.put("k", "old");
    let stream = f.hub.open_stream();
    create(
        &stream,
        &CreateWatch {
            prev_kv: true,
            ..watch("k", 0)
        },
    );
    f.put("k", "new");
    let del = f.delete("k");
    let messages = drain(&stream);
    assert_eq!(messages.len(), 2);
    let WatchMessage::Events {
        events, prev_kv, ..
    } = &messages[0]
    else {
        panic!("events expected: {messages:?}");
    };
    assert!(prev_kv);
    assert_eq!(events[0].kv.value, b"new");
    assert_eq!(events[0].prev_kv.as_ref().expect("prev").value, b"old");
    let WatchMessage::Events { events, .. } = &messages[1] else {
        panic!("events expected");
    };
    assert_eq!(events[0].kind, EventKind::Delete);
    assert_eq!(events[0].kv.mod_revision, del);
    assert_eq!(events[0].prev_kv.as_ref().expect("prev").value, b"new");
}

#[test]
fn history_replays_from_a_past_revision_then_goes_live() {
    let f = Fixture::new(config());
    let revs: Vec<i64> = (0..10).map(|i| f.put(&format!("k{i}"), "v")).collect();
    let stream = f.hub.open_stream();
    create(&stream, &prefix("k", revs[3]));
    assert_eq!(
        f.hub.stats().unsynced,
        1,
        "a past start revision catches up"
    );
    let replay = drain(&stream);
    assert_eq!(revisions(&replay), revs[3..].to_vec());
    // The replay's header revision covers everything up to the last published revision.
    assert!(events_of(&replay).iter().all(|(_, rev, _)| *rev == revs[9]));
    assert_eq!(f.hub.stats().synced, 1, "joined the synced set");
    let live = f.put("k-live", "v");
    assert_eq!(revisions(&drain(&stream)), vec![live]);
}

#[test]
fn future_start_revision_reports_nothing_before_it() {
    let f = Fixture::new(config());
    let now = f.put("k", "1");
    let stream = f.hub.open_stream();
    create(&stream, &watch("k", now + 3));
    f.put("k", "2");
    f.put("k", "3");
    let third = f.put("k", "4");
    let fourth = f.put("k", "5");
    assert_eq!(revisions(&drain(&stream)), vec![third, fourth]);
}

#[test]
fn catch_up_joins_without_gap_or_duplicate_under_concurrent_publishes() {
    // Tiny chunks and a tiny buffer force many catch-up steps, demotions and joins while
    // a writer publishes concurrently.
    let f = Fixture::new(WatchConfig {
        catch_up_chunk_events_max: 5,
        stream_buffer_messages_max: 3,
        ..config()
    });
    let first = f.put("k", "0");
    for i in 1..100 {
        f.put("k", &i.to_string());
    }
    let stream = f.hub.open_stream();
    create(&stream, &prefix("k", first));
    let writes = 1000;
    let writer = {
        let (store, hub) = (f.store.clone(), f.hub.clone());
        std::thread::spawn(move || {
            let f = Fixture { store, hub };
            let mut last = None;
            for i in 0..writes {
                last = Some(f.put("k", &i.to_string()));
            }
            last
        })
    };
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !writer.is_finished() {
        assert!(Instant::now() < deadline, "writer did not finish");
        got.extend(revisions(&drain(&stream)));
    }
    let last = writer.join().expect("writer").expect("wrote");
    got.extend(revisions(&drain(&stream)));
    let expected: Vec<i64> = (first..=last).collect();
    assert_eq!(got.len(), expected.len(), "every revision exactly once");
    assert_eq!(got, expected);
    assert_eq!(f.hub.stats().synced, 1);
}

#[test]
fn slow_consumer_is_demoted_and_recovers_without_loss_while_others_stay_prompt() {
    let f = Fixture::new(WatchConfig {
        stream_buffer_messages_max: 4,
        ..config()
    });
    let slow = f.hub.open_stream();
    let prompt = f.hub.open_stream();
    create(&slow, &prefix("k", 0));
    create(&prompt, &prefix("k", 0));
    let mut written = Vec::new();
    for i in 0..50 {
        let rev = f.put(&format!("k{i}"), "v");
        written.push(rev);
        // The prompt stream has this revision queued the moment publish returns.
        match prompt.pop() {
            Some(WatchMessage::Events { revision, .. }) => assert_eq!(revision, rev),
            other => panic!("prompt watcher missed revision {rev}: {other:?}"),
        }
    }
    let stats = f.hub.stats();
    assert_eq!(
        (stats.synced, stats.unsynced),
        (1, 1),
        "slow watcher demoted"
    );
    assert!(slow.buffered() <= 4, "slow buffer stays bounded");
    assert_eq!(revisions(&drain(&slow)), written, "no loss, no duplicate");
    assert_eq!(f.hub.stats().unsynced, 0, "slow watcher rejoined");
    let live = f.put("k-live", "v");
    assert_eq!(slow.buffered(), 1, "rejoined watcher is fed by publish");
    assert_eq!(revisions(&drain(&slow)), vec![live]);
}

#[test]
fn compacted_start_is_created_then_canceled_with_the_compact_revision() {
    let f = Fixture::new(config());
    let revs: Vec<i64> = (0..6).map(|i| f.put("k", &i.to_string())).collect();
    let compact = revs[3];
    f.compact(compact);
    let stream = f.hub.open_stream();
    let below = create(&stream, &watch("k", revs[1]));
    let at = create(&stream, &watch("k", compact));
    let above = create(&stream, &watch("k", compact + 1));
    let messages = drain(&stream);
    let cancels: Vec<(i64, i64)> = messages
        .iter()
        .filter_map(|m| match m {
            WatchMessage::Canceled {
                watch_id,
                compact_revision,
                ..
            } => Some((*watch_id, *compact_revision)),
            _ => None,
        })
        .collect();
    // etcd's value below the compact revision; at it, the first revision keel can replay.
    assert_eq!(cancels, vec![(below, compact), (at, compact + 1)]);
    assert_eq!(
        events_of(&messages),
        vec![(
            above,
            revs[5],
            vec![(revs[4], "k".into(), true), (revs[5], "k".into(), true)]
        )]
    );
    assert_eq!(f.hub.stats().watchers, 1);
    // The ended ID stays taken until the client cancels it; that cancel is answered.
    // (`at` is 1: ID 0 in a request means "choose one".)
    stream.create(&CreateWatch {
        watch_id: at,
        ..watch("x", 0)
    });
    assert!(matches!(stream.pop(), Some(WatchMessage::Rejected { .. })));
    stream.cancel(at);
    assert!(matches!(
        stream.pop(),
        Some(WatchMessage::Canceled { watch_id, compact_revision: 0, .. }) if watch_id == at
    ));
}

#[test]
fn watcher_that_falls_behind_past_a_compaction_is_canceled() {
    let f = Fixture::new(WatchConfig {
        stream_buffer_messages_max: 2,
        ..config()
    });
    let stream = f.hub.open_stream();
    let id = create(&stream, &watch("k", 0));
    let revs: Vec<i64> = (0..6).map(|i| f.put("k", &i.to_string())).collect();
    assert_eq!(f.hub.stats().unsynced, 1);
    f.compact(revs[4]);
    let messages = drain(&stream);
    assert_eq!(
        revisions(&messages),
        revs[..2].to_vec(),
        "what was buffered"
    );
    assert!(
        matches!(
            messages.last(),
            Some(WatchMessage::Canceled { watch_id, compact_revision, .. })
                if *watch_id == id && *compact_revision == revs[4]
        ),
        "{messages:?}"
    );
    assert_eq!(f.hub.stats().watchers, 0);
}

#[test]
fn cancel_ends_a_watch_and_unknown_ids_get_no_answer() {
    let f = Fixture::new(config());
    let stream = f.hub.open_stream();
    let id = create(&stream, &watch("k", 0));
    f.put("k", "1");
    stream.cancel(id);
    stream.cancel(42);
    f.put("k", "2");
    let messages = drain(&stream);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(matches!(messages[0], WatchMessage::Events { .. }));
    assert!(matches!(
        messages[1],
        WatchMessage::Canceled { watch_id, compact_revision: 0, .. } if watch_id == id
    ));
    assert_eq!(f.hub.stats().watchers, 0);
}

#[test]
fn progress_request_is_answered_once_every_watcher_is_synced() {
    let f = Fixture::new(config());
    let first = f.put("k", "0");
    let last = f.put("k", "1");
    let stream = f.hub.open_stream();
    create(&stream, &watch("other", 0));
    stream.request_progress();
    assert!(matches!(
        stream.pop(),
        Some(WatchMessage::Progress { watch_id: INVALID_WATCH_ID, revision }) if revision == last
    ));
    create(&stream, &watch("k", first));
    stream.request_progress();
    stream.request_progress();
    assert!(
        stream.pop().is_none(),
        "withheld while a watcher catches up"
    );
    let messages = drain(&stream);
    assert_eq!(revisions(&messages), vec![first, last]);
    let progress: Vec<_> = messages
        .iter()
        .filter(|m| matches!(m, WatchMessage::Progress { .. }))
        .collect();
    assert_eq!(
        progress.len(),
        1,
        "one answer after the catch-up: {messages:?}"
    );
    assert!(
        matches!(messages.last(), Some(WatchMessage::Progress { revision, .. }) if *revision == last)
    );
}

#[test]
fn progress_tick_notifies_idle_synced_watchers_that_asked() {
    let f = Fixture::new(config());
    let stream = f.hub.open_stream();
    let asked = create(
        &stream,
        &CreateWatch {
            progress_notify: true,
            ..watch("k", 0)
        },
    );
    create(&stream, &watch("k", 0));
    stream.progress_tick();
    let rev = f.hub.stats().last_published;
    assert!(matches!(
        stream.pop(),
        Some(WatchMessage::Progress { watch_id, revision }) if watch_id == asked && revision == rev
    ));
    assert!(stream.pop().is_none(), "only the watcher that asked");
    f.put("k", "v");
    drain(&stream);
    stream.progress_tick();
    assert!(stream.pop().is_none(), "skipped after events");
    stream.progress_tick();
    assert!(matches!(stream.pop(), Some(WatchMessage::Progress { .. })));
}

#[test]
fn thousand_watchers_on_one_hub_each_get_exactly_their_events() {
    let f = Fixture::new(config());
    let streams: Vec<StreamHandle> = (0..10).map(|_| f.hub.open_stream()).collect();
    let mut ids = Vec::new();
    for i in 0..1000 {
        let stream = &streams[i % streams.len()];
        ids.push(create(stream, &watch(&format!("key/{i}"), 0)));
    }
    let everything = create(&streams[0], &prefix("key/", 0));
    assert_eq!(f.hub.stats().watchers, 1001);
    let revs: Vec<i64> = (0..1000).map(|i| f.put(&format!("key/{i}"), "v")).collect();
    for (s, stream) in streams.iter().enumerate() {
        let got = events_of(&drain(stream));
        let mut per_watch = std::collections::HashMap::<i64, Vec<i64>>::new();
        for (id, _, events) in got {
            per_watch
                .entry(id)
                .or_default()
                .extend(events.into_iter().map(|(rev, _, _)| rev));
        }
        for i in (s..1000).step_by(streams.len()) {
            assert_eq!(per_watch.get(&ids[i]), Some(&vec![revs[i]]), "watcher {i}");
        }
        if s == 0 {
            assert_eq!(per_watch.get(&everything), Some(&revs));
        }
    }
    drop(streams);
    assert_eq!(
        f.hub.stats(),
        HubStats {
            last_published: revs[999],
            ..HubStats::default()
        }
    );
}

#[test]
fn dropping_a_stream_removes_its_watchers() {
    let f = Fixture::new(config());
    let stream = f.hub.open_stream();
    create(&stream, &watch("a", 0));
    create(&stream, &watch("a", 1));
    create(&stream, &prefix("b", 0));
    assert_eq!(f.hub.stats().watchers, 3);
    drop(stream);
    let stats = f.hub.stats();
    assert_eq!((stats.streams, stats.watchers), (0, 0));
    f.put("a", "v"); // nothing left to notify
}

#[test]
fn duplicate_publish_is_ignored_and_a_gap_is_filled_from_the_store() {
    let f = Fixture::new(config());
    let stream = f.hub.open_stream();
    create(&stream, &watch("k", 0));
    let (r1, e1) = f.commit(|t| {
        t.put(b"k", b"1", 0).expect("put");
    });
    f.hub.publish(&[(r1, e1.clone())], false);
    f.hub.publish(&[(r1, e1)], false);
    // r2 is committed but never published; r3's publish reveals the gap.
    let (r2, _) = f.commit(|t| {
        t.put(b"k", b"2", 0).expect("put");
    });
    let r3 = f.put("k", "3");
    assert_eq!(revisions(&drain(&stream)), vec![r1, r2, r3]);
    // A restore moves the store ahead without publishing: watchers catch up the same way.
    let (r4, _) = f.commit(|t| {
        t.put(b"k", b"4", 0).expect("put");
    });
    f.hub.restored(r4);
    let r5 = f.put("k", "5");
    assert_eq!(revisions(&drain(&stream)), vec![r4, r5]);
}

#[test]
fn fragment_and_prev_kv_flags_reach_the_message() {
    let f = Fixture::new(config());
    let stream = f.hub.open_stream();
    create(
        &stream,
        &CreateWatch {
            fragment: true,
            ..watch("k", 0)
        },
    );
    f.put("k", "v");
    assert!(matches!(
        stream.pop(),
        Some(WatchMessage::Events {
            fragment: true,
            prev_kv: false,
            ..
        })
    ));
}

/// The `prev_kv` of each event in the events messages, as strings.
fn prev_values(messages: &[WatchMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            WatchMessage::Events {
                events,
                prev_kv: true,
                ..
            } => Some(events),
            _ => None,
        })
        .flatten()
        .map(|e| {
            e.prev_kv
                .as_ref()
                .map(|p| String::from_utf8_lossy(&p.value).into_owned())
        })
        .collect()
}

#[test]
fn a_prev_kv_watcher_gets_a_put_published_without_prev_kv_from_history() {
    let f = Fixture::new(config());
    f.put("k", "v1");
    let plain = f.hub.open_stream();
    create(&plain, &watch("k", 0));
    assert!(!f.hub.has_prev_kv_watchers());
    let stream = f.hub.open_stream();
    let id = create(
        &stream,
        &CreateWatch {
            prev_kv: true,
            ..watch("k", 0)
        },
    );
    assert!(f.hub.has_prev_kv_watchers());
    // What apply does when its batch began before the watcher existed.
    let mut batch = f.store.write().expect("write");
    batch.put_events_carry_prev_kv(false);
    let mut txn = batch.begin_txn();
    txn.put_without_prev(b"k", b"v2", 0).expect("put");
    let outcome = txn.end();
    batch.commit(false).expect("commit");
    assert_eq!(outcome.events[0].prev_kv, None);
    f.hub.publish(&[(outcome.revision, outcome.events)], true);
    assert_eq!(
        revisions(&drain(&plain)),
        vec![outcome.revision],
        "watchers without prev_kv are served as published"
    );
    assert_eq!(f.hub.stats().unsynced, 1, "the prev_kv watcher catches up");
    let messages = drain(&stream);
    assert_eq!(revisions(&messages), vec![outcome.revision]);
    assert_eq!(prev_values(&messages), vec![Some("v1".to_string())]);
    assert_eq!(f.hub.stats().unsynced, 0, "joined again");
    // Later revisions reach it live, with the prev_kv the batch carried.
    let r3 = f.put("k", "v3");
    let messages = drain(&stream);
    assert_eq!(revisions(&messages), vec![r3]);
    assert_eq!(prev_values(&messages), vec![Some("v2".to_string())]);
    stream.cancel(id);
    assert!(matches!(stream.pop(), Some(WatchMessage::Canceled { .. })));
    assert!(!f.hub.has_prev_kv_watchers());
    create(
        &stream,
        &CreateWatch {
            prev_kv: true,
            ..watch("k", 0)
        },
    );
    drop(stream);
    assert!(!f.hub.has_prev_kv_watchers(), "dropped with its stream");
}

#[tokio::test]
async fn wait_published_returns_once_the_revision_is_published_and_fails_on_shutdown() {
    let f = Fixture::new(config());
    let first = f.put("a", "1");
    // Already published: no wait.
    tokio::time::timeout(Duration::from_secs(5), f.hub.wait_published(first))
        .await
        .expect("no wait for a published revision")
        .expect("published");
    let hub = f.hub.clone();
    let waiter = tokio::spawn(async move { hub.wait_published(first + 1).await });
    // Committed but not yet published: still waiting.
    let (revision, events) = f.commit(|t| {
        t.put(b"b", b"2", 0).expect("put");
    });
    tokio::task::yield_now().await;
    assert!(
        !waiter.is_finished(),
        "returned before the revision was published"
    );
    f.hub.publish(&[(revision, events)], false);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by publish")
        .expect("task")
        .expect("published");
    let hub = f.hub.clone();
    let stuck = tokio::spawn(async move { hub.wait_published(revision + 100).await });
    f.hub.shutdown();
    let err = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("woken by shutdown")
        .expect("task")
        .expect_err("a stopping member cannot wait");
    assert_eq!(err, keel_api::error::EtcdError::Stopped);
}
