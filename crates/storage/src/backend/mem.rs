//! In-memory engine for tests: one `BTreeMap` per table behind copy-on-write `Arc`s.
//!
//! Owns: snapshot isolation by sharing immutable table maps, and writer exclusion by a
//! gate. Must never be used where data has to survive the process; `durable` is ignored.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};

use super::{bounds_are_empty, Backend, Direction, KeyBounds, ReadTxn, Table, Visitor, WriteTxn};
use crate::error::{Result, StorageError};

type TableMap = BTreeMap<Vec<u8>, Vec<u8>>;

/// The whole database: each table shared until a writer first touches it.
#[derive(Clone, Default)]
struct Tables([Arc<TableMap>; Table::ALL.len()]);

impl Tables {
    fn table(&self, table: Table) -> &TableMap {
        &self.0[table.index()]
    }

    // Copies the table only if a reader (or the committed state) still shares it.
    fn table_mut(&mut self, table: Table) -> &mut TableMap {
        Arc::make_mut(&mut self.0[table.index()])
    }
}

#[derive(Default)]
struct Shared {
    committed: Mutex<Tables>,
    // `true` while a write transaction is open. A Condvar gate instead of holding a
    // MutexGuard so the write transaction stays `Send`.
    writer_busy: Mutex<bool>,
    writer_done: Condvar,
}

/// In-memory [`Backend`]; cloning shares the same database.
#[derive(Clone, Default)]
pub struct MemBackend {
    shared: Arc<Shared>,
}

impl MemBackend {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    fn snapshot(&self) -> Result<Tables> {
        let committed = self
            .shared
            .committed
            .lock()
            .map_err(StorageError::backend)?;
        Ok(committed.clone())
    }
}

impl Backend for MemBackend {
    fn begin_read(&self) -> Result<Box<dyn ReadTxn>> {
        Ok(Box::new(MemRead {
            tables: self.snapshot()?,
        }))
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn>> {
        let mut busy = self
            .shared
            .writer_busy
            .lock()
            .map_err(StorageError::backend)?;
        while *busy {
            busy = self
                .shared
                .writer_done
                .wait(busy)
                .map_err(StorageError::backend)?;
        }
        *busy = true;
        drop(busy);
        let gate = WriterGate {
            shared: self.shared.clone(),
        };
        Ok(Box::new(MemWrite {
            tables: self.snapshot()?,
            gate,
        }))
    }

    fn size_bytes(&self) -> Result<u64> {
        let tables = self.snapshot()?;
        let bytes: usize = tables
            .0
            .iter()
            .flat_map(|t| t.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum();
        Ok(bytes as u64)
    }
}

/// Releases the writer gate when the write transaction ends (commit or drop).
struct WriterGate {
    shared: Arc<Shared>,
}

impl Drop for WriterGate {
    fn drop(&mut self) {
        // A poisoned gate means a writer panicked; recover the flag so others can proceed.
        let mut busy = match self.shared.writer_busy.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *busy = false;
        self.shared.writer_done.notify_one();
    }
}

struct MemRead {
    tables: Tables,
}

struct MemWrite {
    tables: Tables,
    gate: WriterGate,
}

fn get_in(tables: &Tables, table: Table, key: &[u8]) -> Option<Vec<u8>> {
    tables.table(table).get(key).cloned()
}

fn scan_in(
    tables: &Tables,
    table: Table,
    bounds: KeyBounds<'_>,
    direction: Direction,
    visit: &mut Visitor<'_>,
) -> Result<()> {
    if bounds_are_empty(&bounds) {
        return Ok(());
    }
    let range = tables.table(table).range::<[u8], _>(bounds);
    let entries: Box<dyn Iterator<Item = _>> = match direction {
        Direction::Forward => Box::new(range),
        Direction::Backward => Box::new(range.rev()),
    };
    for (key, value) in entries {
        if !visit(key, value)? {
            break;
        }
    }
    Ok(())
}

impl ReadTxn for MemRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(get_in(&self.tables, table, key))
    }

    fn scan(
        &self,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        scan_in(&self.tables, table, bounds, direction, visit)
    }
}

impl ReadTxn for MemWrite {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(get_in(&self.tables, table, key))
    }

    fn scan(
        &self,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        scan_in(&self.tables, table, bounds, direction, visit)
    }
}

impl WriteTxn for MemWrite {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.tables
            .table_mut(table)
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        Ok(self.tables.table_mut(table).remove(key).is_some())
    }

    fn clear(&mut self, table: Table) -> Result<()> {
        self.tables.0[table.index()] = Arc::default();
        Ok(())
    }

    fn commit(self: Box<Self>, _durable: bool) -> Result<()> {
        let MemWrite { tables, gate } = *self;
        let mut committed = gate
            .shared
            .committed
            .lock()
            .map_err(StorageError::backend)?;
        *committed = tables;
        drop(committed);
        drop(gate);
        Ok(())
    }
}
