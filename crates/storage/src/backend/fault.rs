//! Fault-injecting engine for tests: wraps any [`Backend`] and, as a shared [`FaultPlan`]
//! says, fails commits and syncs the way a failing disk does and corrupts what reads return.
//!
//! Owns: the plan (which fault, on which table, after how many matching operations, how many
//! times) and its effect on one operation. Must never be used outside tests and fault drills;
//! it does nothing until a fault is armed, so a member can run on it normally.
//!
//! Faults and what they model:
//! * [`Fault::CommitError`]: a non-durable commit (an apply batch) fails writing its pages
//!   (EIO, ENOSPC). The transaction is dropped, nothing of it becomes visible, the commit
//!   returns an error.
//! * [`Fault::SyncError`]: a durable commit's fsync fails. As with a real fsync error the
//!   data already sits in this process's view (here: it is committed non-durably) while the
//!   disk promises nothing about it; the commit returns an error. Retrying would "succeed"
//!   without the lost pages ever reaching the disk (the fsyncgate lesson), so the caller must
//!   stop, never carry on.
//! * [`Fault::SlowCommit`]: a non-durable commit takes [`SLOW_COMMIT`] before it goes
//!   through, as on a stalled disk: the member applies late but correctly.
//! * [`Fault::ReadError`]: a read fails with an I/O error.
//! * [`Fault::ShortRead`]: a read returns the first half of the stored bytes.
//! * [`Fault::FlipValueBit`] / [`Fault::FlipKeyBit`]: a read returns the value (or, in a
//!   scan, the key) with one bit flipped, as a disk or bus corrupting data would.
//!
//! A "read" is one `get` that finds a value or one entry a scan visits, in a read or a write
//! transaction.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{Backend, Direction, KeyBounds, ReadTxn, Table, Visitor, WriteTxn};
use crate::error::{Result, StorageError};

/// One kind of injected fault (see the module doc for what each models).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    CommitError,
    SyncError,
    SlowCommit,
    ReadError,
    ShortRead,
    FlipValueBit,
    FlipKeyBit,
}

/// How long a [`Fault::SlowCommit`] holds its commit.
pub const SLOW_COMMIT: Duration = Duration::from_millis(150);

/// When an armed fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    pub fault: Fault,
    /// Only operations on this table count (commits are on no table: leave it `None`).
    pub table: Option<Table>,
    /// Matching operations that pass untouched before the first firing.
    pub skip: u64,
    /// How many matching operations fail once it fires (`u64::MAX`: every one after).
    pub times: u64,
}

impl FaultSpec {
    /// Fires once, on the next matching operation on any table.
    pub fn once(fault: Fault) -> Self {
        Self {
            fault,
            table: None,
            skip: 0,
            times: 1,
        }
    }

    /// Fires on every matching operation until disarmed.
    pub fn always(fault: Fault) -> Self {
        Self {
            times: u64::MAX,
            ..Self::once(fault)
        }
    }

    /// Restricts the fault to `table`.
    pub fn on(mut self, table: Table) -> Self {
        self.table = Some(table);
        self
    }

    /// Lets `skip` matching operations pass first.
    pub fn after(mut self, skip: u64) -> Self {
        self.skip = skip;
        self
    }
}

#[derive(Default)]
struct PlanState {
    armed: Vec<FaultSpec>,
    fired: Vec<(Fault, u64)>,
}

/// The faults to inject, shared between a test and the [`FaultyBackend`]s it built.
#[derive(Default)]
pub struct FaultPlan {
    state: Mutex<PlanState>,
}

impl FaultPlan {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, PlanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms a fault; several may be armed at once.
    pub fn arm(&self, spec: FaultSpec) {
        self.lock().armed.push(spec);
    }

    /// Removes every armed fault (what already fired stays counted).
    pub fn disarm_all(&self) {
        self.lock().armed.clear();
    }

    /// How many times `fault` has fired.
    pub fn fired(&self, fault: Fault) -> u64 {
        self.lock()
            .fired
            .iter()
            .find(|(f, _)| *f == fault)
            .map_or(0, |(_, n)| *n)
    }

    /// Whether this operation (`fault` kind, on `table`) fails now; counts the firing.
    fn hit(&self, fault: Fault, table: Option<Table>) -> bool {
        let mut state = self.lock();
        let Some(spec) = state
            .armed
            .iter_mut()
            .find(|s| s.fault == fault && (s.table.is_none() || s.table == table))
        else {
            return false;
        };
        if spec.skip > 0 {
            spec.skip -= 1;
            return false;
        }
        spec.times = spec.times.saturating_sub(1);
        state.armed.retain(|s| s.times > 0);
        match state.fired.iter_mut().find(|(f, _)| *f == fault) {
            Some((_, n)) => *n += 1,
            None => state.fired.push((fault, 1)),
        }
        true
    }
}

fn injected(what: &str) -> StorageError {
    StorageError::Io(std::io::Error::other(format!("injected fault: {what}")))
}

/// [`Backend`] that applies a [`FaultPlan`] to `inner`.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    plan: Arc<FaultPlan>,
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn Backend>, plan: Arc<FaultPlan>) -> Self {
        Self { inner, plan }
    }
}

impl Backend for FaultyBackend {
    fn begin_read(&self) -> Result<Box<dyn ReadTxn>> {
        Ok(Box::new(FaultyTxn {
            inner: self.inner.begin_read()?,
            plan: self.plan.clone(),
        }))
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn>> {
        Ok(Box::new(FaultyTxn {
            inner: self.inner.begin_write()?,
            plan: self.plan.clone(),
        }))
    }

    fn size_bytes(&self) -> Result<u64> {
        self.inner.size_bytes()
    }

    fn flush_ahead(&self) -> Result<()> {
        self.inner.flush_ahead()
    }
}

/// The bytes a faulty read returns instead of `stored`, or `None` to return them as they are.
fn corrupt_value(plan: &FaultPlan, table: Table, stored: &[u8]) -> Result<Option<Vec<u8>>> {
    if plan.hit(Fault::ReadError, Some(table)) {
        return Err(injected("read error"));
    }
    if !stored.is_empty() && plan.hit(Fault::ShortRead, Some(table)) {
        return Ok(Some(stored[..stored.len() / 2].to_vec()));
    }
    if !stored.is_empty() && plan.hit(Fault::FlipValueBit, Some(table)) {
        return Ok(Some(flip_middle_bit(stored)));
    }
    Ok(None)
}

fn flip_middle_bit(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = out.len() / 2;
    out[at] ^= 0b0000_0100;
    out
}

/// A read or write transaction of the wrapped engine whose reads may be damaged.
struct FaultyTxn<T: ?Sized> {
    inner: Box<T>,
    plan: Arc<FaultPlan>,
}

impl<T: ReadTxn + ?Sized> ReadTxn for FaultyTxn<T> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(stored) = self.inner.get(table, key)? else {
            return Ok(None);
        };
        Ok(Some(
            corrupt_value(&self.plan, table, &stored)?.unwrap_or(stored),
        ))
    }

    fn scan(
        &self,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        let plan = &self.plan;
        self.inner.scan(table, bounds, direction, &mut |k, v| {
            let value = corrupt_value(plan, table, v)?;
            let value = value.as_deref().unwrap_or(v);
            if !k.is_empty() && plan.hit(Fault::FlipKeyBit, Some(table)) {
                return visit(&flip_middle_bit(k), value);
            }
            visit(k, value)
        })
    }
}

impl WriteTxn for FaultyTxn<dyn WriteTxn> {
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
        if !durable && self.plan.hit(Fault::SlowCommit, None) {
            std::thread::sleep(SLOW_COMMIT);
        }
        if !durable && self.plan.hit(Fault::CommitError, None) {
            // Dropping the inner transaction aborts it: nothing becomes visible.
            return Err(injected("commit failed (write/fsync error)"));
        }
        if durable && self.plan.hit(Fault::SyncError, None) {
            // The pages reached this process's view but the disk promised nothing.
            self.inner.commit(false)?;
            return Err(injected("fsync failed"));
        }
        self.inner.commit(durable)
    }
}
