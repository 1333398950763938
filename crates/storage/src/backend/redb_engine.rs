//! redb engine: every [`Table`] is a redb table of `&[u8] -> &[u8]` in one file.
//!
//! Owns: mapping the seam onto redb transactions and durability levels. Must never
//! interpret keys or values. A non-durable commit uses redb's `Durability::None`: it is
//! visible at once and becomes durable with the next `Durability::Immediate` commit.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, WriteTransaction,
};
use self_cell::self_cell;

use super::{bounds_are_empty, Backend, Direction, KeyBounds, ReadTxn, Table, Visitor, WriteTxn};
use crate::error::{Result, StorageError};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn definition(table: Table) -> Def {
    TableDefinition::new(table.name())
}

/// redb's page cache (its default is 1 GiB). Pages past it are read through the OS page cache.
/// Half of it bounds the pages non-durable commits keep buffered until the next durable one,
/// which writes them out while it holds the write lock (stalling apply): at put/c256 the
/// periodic durable commit took 60-90 ms with 32 MiB, 25-45 ms with 8 MiB, and put p99 fell
/// from ~80 to ~60 ms, with range throughput unchanged within the noise.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// How long opening waits for a lock still held by this process's previous handle.
const OPEN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// redb-backed [`Backend`] over one database file.
pub struct RedbBackend {
    db: Database,
    path: PathBuf,
}

impl RedbBackend {
    /// Opens the database file at `path`, creating it (and all tables) if missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // The file is locked while any handle of it lives, and a read transaction outlives
        // its store until whoever holds it lets go. A member restarted in place (in the same
        // process, as tests do) waits for its predecessor's last readers; another process
        // holding the file gets the lock error after the wait.
        let deadline = std::time::Instant::now() + OPEN_LOCK_WAIT;
        let db = loop {
            match Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
            {
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.map_err(StorageError::backend)?,
            }
        };
        let txn = db.begin_write().map_err(StorageError::backend)?;
        for table in Table::ALL {
            txn.open_table(definition(table))
                .map_err(StorageError::backend)?;
        }
        txn.commit().map_err(StorageError::backend)?;
        Ok(Self { db, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Backend for RedbBackend {
    fn begin_read(&self) -> Result<Box<dyn ReadTxn>> {
        let txn = self.db.begin_read().map_err(StorageError::backend)?;
        Ok(Box::new(RedbRead {
            txn,
            tables: Default::default(),
        }))
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn>> {
        let txn = self.db.begin_write().map_err(StorageError::backend)?;
        Ok(Box::new(RedbWrite(WriteTables::new(txn, |_| {
            Default::default()
        }))))
    }

    fn size_bytes(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path)?.len())
    }

    fn flush_ahead(&self) -> Result<()> {
        // fdatasync through a second descriptor flushes the file's dirty pages like redb's own.
        std::fs::File::open(&self.path)?.sync_data()?;
        Ok(())
    }
}

type ReadTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

struct RedbRead {
    txn: ReadTransaction,
    /// Tables opened on first use: a point read needs two of the five, and opening one was
    /// most of the cost of starting a read (range-s/c256 profile).
    tables: [OnceLock<ReadTable>; Table::ALL.len()],
}

impl RedbRead {
    fn table(&self, table: Table) -> Result<&ReadTable> {
        let cell = &self.tables[table.index()];
        if let Some(opened) = cell.get() {
            return Ok(opened);
        }
        let opened = self
            .txn
            .open_table(definition(table))
            .map_err(StorageError::backend)?;
        Ok(cell.get_or_init(|| opened))
    }
}

type WriteTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// A write transaction's tables, opened on first use and kept open until the commit. Opening
/// a table in a write transaction looks it up in redb's table tree, and closing it writes its
/// root back there: once per call before, several times per applied entry.
type OpenTables<'txn> = [RefCell<Option<WriteTable<'txn>>>; Table::ALL.len()];

self_cell!(
    struct WriteTables {
        owner: WriteTransaction,
        #[not_covariant]
        dependent: OpenTables,
    }
);

struct RedbWrite(WriteTables);

impl RedbWrite {
    /// Runs `f` on `table`, opening it first if this transaction has not yet.
    fn with_table<R>(
        &self,
        table: Table,
        f: impl FnOnce(&mut WriteTable<'_>) -> Result<R>,
    ) -> Result<R> {
        self.0.with_dependent(|txn, tables| {
            let mut slot = tables[table.index()].borrow_mut();
            let opened = match slot.as_mut() {
                Some(opened) => opened,
                None => slot.insert(
                    txn.open_table(definition(table))
                        .map_err(StorageError::backend)?,
                ),
            };
            f(opened)
        })
    }
}

fn get_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    key: &[u8],
) -> Result<Option<Vec<u8>>> {
    let value = table.get(key).map_err(StorageError::backend)?;
    Ok(value.map(|v| v.value().to_vec()))
}

fn scan_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    bounds: KeyBounds<'_>,
    direction: Direction,
    visit: &mut Visitor<'_>,
) -> Result<()> {
    if bounds_are_empty(&bounds) {
        return Ok(());
    }
    let range = table
        .range::<&[u8]>(bounds)
        .map_err(StorageError::backend)?;
    let entries: Box<dyn Iterator<Item = _>> = match direction {
        Direction::Forward => Box::new(range),
        Direction::Backward => Box::new(range.rev()),
    };
    for entry in entries {
        let (key, value) = entry.map_err(StorageError::backend)?;
        if !visit(key.value(), value.value())? {
            break;
        }
    }
    Ok(())
}

impl ReadTxn for RedbRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        get_in(self.table(table)?, key)
    }

    fn scan(
        &self,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        scan_in(self.table(table)?, bounds, direction, visit)
    }
}

impl ReadTxn for RedbWrite {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with_table(table, |opened| get_in(opened, key))
    }

    fn scan(
        &self,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.with_table(table, |opened| scan_in(opened, bounds, direction, visit))
    }
}

impl WriteTxn for RedbWrite {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.with_table(table, |opened| {
            opened.insert(key, value).map_err(StorageError::backend)?;
            Ok(())
        })
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        self.with_table(table, |opened| {
            let removed = opened.remove(key).map_err(StorageError::backend)?;
            Ok(removed.is_some())
        })
    }

    fn clear(&mut self, table: Table) -> Result<()> {
        self.with_table(table, |opened| {
            opened.retain(|_, _| false).map_err(StorageError::backend)
        })
    }

    fn commit(self: Box<Self>, durable: bool) -> Result<()> {
        // The tables close (and write their roots back) before the transaction commits.
        let mut txn = self.0.into_owner();
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)
            .map_err(StorageError::backend)?;
        txn.commit().map_err(StorageError::backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_waits_for_the_first_handle_to_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kv.redb");
        let first = RedbBackend::open(&path).expect("open");
        // While the first handle lives, the file is locked.
        assert!(matches!(
            Database::create(&path),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
        let second_path = path.clone();
        let second = std::thread::spawn(move || RedbBackend::open(second_path).map(|_| ()));
        drop(first);
        second
            .join()
            .expect("thread")
            .expect("opens once the first handle is gone");
    }
}
