//! The store over a fault-injecting engine: every injected fault surfaces as an error, and
//! nothing corrupt is ever served as data. Each body runs on the in-memory and the redb
//! engine.

use std::sync::Arc;

use keel_storage::{
    Backend, Fault, FaultPlan, FaultSpec, FaultyBackend, MemBackend, RangeOptions, RedbBackend,
    Result, StorageError, Store, Table,
};

struct Faulty {
    store: Store,
    plan: Arc<FaultPlan>,
    _dir: Option<tempfile::TempDir>,
}

fn mem() -> Faulty {
    let plan = FaultPlan::new();
    let engine: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let store = Store::open(Arc::new(FaultyBackend::new(engine, plan.clone()))).expect("open");
    Faulty {
        store,
        plan,
        _dir: None,
    }
}

fn redb() -> Faulty {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = FaultPlan::new();
    let engine: Arc<dyn Backend> =
        Arc::new(RedbBackend::open(dir.path().join("kv.redb")).expect("open redb"));
    let store = Store::open(Arc::new(FaultyBackend::new(engine, plan.clone()))).expect("open");
    Faulty {
        store,
        plan,
        _dir: Some(dir),
    }
}

/// Runs `body` on both engines.
fn both(body: fn(&Faulty) -> Result<()>) -> Result<()> {
    body(&mem())?;
    body(&redb())
}

fn put(store: &Store, key: &[u8], value: &[u8], durable: bool) -> Result<()> {
    let mut batch = store.write()?;
    let mut txn = batch.begin_txn();
    txn.put(key, value, 0)?;
    txn.end();
    batch.commit(durable)
}

fn get(store: &Store, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let kvs = store.range(key, &[], RangeOptions::default())?.kvs;
    Ok(kvs.into_iter().next().map(|kv| kv.value))
}

/// Fills every table: two key versions (Kv), revisions (Meta), caller metadata
/// (AppMeta) and a lease record (Lease).
fn fill(store: &Store) -> Result<()> {
    put(store, b"alpha", b"first value", true)?;
    let mut batch = store.write()?;
    let mut txn = batch.begin_txn();
    txn.put(b"beta", b"second value", 0)?;
    txn.end();
    batch.put_meta(b"raft/state", b"applied 17")?;
    batch.put_lease(7, b"lease record")?;
    batch.commit(true)
}

fn assert_io(what: &str, result: Result<impl std::fmt::Debug>) {
    match result {
        Err(StorageError::Io(e)) => assert!(e.to_string().contains("injected"), "{what}: {e}"),
        other => panic!("{what}: expected an injected I/O error, got {other:?}"),
    }
}

fn assert_corrupt(what: &str, result: Result<impl std::fmt::Debug>) {
    match result {
        Err(StorageError::Corrupt(_)) => {}
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

/// One operation that reads `table` and returns what it read.
fn read_table(store: &Store, table: Table) -> Result<String> {
    Ok(match table {
        Table::Kv => format!(
            "{:?} {:?}",
            store.range(b"a", b"z", RangeOptions::default())?.kvs,
            store.read()?.events(2, 3, 0)?
        ),
        Table::Meta => format!("{}", store.current_revision()?),
        Table::AppMeta => format!("{:?}", store.get_meta(b"raft/state")?),
        Table::Lease => format!("{:?}", store.leases()?),
    })
}

#[test]
fn no_fault_armed_is_transparent() -> Result<()> {
    both(|f| {
        fill(&f.store)?;
        let plain = Store::in_memory()?;
        fill(&plain)?;
        assert_eq!(f.store.hash_kv(0)?, plain.hash_kv(0)?);
        for table in Table::ALL {
            assert_eq!(read_table(&f.store, table)?, read_table(&plain, table)?);
        }
        Ok(())
    })
}

#[test]
fn commit_error_surfaces_and_leaves_no_trace() -> Result<()> {
    both(|f| {
        fill(&f.store)?;
        let before = f.store.current_revision()?;
        f.plan.arm(FaultSpec::once(Fault::CommitError));
        // A durable commit is SyncError's business: this one passes.
        put(&f.store, b"beta", b"durable", true)?;
        assert_io("commit", put(&f.store, b"gamma", b"lost", false));
        assert_eq!(get(&f.store, b"gamma")?, None, "failed commit visible");
        assert_eq!(f.store.current_revision()?, before + 1);
        assert_eq!(f.plan.fired(Fault::CommitError), 1);
        // The fault fired once; the engine itself is intact.
        put(&f.store, b"gamma", b"kept", false)?;
        assert_eq!(get(&f.store, b"gamma")?, Some(b"kept".to_vec()));
        Ok(())
    })
}

#[test]
fn sync_error_surfaces_on_sync_and_durable_commit() -> Result<()> {
    both(|f| {
        fill(&f.store)?;
        put(&f.store, b"gamma", b"not yet durable", false)?;
        f.plan.arm(FaultSpec::once(Fault::SyncError));
        assert_io("sync", f.store.sync());
        f.plan.arm(FaultSpec::once(Fault::SyncError));
        assert_io("durable commit", put(&f.store, b"delta", b"v", true));
        assert_eq!(f.plan.fired(Fault::SyncError), 2);
        // A non-durable commit has no fsync to fail.
        f.plan.arm(FaultSpec::once(Fault::SyncError));
        put(&f.store, b"epsilon", b"v", false)?;
        assert_eq!(f.plan.fired(Fault::SyncError), 2);
        Ok(())
    })
}

#[test]
fn read_error_surfaces_on_every_table() -> Result<()> {
    both(|f| {
        fill(&f.store)?;
        for table in Table::ALL {
            f.plan.arm(FaultSpec::once(Fault::ReadError).on(table));
            assert_io(table.name(), read_table(&f.store, table));
            f.plan.disarm_all();
        }
        Ok(())
    })
}

#[test]
fn short_read_is_corruption_on_every_table() -> Result<()> {
    both(|f| {
        fill(&f.store)?;
        for (fired, table) in (1..).zip(Table::ALL) {
            f.plan.arm(FaultSpec::once(Fault::ShortRead).on(table));
            assert_corrupt(table.name(), read_table(&f.store, table));
            assert_eq!(f.plan.fired(Fault::ShortRead), fired, "{}", table.name());
            f.plan.disarm_all();
        }
        Ok(())
    })
}

#[test]
fn flipped_value_bit_is_never_served() -> Result<()> {
    both(|f| {
        fill(&f.store)?;
        for (fired, table) in (1..).zip(Table::ALL) {
            f.plan.arm(FaultSpec::once(Fault::FlipValueBit).on(table));
            assert_corrupt(table.name(), read_table(&f.store, table));
            assert_eq!(f.plan.fired(Fault::FlipValueBit), fired, "{}", table.name());
            f.plan.disarm_all();
        }
        // The data on the engine is intact: the next read is clean.
        assert_eq!(get(&f.store, b"alpha")?, Some(b"first value".to_vec()));
        Ok(())
    })
}

#[test]
fn flipped_key_bit_in_a_scan_is_never_served() -> Result<()> {
    both(|f| {
        fill(&f.store)?;
        f.plan.arm(FaultSpec::once(Fault::FlipKeyBit).on(Table::Kv));
        assert_corrupt("range", read_table(&f.store, Table::Kv));
        assert_eq!(f.plan.fired(Fault::FlipKeyBit), 1);
        Ok(())
    })
}

#[test]
fn hash_and_dump_fail_rather_than_cover_corruption() -> Result<()> {
    both(|f| {
        fill(&f.store)?;
        let clean = f.store.hash_kv(0)?;
        // Skip the first version so the flip hits a later record of the hash scan.
        f.plan
            .arm(FaultSpec::once(Fault::FlipValueBit).on(Table::Kv).after(1));
        assert_corrupt("hash_kv", f.store.hash_kv(0));
        f.plan
            .arm(FaultSpec::once(Fault::FlipValueBit).on(Table::Lease));
        assert_corrupt("dump", f.store.dump(&mut Vec::new()));
        assert_eq!(f.store.hash_kv(0)?, clean);
        Ok(())
    })
}

/// The real thing, not the simulation: a bit flipped in the redb file on disk while the
/// store is closed. redb does not verify page checksums on ordinary reads after a clean
/// shutdown, so only the entry CRC stands between the flip and a client.
#[test]
fn bit_flipped_in_a_value_in_the_redb_file_is_never_served() -> Result<()> {
    flip_on_disk(
        b"key",
        b"value-marker-0123456789abcdef",
        b"value-marker-0123456789abcdef",
    )
}

/// The same for a flipped key, which the index build would otherwise file under another name.
#[test]
fn bit_flipped_in_a_key_in_the_redb_file_is_never_served() -> Result<()> {
    flip_on_disk(
        b"key-marker-0123456789abcdef",
        b"v",
        b"key-marker-0123456789abcdef",
    )
}

/// Stores `key=value`, closes the store, flips a bit in every copy of `marker` in the file:
/// opening reads every version to build the key index, and refuses with `Corrupt`.
fn flip_on_disk(key: &[u8], value: &[u8], marker: &[u8]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kv.redb");
    {
        let store = Store::open_redb(&path)?;
        put(&store, key, value, true)?;
    }
    let mut bytes = std::fs::read(&path)?;
    let mut flipped = 0;
    let mut at = 0;
    while let Some(pos) = bytes[at..].windows(marker.len()).position(|w| w == marker) {
        let hit = at + pos;
        bytes[hit + marker.len() / 2] ^= 0b0001_0000;
        flipped += 1;
        at = hit + marker.len();
    }
    assert!(flipped > 0, "value not found in the file");
    std::fs::write(&path, &bytes)?;

    assert_corrupt("open", Store::open_redb(&path).map(|_| ()));
    Ok(())
}
