//! Dump/restore, reopen and corruption handling.

use std::sync::Arc;

use super::{backend_tests, get, mem_fixture, put, redb_fixture, Fixture};
use crate::backend::{MemBackend, Table};
use crate::error::{Result, StorageError};
use crate::mvcc::{RangeOptions, Store};

backend_tests!(
    dump_restore_round_trip,
    corrupt_dump_is_rejected_and_changes_nothing,
    corrupt_version_record_is_an_error,
    a_snapshot_older_than_a_restore_reads_what_it_saw,
);

fn sample(store: &Store) -> Result<()> {
    put(store, b"a", b"1")?;
    put(store, &[0, 0xFF, 0], b"")?;
    put(store, b"a", &vec![7u8; 200_000])?;
    let mut batch = store.write()?;
    batch.put_meta(b"applied_index", b"9")?;
    batch.put_lease(5, b"lease")?;
    batch.commit(false)?;
    store.compact(3)
}

fn dump_of(store: &Store) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    store.dump(&mut out)?;
    Ok(out)
}

fn dump_restore_round_trip(f: &Fixture) -> Result<()> {
    sample(&f.store)?;
    let bytes = dump_of(&f.store)?;
    for target in [mem_fixture(), redb_fixture()] {
        put(&target.store, b"stale", b"x")?;
        target.store.restore(&mut bytes.as_slice())?;
        assert_eq!(target.store.current_revision()?, 4);
        assert_eq!(target.store.compact_revision()?, 3);
        assert_eq!(get(&target.store, b"stale", 0)?, None);
        assert_eq!(target.store.hash_kv(0)?, f.store.hash_kv(0)?);
        assert_eq!(
            target.store.get_meta(b"applied_index")?,
            Some(b"9".to_vec())
        );
        assert_eq!(target.store.leases()?, vec![(5, b"lease".to_vec())]);
        let all = RangeOptions::default();
        assert_eq!(
            target.store.range(&[0], &[0], all)?,
            f.store.range(&[0], &[0], all)?
        );
        assert_eq!(dump_of(&target.store)?, bytes, "dump is deterministic");
    }
    Ok(())
}

fn corrupt_dump_is_rejected_and_changes_nothing(f: &Fixture) -> Result<()> {
    let source = mem_fixture();
    sample(&source.store)?;
    let bytes = dump_of(&source.store)?;
    put(&f.store, b"mine", b"kept")?;
    let before = f.store.hash_kv(0)?;
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let truncated = &bytes[..bytes.len() - 3];
    let mut trailing = bytes.clone();
    trailing.push(0);
    let mut wrong_magic = bytes.clone();
    wrong_magic[0] = b'X';
    for bad in [
        &flipped[..],
        truncated,
        &trailing[..],
        &wrong_magic[..],
        &[][..],
    ] {
        let err = f
            .store
            .restore(&mut &bad[..])
            .expect_err("corrupt dump accepted");
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    }
    assert_eq!(f.store.hash_kv(0)?, before);
    assert_eq!(
        get(&f.store, b"mine", 0)?.map(|kv| kv.value),
        Some(b"kept".to_vec())
    );
    Ok(())
}

fn corrupt_version_record_is_an_error(f: &Fixture) -> Result<()> {
    put(&f.store, b"a", b"1")?;
    let mut key = Vec::new();
    f.backend.begin_read()?.scan(
        Table::Kv,
        (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        crate::backend::Direction::Forward,
        &mut |k, _| {
            key = k.to_vec();
            Ok(false)
        },
    )?;
    let mut txn = f.backend.begin_write()?;
    txn.put(Table::Kv, &key, b"\x01\x00garbage")?;
    txn.commit(true)?;
    let err = f
        .store
        .range(b"a", &[], RangeOptions::default())
        .expect_err("garbage read");
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    assert!(matches!(f.store.hash_kv(0), Err(StorageError::Corrupt(_))));
    Ok(())
}

#[test]
fn redb_reopen_keeps_data_and_revisions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.redb");
    {
        let store = Store::open_redb(&path)?;
        put(&store, b"a", b"1")?;
        put(&store, b"a", b"2")?;
        put(&store, b"b", b"3")?;
        store.compact(3)?;
        let mut batch = store.write()?;
        batch.put_meta(b"applied_index", b"17")?;
        batch.commit(false)?;
        store.sync()?;
        assert!(store.db_size_bytes()? > 0);
    }
    let store = Store::open_redb(&path)?;
    assert_eq!(store.current_revision()?, 4);
    assert_eq!(store.compact_revision()?, 3);
    assert_eq!(get(&store, b"a", 0)?.map(|kv| kv.version), Some(2));
    assert_eq!(store.get_meta(b"applied_index")?, Some(b"17".to_vec()));
    assert_eq!(put(&store, b"c", b"4")?, 5);
    Ok(())
}

#[test]
fn mem_size_grows_with_data() -> Result<()> {
    let store = Store::open(Arc::new(MemBackend::new()))?;
    let empty = store.db_size_bytes()?;
    put(&store, b"key", &[1u8; 1000])?;
    assert!(store.db_size_bytes()? >= empty + 1000);
    Ok(())
}

/// A read snapshot opened before a restore keeps reading the data it saw, through the index
/// that matches it; reads opened after see the restored data.
fn a_snapshot_older_than_a_restore_reads_what_it_saw(f: &Fixture) -> Result<()> {
    let other = Store::in_memory()?;
    put(&other, b"x", b"restored")?;
    let dump = dump_of(&other)?;
    sample(&f.store)?;
    let before = f.store.read()?;
    f.store.restore(&mut &dump[..])?;
    let old = before.range(&[0], &[0], RangeOptions::default())?.kvs;
    let old_keys: Vec<_> = old.into_iter().map(|kv| kv.key).collect();
    assert_eq!(old_keys, vec![vec![0, 0xFF, 0], b"a".to_vec()]);
    assert_eq!(
        get(&f.store, b"x", 0)?.map(|kv| kv.value),
        Some(b"restored".to_vec())
    );
    assert_eq!(get(&f.store, b"a", 0)?, None);
    Ok(())
}
