//! Compaction and HashKV.

use super::{backend_tests, delete, get, keys, mem_fixture, put, Fixture};
use crate::error::{Result, StorageError};
use crate::mvcc::{RangeOptions, Store, NEVER_COMPACTED};

backend_tests!(
    compaction_keeps_latest_live_version_and_drops_the_rest,
    compacted_reads_fail_strictly_below_compact_revision,
    compaction_rejects_old_and_future_revisions,
    compaction_in_small_steps_interleaves_with_writes,
    compaction_physically_removes_history,
    hash_matches_for_identical_histories,
    hash_ignores_compaction_progress,
    a_snapshot_older_than_a_compaction_is_refused_below_it,
);

fn at(revision: i64) -> RangeOptions {
    RangeOptions {
        revision,
        ..RangeOptions::default()
    }
}

/// Writes the same small history into `store`: revisions 2..=7.
fn history(store: &Store) -> Result<()> {
    put(store, b"a", b"a1")?; // 2
    put(store, b"b", b"b1")?; // 3
    put(store, b"a", b"a2")?; // 4
    delete(store, b"b", &[])?; // 5
    put(store, b"c", b"c1")?; // 6
    put(store, b"a", b"a3")?; // 7
    Ok(())
}

fn compaction_keeps_latest_live_version_and_drops_the_rest(f: &Fixture) -> Result<()> {
    let store = &f.store;
    history(store)?;
    store.compact(5)?;
    assert_eq!(store.compact_revision()?, 5);
    let kvs = store.range(&[0], &[0], at(5))?.kvs;
    assert_eq!(kvs.len(), 1, "b deleted at 5, c not yet written");
    assert_eq!(
        (
            kvs[0].key.as_slice(),
            kvs[0].value.as_slice(),
            kvs[0].version
        ),
        (&b"a"[..], &b"a2"[..], 2)
    );
    assert_eq!(kvs[0].create_revision, 2);
    assert_eq!(get(store, b"a", 0)?.map(|kv| kv.version), Some(3));
    assert_eq!(
        get(store, b"a", 6)?.map(|kv| kv.value),
        Some(b"a2".to_vec())
    );
    assert_eq!(keys(store, &[0], &[0])?, vec![b"a".to_vec(), b"c".to_vec()]);
    let events = store.read()?.events(6, 7, 0)?;
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1].prev_kv.as_ref().map(|p| p.value.clone()),
        Some(b"a2".to_vec())
    );
    Ok(())
}

fn compacted_reads_fail_strictly_below_compact_revision(f: &Fixture) -> Result<()> {
    let store = &f.store;
    history(store)?;
    store.compact(4)?;
    assert!(matches!(
        store.range(b"a", &[], at(3)),
        Err(StorageError::Compacted)
    ));
    assert!(matches!(
        store.range(b"a", &[], at(1)),
        Err(StorageError::Compacted)
    ));
    assert_eq!(
        get(store, b"a", 4)?.map(|kv| kv.value),
        Some(b"a2".to_vec())
    );
    assert_eq!(
        get(store, b"b", 4)?.map(|kv| kv.value),
        Some(b"b1".to_vec())
    );
    assert!(store.range(b"a", &[], at(0)).is_ok());
    let view = store.read()?;
    assert!(matches!(view.events(4, 7, 0), Err(StorageError::Compacted)));
    assert_eq!(view.events(5, 7, 0)?.len(), 3);
    assert!(matches!(store.hash_kv(3), Err(StorageError::Compacted)));
    Ok(())
}

fn compaction_rejects_old_and_future_revisions(f: &Fixture) -> Result<()> {
    let store = &f.store;
    history(store)?;
    assert!(matches!(
        store.compact(8),
        Err(StorageError::FutureRevision)
    ));
    store.compact(7)?;
    assert!(matches!(store.compact(7), Err(StorageError::Compacted)));
    assert!(matches!(store.compact(3), Err(StorageError::Compacted)));
    assert_eq!(store.compact_revision()?, 7);
    assert_eq!(keys(store, &[0], &[0])?, vec![b"a".to_vec(), b"c".to_vec()]);
    Ok(())
}

fn compaction_in_small_steps_interleaves_with_writes(f: &Fixture) -> Result<()> {
    let store = &f.store;
    for round in 0..3 {
        for key in [&b"k1"[..], b"k2", b"k3", b"k4", b"k5"] {
            put(store, key, format!("v{round}").as_bytes())?;
        }
    }
    delete(store, b"k3", &[])?;
    let compact_at = store.current_revision()?;
    let mut batch = store.write()?;
    batch.schedule_compaction(compact_at)?;
    batch.commit(false)?;
    assert!(matches!(
        store.range(b"k1", &[], at(compact_at - 1)),
        Err(StorageError::Compacted)
    ));
    let mut steps = 0;
    while !store.compact_step(2)? {
        steps += 1;
        put(store, b"k1", format!("during{steps}").as_bytes())?;
        let seen = store.range(b"k", b"l", at(compact_at))?;
        assert_eq!(seen.count, 4, "reads at the compact revision never change");
    }
    assert_eq!(
        steps, 7,
        "16 versions in steps of 2, the last step finishes"
    );
    assert!(store.compact_step(2)?, "nothing left");
    assert_eq!(get(store, b"k1", 0)?.map(|kv| kv.version), Some(3 + steps));
    assert_eq!(get(store, b"k3", compact_at)?, None);
    Ok(())
}

fn compaction_physically_removes_history(f: &Fixture) -> Result<()> {
    let store = &f.store;
    for i in 0..20 {
        put(store, b"hot", format!("value-{i:04}").as_bytes())?;
    }
    put(store, b"gone", b"x")?;
    delete(store, b"gone", &[])?;
    let before = version_count(f)?;
    store.compact(store.current_revision()?)?;
    assert_eq!(before, 22);
    assert_eq!(version_count(f)?, 1, "only hot's latest version stays");
    Ok(())
}

fn version_count(f: &Fixture) -> Result<usize> {
    let txn = f.backend.begin_read()?;
    let mut n = 0;
    let all = (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded);
    txn.scan(
        crate::backend::Table::Kv,
        all,
        crate::backend::Direction::Forward,
        &mut |_, _| {
            n += 1;
            Ok(true)
        },
    )?;
    Ok(n)
}

fn hash_matches_for_identical_histories(f: &Fixture) -> Result<()> {
    let store = &f.store;
    let twin = mem_fixture();
    let other = mem_fixture();
    history(store)?;
    history(&twin.store)?;
    history(&other.store)?;
    put(&other.store, b"a", b"diverged")?;
    let mine = store.hash_kv(0)?;
    assert_eq!(mine.compact_revision, NEVER_COMPACTED);
    assert_eq!(mine.revision, 7);
    assert_eq!(mine, twin.store.hash_kv(0)?);
    assert_eq!(store.hash_kv(6)?, twin.store.hash_kv(6)?);
    assert_ne!(store.hash_kv(6)?.hash, store.hash_kv(7)?.hash);
    assert_eq!(
        store.hash_kv(7)?.hash,
        other.store.hash_kv(7)?.hash,
        "same up to 7"
    );
    assert_ne!(store.hash_kv(0)?.hash, other.store.hash_kv(0)?.hash);
    assert!(matches!(
        store.hash_kv(8),
        Err(StorageError::FutureRevision)
    ));
    Ok(())
}

fn hash_ignores_compaction_progress(f: &Fixture) -> Result<()> {
    let store = &f.store;
    let twin = mem_fixture();
    history(store)?;
    history(&twin.store)?;
    store.compact(5)?;
    let mut batch = twin.store.write()?;
    batch.schedule_compaction(5)?;
    batch.commit(false)?;
    assert!(!twin.store.compact_step(1)?);
    let hash = store.hash_kv(0)?;
    assert_eq!(hash, twin.store.hash_kv(0)?);
    assert_eq!(hash.compact_revision, 5);
    Ok(())
}

/// A read snapshot opened before a compaction still reads its own data at or above the
/// compact revision, and is refused below it: the shared key index has forgotten versions
/// that snapshot's data still holds, so answering there could miss them.
fn a_snapshot_older_than_a_compaction_is_refused_below_it(f: &Fixture) -> Result<()> {
    let store = &f.store;
    history(store)?;
    let view = store.read()?;
    store.compact(7)?;
    assert_eq!(view.compact_revision(), NEVER_COMPACTED);
    let a = view.range(b"a", &[], at(7))?.kvs;
    assert_eq!(a.first().map(|kv| kv.value.clone()), Some(b"a3".to_vec()));
    assert!(matches!(
        view.range(b"b", &[], at(3)),
        Err(StorageError::Compacted)
    ));
    assert!(matches!(view.events(4, 7, 0), Err(StorageError::Compacted)));
    let fresh = store.read()?.events(8, 8, 0)?;
    assert!(fresh.is_empty());
    Ok(())
}
