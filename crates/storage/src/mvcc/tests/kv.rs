//! Revisions, versions, tombstones, range forms and in-txn reads.

use super::{backend_tests, delete, get, keys, put, Fixture};
use crate::error::{Result, StorageError};
use crate::mvcc::{EventKind, RangeOptions, Store, TxnOutcome, INITIAL_REVISION};

backend_tests!(
    revisions_rise_once_per_writing_txn,
    read_only_and_empty_txns_keep_revision,
    dropped_batch_leaves_no_trace,
    history_reads_see_old_versions,
    version_and_create_revision_across_delete_and_recreate,
    delete_writes_tombstone_and_events,
    range_forms_follow_etcd,
    limit_count_and_projection_options,
    txn_range_sees_own_writes,
    binary_keys_and_empty_values,
    future_revision_read_is_rejected,
    events_replay_history_in_revision_order,
    meta_and_leases_commit_with_data,
    attached_keys_and_lease_lookup_see_the_batch,
    put_without_prev_numbers_versions_from_the_index,
    created_lists_live_keys_with_create_revisions,
);

fn revisions_rise_once_per_writing_txn(f: &Fixture) -> Result<()> {
    let store = &f.store;
    assert_eq!(store.current_revision()?, INITIAL_REVISION);
    let mut batch = store.write()?;
    let mut txn = batch.begin_txn();
    assert_eq!(txn.revision(), 2);
    txn.put(b"a", b"1", 0)?;
    txn.put(b"b", b"2", 0)?;
    txn.put(b"c", b"3", 0)?;
    let first = txn.end();
    assert_eq!(first.revision, 2);
    assert_eq!(first.events.len(), 3);
    assert!(first.events.iter().all(|e| e.kv.mod_revision == 2));
    let mut txn = batch.begin_txn();
    txn.put(b"a", b"4", 0)?;
    assert_eq!(txn.end().revision, 3);
    batch.commit(true)?;
    assert_eq!(store.current_revision()?, 3);
    assert_eq!(put(store, b"z", b"")?, 4);
    Ok(())
}

fn read_only_and_empty_txns_keep_revision(f: &Fixture) -> Result<()> {
    let store = &f.store;
    put(store, b"a", b"1")?;
    let mut batch = store.write()?;
    let txn = batch.begin_txn();
    let seen = txn.range(b"a", &[], RangeOptions::default())?;
    assert_eq!(seen.count, 1);
    assert_eq!(txn.end().revision, 2);
    let mut txn = batch.begin_txn();
    assert!(txn.delete_range(b"missing", &[])?.is_empty());
    let outcome = txn.end();
    assert_eq!((outcome.revision, outcome.events.len()), (2, 0));
    batch.commit(false)?;
    assert_eq!(store.current_revision()?, 2);
    Ok(())
}

fn dropped_batch_leaves_no_trace(f: &Fixture) -> Result<()> {
    let store = &f.store;
    put(store, b"a", b"1")?;
    {
        let mut batch = store.write()?;
        let mut txn = batch.begin_txn();
        txn.put(b"a", b"2", 0)?;
        txn.put(b"b", b"2", 0)?;
        // Dropped without end() or commit().
    }
    assert_eq!(store.current_revision()?, 2);
    assert_eq!(get(store, b"a", 0)?.map(|kv| kv.value), Some(b"1".to_vec()));
    assert_eq!(get(store, b"b", 0)?, None);
    // The next batch writes the revision the dropped one had used, over nothing of it.
    assert_eq!(put(store, b"b", b"3")?, 3);
    assert_eq!(get(store, b"b", 0)?.map(|kv| kv.version), Some(1));
    assert_eq!(get(store, b"a", 0)?.map(|kv| kv.version), Some(1));
    Ok(())
}

fn history_reads_see_old_versions(f: &Fixture) -> Result<()> {
    let store = &f.store;
    let r1 = put(store, b"k", b"v1")?;
    let r2 = put(store, b"k", b"v2")?;
    put(store, b"other", b"x")?;
    let r3 = put(store, b"k", b"v3")?;
    assert_eq!(get(store, b"k", 1)?, None);
    assert_eq!(
        get(store, b"k", r1)?.map(|kv| kv.value),
        Some(b"v1".to_vec())
    );
    assert_eq!(
        get(store, b"k", r2)?.map(|kv| kv.value),
        Some(b"v2".to_vec())
    );
    assert_eq!(
        get(store, b"k", r3 - 1)?.map(|kv| kv.value),
        Some(b"v2".to_vec())
    );
    assert_eq!(
        get(store, b"k", 0)?.map(|kv| kv.value),
        Some(b"v3".to_vec())
    );
    assert_eq!(
        keys(store, b"a", b"z")?,
        vec![b"k".to_vec(), b"other".to_vec()]
    );
    let old = store.range(
        b"a",
        b"z",
        RangeOptions {
            revision: r1,
            ..Default::default()
        },
    )?;
    assert_eq!(old.count, 1);
    assert_eq!(old.revision, r3, "header revision is the current one");
    Ok(())
}

fn version_and_create_revision_across_delete_and_recreate(f: &Fixture) -> Result<()> {
    let store = &f.store;
    let r1 = put(store, b"k", b"a")?;
    let r2 = put(store, b"k", b"b")?;
    let kv = get(store, b"k", 0)?.expect("live");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );
    delete(store, b"k", &[])?;
    assert_eq!(get(store, b"k", 0)?, None);
    let r4 = put(store, b"k", b"c")?;
    let kv = get(store, b"k", 0)?.expect("recreated");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r4, r4, 1)
    );
    let old = get(store, b"k", r2)?.expect("old generation");
    assert_eq!((old.create_revision, old.version), (r1, 2));
    Ok(())
}

fn delete_writes_tombstone_and_events(f: &Fixture) -> Result<()> {
    let store = &f.store;
    put(store, b"a", b"1")?;
    put(store, b"b", b"2")?;
    put(store, b"c", b"3")?;
    let mut batch = store.write()?;
    let mut txn = batch.begin_txn();
    let deleted = txn.delete_range(b"a", b"c")?;
    let outcome = txn.end();
    batch.commit(false)?;
    assert_eq!(
        deleted.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(outcome.revision, 5);
    assert_eq!(outcome.events.len(), 2);
    for event in &outcome.events {
        assert_eq!(event.kind, EventKind::Delete);
        assert_eq!(event.kv.mod_revision, 5);
        assert_eq!((event.kv.version, event.kv.create_revision), (0, 0));
        assert!(event.kv.value.is_empty());
        assert_eq!(event.prev_kv.as_ref().map(|p| &p.key), Some(&event.kv.key));
    }
    assert_eq!(keys(store, b"\0", b"\0")?, vec![b"c".to_vec()]);
    assert_eq!(get(store, b"a", 4)?.map(|kv| kv.value), Some(b"1".to_vec()));
    assert!(delete(store, b"a", &[])?.is_empty(), "already deleted");
    assert_eq!(store.current_revision()?, 5);
    Ok(())
}

fn range_forms_follow_etcd(f: &Fixture) -> Result<()> {
    let store = &f.store;
    for key in [&b"a"[..], b"ab", b"abc", b"b", b"c"] {
        put(store, key, b"v")?;
    }
    let all: Vec<Vec<u8>> = [&b"a"[..], b"ab", b"abc", b"b", b"c"]
        .iter()
        .map(|k| k.to_vec())
        .collect();
    assert_eq!(keys(store, b"ab", &[])?, vec![b"ab".to_vec()], "single key");
    assert_eq!(
        keys(store, b"zz", &[])?,
        Vec::<Vec<u8>>::new(),
        "missing single key"
    );
    assert_eq!(
        keys(store, b"ab", b"b")?,
        vec![b"ab".to_vec(), b"abc".to_vec()],
        "[key, end)"
    );
    assert_eq!(keys(store, b"a", b"b")?, all[..3].to_vec(), "prefix a");
    assert_eq!(keys(store, b"b", &[0])?, all[3..].to_vec(), "from key");
    assert_eq!(keys(store, &[0], &[0])?, all, "every key");
    assert!(keys(store, b"c", b"a")?.is_empty(), "end before key");
    assert!(keys(store, b"b", b"b")?.is_empty(), "end equal key");
    Ok(())
}

fn limit_count_and_projection_options(f: &Fixture) -> Result<()> {
    let store = &f.store;
    for key in [&b"k1"[..], b"k2", b"k3", b"k4"] {
        put(store, key, b"value")?;
    }
    delete(store, b"k2", &[])?;
    let limited = store.range(
        b"k",
        b"l",
        RangeOptions {
            limit: 2,
            ..Default::default()
        },
    )?;
    assert_eq!(limited.count, 3);
    assert!(limited.more);
    assert_eq!(
        limited
            .kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        vec![b"k1".to_vec(), b"k3".to_vec()]
    );
    let exact = store.range(
        b"k",
        b"l",
        RangeOptions {
            limit: 3,
            ..Default::default()
        },
    )?;
    assert!(!exact.more);
    let counted = store.range(
        b"k",
        b"l",
        RangeOptions {
            count_only: true,
            ..Default::default()
        },
    )?;
    assert_eq!(
        (counted.count, counted.kvs.len(), counted.more),
        (3, 0, false)
    );
    let keys_only = store.range(
        b"k",
        b"l",
        RangeOptions {
            keys_only: true,
            ..Default::default()
        },
    )?;
    assert_eq!(keys_only.kvs.len(), 3);
    assert!(keys_only
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
    Ok(())
}

fn txn_range_sees_own_writes(f: &Fixture) -> Result<()> {
    let store = &f.store;
    put(store, b"a", b"old")?;
    let mut batch = store.write()?;
    let mut txn = batch.begin_txn();
    txn.put(b"a", b"new", 0)?;
    txn.put(b"b", b"fresh", 0)?;
    let seen = txn.range(b"a", b"c", RangeOptions::default())?;
    assert_eq!(seen.revision, 3);
    assert_eq!(
        seen.kvs
            .iter()
            .map(|kv| kv.value.clone())
            .collect::<Vec<_>>(),
        vec![b"new".to_vec(), b"fresh".to_vec()]
    );
    let before = txn.range(
        b"a",
        b"c",
        RangeOptions {
            revision: 2,
            ..Default::default()
        },
    )?;
    assert_eq!(before.kvs.len(), 1);
    txn.delete_range(b"a", &[])?;
    assert_eq!(txn.range(b"a", b"c", RangeOptions::default())?.count, 1);
    let prev = txn.put(b"a", b"again", 0)?;
    assert_eq!(prev, None, "deleted earlier in the same txn");
    let outcome = txn.end();
    assert_eq!(outcome.events.len(), 4);
    let mut txn = batch.begin_txn();
    let seen = txn.range(b"a", &[], RangeOptions::default())?;
    assert_eq!((seen.kvs[0].version, seen.revision), (1, 3));
    assert!(matches!(
        txn.range(
            b"a",
            &[],
            RangeOptions {
                revision: 4,
                ..Default::default()
            }
        ),
        Err(StorageError::FutureRevision)
    ));
    txn.put(b"c", b"", 0)?;
    assert_eq!(txn.end().revision, 4);
    batch.commit(false)?;
    Ok(())
}

fn binary_keys_and_empty_values(f: &Fixture) -> Result<()> {
    let store = &f.store;
    let tricky: Vec<Vec<u8>> = vec![
        vec![0],
        vec![0, 0],
        vec![0, 0xFF],
        vec![0x01],
        vec![b'k', 0],
        vec![b'k', 0, 0],
        vec![b'k', 0, 0xFF],
        vec![b'k', 0xFF],
        vec![0xFF],
        vec![0xFF, 0xFF, 0],
    ];
    let mut sorted = tricky.clone();
    sorted.sort();
    for key in tricky.iter().rev() {
        put(store, key, b"")?;
        put(store, key, key)?;
    }
    put(store, &[b'k', 0], b"")?;
    assert_eq!(keys(store, &[0], &[0])?, sorted);
    let kv = get(store, &[b'k', 0], 0)?.expect("k\\0");
    assert_eq!((kv.value.len(), kv.version), (0, 3));
    assert_eq!(keys(store, b"k", &[b'k', 0xFF])?, sorted[4..7].to_vec());
    assert_eq!(keys(store, &[0xFF], &[0])?, sorted[8..].to_vec());
    delete(store, &[0], &[0, 0xFF, 0])?;
    assert_eq!(keys(store, &[0], &[0])?, sorted[3..].to_vec());
    Ok(())
}

fn future_revision_read_is_rejected(f: &Fixture) -> Result<()> {
    let store = &f.store;
    put(store, b"a", b"1")?;
    let future = RangeOptions {
        revision: 3,
        ..Default::default()
    };
    assert!(matches!(
        store.range(b"a", &[], future),
        Err(StorageError::FutureRevision)
    ));
    assert!(store
        .range(
            b"a",
            &[],
            RangeOptions {
                revision: 2,
                ..Default::default()
            }
        )
        .is_ok());
    Ok(())
}

fn events_replay_history_in_revision_order(f: &Fixture) -> Result<()> {
    let store = &f.store;
    put(store, b"b", b"1")?;
    put(store, b"a", b"1")?;
    put(store, b"b", b"2")?;
    delete(store, b"a", b"c")?;
    let view = store.read()?;
    let events = view.events(3, 100, 0)?;
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.key.clone(),
                e.kv.mod_revision,
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventKind::Put, b"a".to_vec(), 3, None),
            (EventKind::Put, b"b".to_vec(), 4, Some(b"1".to_vec())),
            (EventKind::Delete, b"a".to_vec(), 5, Some(b"1".to_vec())),
            (EventKind::Delete, b"b".to_vec(), 5, Some(b"2".to_vec())),
        ]
    );
    assert_eq!(view.events(2, 3, 0)?.len(), 2);
    assert_eq!(view.events(2, 100, 3)?.len(), 3);
    assert_eq!(view.events(2, 100, 4)?.len(), 5, "revision 5 is not split");
    assert!(view.events(6, 100, 0)?.is_empty());
    // The same events without the previous versions.
    let bare = view.events_without_prev_kv(3, 100, 0)?;
    assert_eq!(bare.len(), events.len());
    for (bare, full) in bare.iter().zip(&events) {
        assert_eq!(
            (bare.kind, &bare.kv, &bare.prev_kv),
            (full.kind, &full.kv, &None)
        );
    }
    assert_eq!(view.events_without_prev_kv(2, 100, 4)?.len(), 5);
    Ok(())
}

fn meta_and_leases_commit_with_data(f: &Fixture) -> Result<()> {
    let store = &f.store;
    let mut batch = store.write()?;
    batch.put_meta(b"applied_index", &7u64.to_be_bytes())?;
    batch.put_lease(42, b"ttl=10")?;
    batch.put_lease(7, b"ttl=5")?;
    assert_eq!(
        batch.get_meta(b"applied_index")?,
        Some(7u64.to_be_bytes().to_vec())
    );
    batch.commit(false)?;
    assert_eq!(
        store.current_revision()?,
        INITIAL_REVISION,
        "meta is not a revision"
    );
    {
        let mut batch = store.write()?;
        batch.put_meta(b"applied_index", &8u64.to_be_bytes())?;
        // Dropped: not committed.
    }
    assert_eq!(
        store.get_meta(b"applied_index")?,
        Some(7u64.to_be_bytes().to_vec())
    );
    assert_eq!(
        store.leases()?,
        vec![(7, b"ttl=5".to_vec()), (42, b"ttl=10".to_vec())]
    );
    let mut batch = store.write()?;
    assert!(batch.delete_lease(7)?);
    assert!(batch.delete_meta(b"applied_index")?);
    batch.commit(true)?;
    assert_eq!(store.leases()?.len(), 1);
    assert_eq!(store.get_meta(b"applied_index")?, None);
    Ok(())
}

fn attached_keys_and_lease_lookup_see_the_batch(f: &Fixture) -> Result<()> {
    let store = &f.store;
    let mut batch = store.write()?;
    let mut txn = batch.begin_txn();
    txn.put(b"b", b"", 1)?;
    txn.put(b"a", b"", 1)?;
    txn.put(b"c", b"", 2)?;
    txn.end();
    batch.put_lease(1, b"one")?;
    assert_eq!(batch.attached_keys(1), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(batch.get_lease(1)?, Some(b"one".to_vec()));
    assert_eq!(batch.get_lease(2)?, None);
    let before = store.read()?;
    assert!(before.attached_keys(1).is_empty(), "not committed yet");
    batch.commit(false)?;
    let view = store.read()?;
    assert_eq!(view.attached_keys(1), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(view.attached_keys(2), vec![b"c".to_vec()]);
    assert!(view.attached_keys(3).is_empty());
    // A key moves with its newest version; a deleted key leaves its lease.
    let mut batch = store.write()?;
    let mut txn = batch.begin_txn();
    txn.put(b"a", b"", 2)?;
    txn.delete_range(b"b", &[])?;
    txn.end();
    batch.commit(false)?;
    assert_eq!(view.attached_keys(2), vec![b"c".to_vec()], "the old view");
    let now = store.read()?;
    assert!(now.attached_keys(1).is_empty());
    assert_eq!(now.attached_keys(2), vec![b"a".to_vec(), b"c".to_vec()]);
    Ok(())
}

/// Puts `key` in its own batch without asking for the previous version; `carry` sets whether
/// the batch's put events carry it.
fn put_blind(store: &Store, key: &[u8], value: &[u8], carry: bool) -> Result<TxnOutcome> {
    let mut batch = store.write()?;
    batch.put_events_carry_prev_kv(carry);
    let mut txn = batch.begin_txn();
    txn.put_without_prev(key, value, 0)?;
    let outcome = txn.end();
    batch.commit(false)?;
    Ok(outcome)
}

fn put_without_prev_numbers_versions_from_the_index(f: &Fixture) -> Result<()> {
    let store = &f.store;
    let r1 = put_blind(store, b"k", b"a", false)?.revision;
    // Two txns of one batch: the second sees the first's version through the index.
    let mut batch = store.write()?;
    batch.put_events_carry_prev_kv(false);
    for value in [&b"b"[..], b"c"] {
        let mut txn = batch.begin_txn();
        txn.put_without_prev(b"k", value, 0)?;
        let event = txn.end().events.pop().expect("one event");
        assert_eq!(event.prev_kv, None, "not read when nobody asks");
    }
    batch.commit(false)?;
    let kv = get(store, b"k", 0)?.expect("live");
    assert_eq!(
        (kv.create_revision, kv.version, kv.value),
        (r1, 3, b"c".to_vec())
    );

    // Events carry the previous version when the batch says so; `put` always returns it.
    let outcome = put_blind(store, b"k", b"d", true)?;
    let event = &outcome.events[0];
    assert_eq!(event.prev_kv.as_ref().map(|p| p.version), Some(3));
    assert_eq!((event.kv.create_revision, event.kv.version), (r1, 4));
    let mut batch = store.write()?;
    batch.put_events_carry_prev_kv(false);
    let mut txn = batch.begin_txn();
    let prev = txn.put(b"k", b"e", 0)?;
    let outcome = txn.end();
    batch.commit(false)?;
    assert_eq!(prev.map(|p| p.value), Some(b"d".to_vec()));
    assert_eq!(outcome.events[0].prev_kv, None);

    // The generation's first versions compacted away, and the index rebuilt from storage:
    // the numbers still come out right.
    let current = store.current_revision()?;
    store.compact(current)?;
    let reopened = Store::open(f.backend.clone())?;
    let outcome = put_blind(&reopened, b"k", b"f", false)?;
    assert_eq!(
        (
            outcome.events[0].kv.create_revision,
            outcome.events[0].kv.version
        ),
        (r1, 6)
    );

    // After a delete the next put starts a new generation.
    delete(&reopened, b"k", &[])?;
    let r9 = put_blind(&reopened, b"k", b"g", false)?.revision;
    let kv = get(&reopened, b"k", 0)?.expect("recreated");
    assert_eq!((kv.create_revision, kv.version), (r9, 1));
    Ok(())
}

/// `ReadView::created` answers from the key index what a range would: live keys only, each
/// generation's create revision, nothing newer than the snapshot.
fn created_lists_live_keys_with_create_revisions(f: &Fixture) -> Result<()> {
    let store = &f.store;
    let a = put(store, b"w/a", b"1")?;
    let b = put(store, b"w/b", b"1")?;
    put(store, b"w/a", b"2")?; // a new version keeps the generation's create revision
    put(store, b"x", b"1")?; // outside the range
    let c = put(store, b"w/c", b"1")?;
    delete(store, b"w/b", b"")?;
    let view = store.read()?;
    let want = vec![(b"w/a".to_vec(), a), (b"w/c".to_vec(), c)];
    assert_eq!(view.created(b"w/", b"w0"), want);
    assert_eq!(view.created(b"w/a", b""), vec![(b"w/a".to_vec(), a)]);
    assert_eq!(view.created(b"w/b", b""), vec![]);
    let b2 = put(store, b"w/b", b"again")?;
    assert!(b2 > b);
    assert_eq!(
        view.created(b"w/", b"w0"),
        want,
        "a later put is not in an older view"
    );
    assert_eq!(
        store.read()?.created(b"w/b", b""),
        vec![(b"w/b".to_vec(), b2)],
        "a recreated key has a new create revision"
    );
    Ok(())
}
