//! The simulated disk of a member's MVCC store.
//!
//! A [`StoreDisk`] outlives the member. The running member writes to an in-memory engine;
//! only a durable commit (`Store::sync`, the periodic durable commit and the one before a
//! snapshot) copies the whole engine to the disk. A crash loses every non-durable commit, as
//! a real crash loses redb's unsynced commits; the Raft log then re-applies them.

use std::sync::{Arc, Mutex};

use keel_storage::backend::{KeyBounds, Visitor};
use keel_storage::{Backend, Direction, MemBackend, ReadTxn, Result, Store, Table, WriteTxn};

type Rows = Vec<(Table, Vec<u8>, Vec<u8>)>;

/// What survives a crash of the member's store.
#[derive(Clone, Default)]
pub struct StoreDisk {
    durable: Arc<Mutex<Rows>>,
}

impl StoreDisk {
    /// Opens a store on this disk: the engine starts from the last durable state.
    pub fn open(&self) -> Result<Arc<Store>> {
        let engine = MemBackend::new();
        let rows = self.lock().clone();
        if !rows.is_empty() {
            let mut txn = engine.begin_write()?;
            for (table, key, value) in &rows {
                txn.put(*table, key, value)?;
            }
            txn.commit(true)?;
        }
        let backend = DiskBackend {
            engine,
            disk: self.clone(),
        };
        Ok(Arc::new(Store::open(Arc::new(backend))?))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies the engine's committed state to the disk.
    fn save(&self, engine: &MemBackend) -> Result<()> {
        let read = engine.begin_read()?;
        let mut rows = Rows::new();
        for table in Table::ALL {
            read.scan(
                table,
                (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
                Direction::Forward,
                &mut |k, v| {
                    rows.push((table, k.to_vec(), v.to_vec()));
                    Ok(true)
                },
            )?;
        }
        *self.lock() = rows;
        Ok(())
    }
}

struct DiskBackend {
    engine: MemBackend,
    disk: StoreDisk,
}

impl Backend for DiskBackend {
    fn begin_read(&self) -> Result<Box<dyn ReadTxn>> {
        self.engine.begin_read()
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn>> {
        Ok(Box::new(DiskWrite {
            inner: self.engine.begin_write()?,
            engine: self.engine.clone(),
            disk: self.disk.clone(),
        }))
    }

    fn size_bytes(&self) -> Result<u64> {
        self.engine.size_bytes()
    }
}

struct DiskWrite {
    inner: Box<dyn WriteTxn>,
    engine: MemBackend,
    disk: StoreDisk,
}

impl ReadTxn for DiskWrite {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.inner.scan(table, bounds, direction, visit)
    }
}

impl WriteTxn for DiskWrite {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.put(table, key, value)
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        self.inner.delete(table, key)
    }

    fn clear(&mut self, table: Table) -> Result<()> {
        self.inner.clear(table)
    }

    fn commit(self: Box<Self>, durable: bool) -> Result<()> {
        let DiskWrite {
            inner,
            engine,
            disk,
        } = *self;
        inner.commit(durable)?;
        if durable {
            disk.save(&engine)?;
        }
        Ok(())
    }
}

#[test]
fn only_durable_commits_survive_a_reopen() {
    let disk = StoreDisk::default();
    let store = disk.open().expect("open");
    let mut batch = store.write().expect("write");
    batch.begin_txn().put(b"a", b"1", 0).expect("put");
    batch.commit(true).expect("durable commit");
    let mut batch = store.write().expect("write");
    batch.begin_txn().put(b"b", b"2", 0).expect("put");
    batch.commit(false).expect("volatile commit");
    assert_eq!(store.current_revision().expect("rev"), 3);
    let reopened = disk.open().expect("reopen");
    assert_eq!(
        reopened.current_revision().expect("rev"),
        2,
        "the volatile commit is lost"
    );
}
