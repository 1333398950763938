//! MVCC tests. Every body runs against both backends through `backend_tests!`.

mod compaction;
mod kv;
mod snapshot;

use std::sync::Arc;

use super::{KeyValue, RangeOptions, Store};
use crate::backend::{Backend, BufferedBackend, MemBackend, RedbBackend};
use crate::error::Result;

/// A store plus whatever keeps its backing storage alive.
pub(super) struct Fixture {
    pub(super) store: Store,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) _dir: Option<tempfile::TempDir>,
}

pub(super) fn mem_fixture() -> Fixture {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    Fixture {
        store: Store::open(backend.clone()).expect("open mem store"),
        backend,
        _dir: None,
    }
}

pub(super) fn redb_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend: Arc<dyn Backend> =
        Arc::new(RedbBackend::open(dir.path().join("state.redb")).expect("open redb"));
    Fixture {
        store: Store::open(backend.clone()).expect("open redb store"),
        backend,
        _dir: Some(dir),
    }
}

/// redb behind the write-behind layer, as the server runs it.
pub(super) fn buffered_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine: Arc<dyn Backend> =
        Arc::new(RedbBackend::open(dir.path().join("state.redb")).expect("open redb"));
    let backend: Arc<dyn Backend> =
        Arc::new(BufferedBackend::new(engine).expect("start write-behind"));
    Fixture {
        store: Store::open(backend.clone()).expect("open buffered store"),
        backend,
        _dir: Some(dir),
    }
}

/// For each `name`, generates `name::mem`, `name::redb` and `name::buffered` tests calling
/// `fn name(&Fixture) -> Result<()>`.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn mem() -> $crate::error::Result<()> {
                    super::$name(&$crate::mvcc::tests::mem_fixture())
                }

                #[test]
                fn redb() -> $crate::error::Result<()> {
                    super::$name(&$crate::mvcc::tests::redb_fixture())
                }

                #[test]
                fn buffered() -> $crate::error::Result<()> {
                    super::$name(&$crate::mvcc::tests::buffered_fixture())
                }
            }
        )*
    };
}
pub(super) use backend_tests;

/// Puts one key in its own txn and batch; returns the new revision.
pub(super) fn put(store: &Store, key: &[u8], value: &[u8]) -> Result<i64> {
    let mut batch = store.write()?;
    let mut txn = batch.begin_txn();
    txn.put(key, value, 0)?;
    let outcome = txn.end();
    batch.commit(false)?;
    Ok(outcome.revision)
}

/// Deletes a range in its own txn and batch; returns the deleted kvs.
pub(super) fn delete(store: &Store, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
    let mut batch = store.write()?;
    let mut txn = batch.begin_txn();
    let deleted = txn.delete_range(key, range_end)?;
    txn.end();
    batch.commit(false)?;
    Ok(deleted)
}

/// The live version of `key` at `revision` (0 = current).
pub(super) fn get(store: &Store, key: &[u8], revision: i64) -> Result<Option<KeyValue>> {
    let opts = RangeOptions {
        revision,
        ..RangeOptions::default()
    };
    Ok(store.range(key, &[], opts)?.kvs.into_iter().next())
}

/// Keys of a range at the current revision.
pub(super) fn keys(store: &Store, key: &[u8], range_end: &[u8]) -> Result<Vec<Vec<u8>>> {
    let result = store.range(key, range_end, RangeOptions::default())?;
    Ok(result.kvs.into_iter().map(|kv| kv.key).collect())
}

#[test]
fn handles_cross_threads() {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Send>() {}
    shared::<Store>();
    sent::<super::WriteBatch>();
    sent::<super::ReadView>();
}
