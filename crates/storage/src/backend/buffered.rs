//! Write-behind engine wrapper: a commit lands in memory, visible at once, and reaches the
//! inner engine a few milliseconds later together with the commits around it.
//!
//! Owns: the committed write transactions not yet written to the inner engine (layers, oldest
//! first), the flusher thread that writes them in one inner transaction each time, and the
//! merge of layers over an inner snapshot for reads. Must never: show a reader part of a
//! commit, write layers out of order, or let a reader miss a commit while it moves from a
//! layer into the inner engine.
//!
//! Why: a redb commit costs tens of microseconds however little it carries (page copies,
//! allocator state, checksums), and apply used to pay it once per batch on every member, on
//! the path of every write. etcd's backend does the same: writes go to an open bbolt
//! transaction with a read buffer and commit every 100 ms.
//!
//! Crash semantics are those of a non-durable commit: what was not yet made durable may be
//! lost, never torn (the layers reach the inner engine in order, each flush atomically). A
//! durable commit writes every layer out and commits the inner engine durably. A failed flush
//! keeps its layers (reads stay consistent) and fails every later write.
//!
//! A reader takes the inner snapshot and the layer list under one lock; the flusher removes
//! layers under that lock only after their inner commit, so a reader sees each commit either
//! in a layer or in the inner snapshot (or both, which reads the same). A write transaction
//! that clears a table or grows past [`DIRECT_BYTES`] (a snapshot restore) writes the inner
//! engine directly instead, after writing every layer out, so a big restore is not held twice
//! in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{bounds_are_empty, Backend, Direction, KeyBounds, ReadTxn, Table, Visitor, WriteTxn};
use crate::error::{Result, StorageError};

/// How long a commit may wait in memory before the flusher writes it out.
const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// Layers that make the flusher write out at once (every read looks through each layer).
const FLUSH_LAYERS: usize = 16;
/// Buffered bytes that make the flusher write out at once.
const FLUSH_BYTES: usize = 4 << 20;
/// Buffered bytes past which a commit writes out itself (the flusher fell behind).
const HARD_BYTES: usize = 64 << 20;
/// A write transaction bigger than this writes the inner engine directly.
const DIRECT_BYTES: usize = 8 << 20;

/// One table's changes in a layer: `None` is a deletion.
type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A key and what the layers say of it (`None`: deleted).
type Change<'a> = (&'a [u8], Option<&'a [u8]>);

/// The changes of one committed write transaction.
#[derive(Default)]
struct Layer {
    tables: [Changes; Table::ALL.len()],
    /// The table was cleared before these changes: nothing older shows through.
    cleared: [bool; Table::ALL.len()],
    bytes: usize,
}

impl Layer {
    fn is_empty(&self) -> bool {
        !self.cleared.contains(&true) && self.tables.iter().all(BTreeMap::is_empty)
    }

    /// `Some(found)` when this layer decides `key` (`found == None`: deleted or cleared);
    /// `None` when older data decides.
    fn lookup(&self, table: Table, key: &[u8]) -> Option<Option<&[u8]>> {
        let i = table.index();
        match self.tables[i].get(key) {
            Some(value) => Some(value.as_deref()),
            None if self.cleared[i] => Some(None),
            None => None,
        }
    }

    fn write_into(&self, txn: &mut dyn WriteTxn) -> Result<()> {
        for table in Table::ALL {
            let i = table.index();
            if self.cleared[i] {
                txn.clear(table)?;
            }
            for (key, value) in &self.tables[i] {
                match value {
                    Some(value) => txn.put(table, key, value)?,
                    None => {
                        txn.delete(table, key)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct State {
    /// Committed, not yet in the inner engine; oldest first.
    layers: Vec<Arc<Layer>>,
    bytes: usize,
    /// Why a flush failed; every later write fails with it.
    failed: Option<String>,
    closing: bool,
}

/// A flag held by at most one owner at a time; a guard instead of a `MutexGuard` so that the
/// write transaction holding it stays `Send`.
#[derive(Default)]
struct Gate {
    busy: Mutex<bool>,
    free: Condvar,
}

struct GateGuard(Arc<Shared>, fn(&Shared) -> &Gate);

impl Gate {
    fn acquire(shared: &Arc<Shared>, which: fn(&Shared) -> &Gate) -> GateGuard {
        let gate = which(shared);
        let mut busy = gate.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy {
            busy = gate.free.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
        *busy = true;
        GateGuard(shared.clone(), which)
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let gate = (self.1)(&self.0);
        *gate.busy.lock().unwrap_or_else(PoisonError::into_inner) = false;
        gate.free.notify_one();
    }
}

struct Shared {
    inner: Arc<dyn Backend>,
    state: Mutex<State>,
    /// Wakes the flusher: the first layer arrived, a threshold was crossed, or closing.
    wake: Condvar,
    /// Signalled after each flush that wrote layers out.
    flushed: Condvar,
    /// Held by the one write transaction.
    writer: Gate,
    /// Held while layers are written to the inner engine (flushes, direct transactions).
    flushing: Gate,
}

fn writer(s: &Shared) -> &Gate {
    &s.writer
}

fn flushing(s: &Shared) -> &Gate {
    &s.flushing
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(state: &State) -> Result<()> {
        match &state.failed {
            Some(why) => Err(StorageError::backend(format!(
                "an earlier write-behind flush failed: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// The inner snapshot and the layers over it, taken together (see the module doc).
    fn view(&self) -> Result<View> {
        let state = self.state();
        let inner = self.inner.begin_read()?;
        Ok(View {
            inner,
            layers: state.layers.clone(),
        })
    }

    fn push(&self, layer: Layer) -> Result<()> {
        let mut state = self.state();
        Self::check(&state)?;
        let was_empty = state.layers.is_empty();
        state.bytes += layer.bytes;
        state.layers.push(Arc::new(layer));
        if was_empty || state.layers.len() >= FLUSH_LAYERS || state.bytes >= FLUSH_BYTES {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn flush(self: &Arc<Self>, durable: bool) -> Result<()> {
        let _flushing = Gate::acquire(self, flushing);
        self.flush_held(durable)
    }

    /// Writes every layer to the inner engine in one transaction; the caller holds `flushing`.
    fn flush_held(&self, durable: bool) -> Result<()> {
        let layers = {
            let state = self.state();
            Self::check(&state)?;
            state.layers.clone()
        };
        if layers.is_empty() && !durable {
            return Ok(());
        }
        let written = self.inner.begin_write().and_then(|mut txn| {
            for layer in &layers {
                layer.write_into(&mut *txn)?;
            }
            txn.commit(durable)
        });
        let mut state = self.state();
        match written {
            Ok(()) => {
                // Only flushes remove layers and they are serialized: ours are still first.
                let bytes: usize = layers.iter().map(|l| l.bytes).sum();
                state.layers.drain(..layers.len());
                state.bytes -= bytes;
                self.flushed.notify_all();
                Ok(())
            }
            Err(e) => {
                state.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn flusher_loop(self: Arc<Self>) {
        loop {
            let mut state = self.state();
            while state.layers.is_empty() && !state.closing {
                state = self
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let deadline = Instant::now() + FLUSH_AFTER;
            while !state.closing && state.layers.len() < FLUSH_LAYERS && state.bytes < FLUSH_BYTES {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .wake
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let closing = state.closing;
            drop(state);
            // A failure is kept in the state and reported to the next write.
            if self.flush(false).is_err() || closing {
                return;
            }
        }
    }
}

/// Write-behind [`Backend`] over `inner` (see the module doc).
pub struct BufferedBackend {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl BufferedBackend {
    /// Wraps `inner` and starts the flusher thread.
    pub fn new(inner: Arc<dyn Backend>) -> Result<Self> {
        let shared = Arc::new(Shared {
            inner,
            state: Mutex::default(),
            wake: Condvar::new(),
            flushed: Condvar::new(),
            writer: Gate::default(),
            flushing: Gate::default(),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("keel-store-flush".into())
                .spawn(move || shared.flusher_loop())
                .map_err(StorageError::backend)?
        };
        Ok(Self {
            shared,
            flusher: Some(flusher),
        })
    }

    /// Writes every buffered commit to the inner engine now (non-durably).
    pub fn flush(&self) -> Result<()> {
        self.shared.flush(false)
    }
}

impl Drop for BufferedBackend {
    /// Hands what is buffered to the inner engine, as a non-durable commit would have.
    fn drop(&mut self) {
        self.shared.state().closing = true;
        self.shared.wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

impl Backend for BufferedBackend {
    fn begin_read(&self) -> Result<Box<dyn ReadTxn>> {
        Ok(Box::new(self.shared.view()?))
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn>> {
        let gate = Gate::acquire(&self.shared, writer);
        Shared::check(&self.shared.state())?;
        Ok(Box::new(BufferedWrite {
            mode: Mode::Layered {
                view: self.shared.view()?,
                own: Layer::default(),
            },
            shared: self.shared.clone(),
            _writer: gate,
        }))
    }

    fn size_bytes(&self) -> Result<u64> {
        self.shared.inner.size_bytes()
    }

    fn flush_ahead(&self) -> Result<()> {
        self.shared.flush(false)?;
        self.shared.inner.flush_ahead()
    }
}

/// An inner snapshot under the layers committed after it.
struct View {
    inner: Box<dyn ReadTxn>,
    layers: Vec<Arc<Layer>>,
}

impl View {
    /// `top` (a write transaction's own changes), then the layers, newest first.
    fn newest_first<'a>(&'a self, top: Option<&'a Layer>) -> impl Iterator<Item = &'a Layer> {
        top.into_iter()
            .chain(self.layers.iter().rev().map(|l| &**l))
    }

    fn get_under(&self, top: Option<&Layer>, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        for layer in self.newest_first(top) {
            if let Some(found) = layer.lookup(table, key) {
                return Ok(found.map(<[u8]>::to_vec));
            }
        }
        self.inner.get(table, key)
    }

    fn scan_under(
        &self,
        top: Option<&Layer>,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        if bounds_are_empty(&bounds) {
            return Ok(());
        }
        // Newest first: the first layer to mention a key decides it.
        let mut overlay: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
        let mut inner_hidden = false;
        let i = table.index();
        for layer in self.newest_first(top) {
            for (key, value) in layer.tables[i].range::<[u8], _>(bounds) {
                overlay.entry(key.as_slice()).or_insert(value.as_deref());
            }
            if layer.cleared[i] {
                inner_hidden = true;
                break;
            }
        }
        let ahead = |a: &[u8], b: &[u8]| match direction {
            Direction::Forward => a < b,
            Direction::Backward => a > b,
        };
        let mut pending: Box<dyn Iterator<Item = Change<'_>> + '_> = match direction {
            Direction::Forward => Box::new(overlay.into_iter()),
            Direction::Backward => Box::new(overlay.into_iter().rev()),
        };
        let mut next = pending.next();
        let mut stopped = false;
        if !inner_hidden {
            self.inner
                .scan(table, bounds, direction, &mut |key, value| {
                    // Overlay entries that come before this inner key go first.
                    while let Some((k, v)) = next.filter(|(k, _)| ahead(k, key)) {
                        next = pending.next();
                        if let Some(v) = v {
                            if !visit(k, v)? {
                                stopped = true;
                                return Ok(false);
                            }
                        }
                    }
                    let shown = match next {
                        Some((k, v)) if k == key => {
                            next = pending.next();
                            v
                        }
                        _ => Some(value),
                    };
                    let go_on = match shown {
                        Some(v) => visit(key, v)?,
                        None => true,
                    };
                    stopped = !go_on;
                    Ok(go_on)
                })?;
        }
        while let (false, Some((k, v))) = (stopped, next) {
            next = pending.next();
            if let Some(v) = v {
                stopped = !visit(k, v)?;
            }
        }
        Ok(())
    }
}

impl ReadTxn for View {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_under(None, table, key)
    }

    fn scan(
        &self,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.scan_under(None, table, bounds, direction, visit)
    }
}

enum Mode {
    /// The usual case: changes collect in `own`, which becomes a layer at commit.
    Layered { view: View, own: Layer },
    /// Writing the inner engine itself, with every layer written out and flushes held off.
    Direct {
        txn: Box<dyn WriteTxn>,
        _flushing: GateGuard,
    },
}

struct BufferedWrite {
    mode: Mode,
    shared: Arc<Shared>,
    // Last: released after the transaction's parts are gone.
    _writer: GateGuard,
}

impl BufferedWrite {
    /// Switches to writing the inner engine directly (see the module doc).
    fn direct(&mut self) -> Result<&mut dyn WriteTxn> {
        if let Mode::Layered { own, .. } = &self.mode {
            let held = Gate::acquire(&self.shared, flushing);
            self.shared.flush_held(false)?;
            let mut txn = self.shared.inner.begin_write()?;
            own.write_into(&mut *txn)?;
            self.mode = Mode::Direct {
                txn,
                _flushing: held,
            };
        }
        match &mut self.mode {
            Mode::Direct { txn, .. } => Ok(&mut **txn),
            Mode::Layered { .. } => Err(StorageError::backend("write-behind: not direct")),
        }
    }
}

impl ReadTxn for BufferedWrite {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match &self.mode {
            Mode::Layered { view, own } => view.get_under(Some(own), table, key),
            Mode::Direct { txn, .. } => txn.get(table, key),
        }
    }

    fn scan(
        &self,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        match &self.mode {
            Mode::Layered { view, own } => {
                view.scan_under(Some(own), table, bounds, direction, visit)
            }
            Mode::Direct { txn, .. } => txn.scan(table, bounds, direction, visit),
        }
    }
}

impl WriteTxn for BufferedWrite {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        let big = match &mut self.mode {
            Mode::Layered { own, .. } => {
                own.bytes += key.len() + value.len();
                own.tables[table.index()].insert(key.to_vec(), Some(value.to_vec()));
                own.bytes > DIRECT_BYTES
            }
            Mode::Direct { txn, .. } => return txn.put(table, key, value),
        };
        if big {
            self.direct()?;
        }
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        if let Mode::Direct { txn, .. } = &mut self.mode {
            return txn.delete(table, key);
        }
        let existed = self.get(table, key)?.is_some();
        if let Mode::Layered { own, .. } = &mut self.mode {
            own.bytes += key.len();
            own.tables[table.index()].insert(key.to_vec(), None);
        }
        Ok(existed)
    }

    fn clear(&mut self, table: Table) -> Result<()> {
        self.direct()?.clear(table)
    }

    fn commit(self: Box<Self>, durable: bool) -> Result<()> {
        let BufferedWrite {
            mode,
            shared,
            _writer,
        } = *self;
        match mode {
            Mode::Direct { txn, _flushing } => txn.commit(durable),
            Mode::Layered { own, view } => {
                drop(view);
                if !own.is_empty() {
                    shared.push(own)?;
                }
                // The next writer may start; a durable commit covers ours and all before it.
                drop(_writer);
                if durable || shared.state().bytes > HARD_BYTES {
                    shared.flush(durable)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use super::*;
    use crate::backend::{Fault, FaultPlan, FaultSpec, FaultyBackend, MemBackend};

    /// A small deterministic generator (xorshift64*), so a failing case can be replayed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }

        fn key(&mut self) -> Vec<u8> {
            format!("k{:02}", self.below(40)).into_bytes()
        }

        fn table(&mut self) -> Table {
            Table::ALL[self.below(2) as usize]
        }
    }

    fn buffered_over(inner: Arc<dyn Backend>) -> BufferedBackend {
        BufferedBackend::new(inner).expect("start write-behind")
    }

    /// The layer over an in-memory engine the test can read directly.
    fn over_mem() -> (Arc<MemBackend>, BufferedBackend) {
        let inner = Arc::new(MemBackend::new());
        let buffered = buffered_over(inner.clone());
        (inner, buffered)
    }

    /// Commits one put in its own write transaction.
    fn put_one(backend: &BufferedBackend, key: &[u8], value: &[u8], durable: bool) {
        let mut txn = backend.begin_write().unwrap();
        txn.put(Table::Kv, key, value).unwrap();
        txn.commit(durable).unwrap();
    }

    fn everything(
        txn: &dyn ReadTxn,
        table: Table,
        direction: Direction,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        let all = (Bound::Unbounded, Bound::Unbounded);
        txn.scan(table, all, direction, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .expect("scan");
        out
    }

    fn bounded_scan(
        txn: &dyn ReadTxn,
        table: Table,
        bounds: KeyBounds<'_>,
        direction: Direction,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        txn.scan(table, bounds, direction, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        })
        .expect("scan");
        out
    }

    /// Every read of `got` agrees with `want` (gets, and scans with random bounds, both
    /// directions, stopped early at random).
    fn assert_same(got: &dyn ReadTxn, want: &dyn ReadTxn, rng: &mut Rng, step: usize) {
        for table in [Table::Kv, Table::Meta] {
            for direction in [Direction::Forward, Direction::Backward] {
                assert_eq!(
                    everything(got, table, direction),
                    everything(want, table, direction),
                    "step {step}: full scan of {table:?} {direction:?}"
                );
            }
            for _ in 0..4 {
                let (lo, hi) = (rng.key(), rng.key());
                let lower =
                    [Bound::Included(&lo[..]), Bound::Excluded(&lo[..])][rng.below(2) as usize];
                let upper = [
                    Bound::Included(&hi[..]),
                    Bound::Excluded(&hi[..]),
                    Bound::Unbounded,
                ][rng.below(3) as usize];
                let direction = [Direction::Forward, Direction::Backward][rng.below(2) as usize];
                let limit = 1 + rng.below(6) as usize;
                assert_eq!(
                    bounded_scan(got, table, (lower, upper), direction, limit),
                    bounded_scan(want, table, (lower, upper), direction, limit),
                    "step {step}: scan {lower:?}..{upper:?} {direction:?} limit {limit}"
                );
                let key = rng.key();
                assert_eq!(
                    got.get(table, &key).expect("get"),
                    want.get(table, &key).expect("get")
                );
            }
        }
    }

    /// Random transactions against the write-behind layer and against a plain in-memory
    /// engine read the same, inside a transaction, after commits, across flushes (forced and
    /// the flusher's own), and for snapshots taken earlier.
    #[test]
    fn reads_match_a_plain_engine_through_commits_and_flushes() {
        for seed in 1..=12u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let buffered = buffered_over(Arc::new(MemBackend::new()));
            let model = MemBackend::new();
            let mut old: Vec<(Box<dyn ReadTxn>, Box<dyn ReadTxn>)> = Vec::new();
            for step in 0..120 {
                let mut got = buffered.begin_write().expect("write");
                let mut want = model.begin_write().expect("write");
                for _ in 0..1 + rng.below(5) {
                    let (table, key) = (rng.table(), rng.key());
                    match rng.below(10) {
                        0..=5 => {
                            let value = format!("v{step}").into_bytes();
                            got.put(table, &key, &value).expect("put");
                            want.put(table, &key, &value).expect("put");
                        }
                        6..=8 => assert_eq!(
                            got.delete(table, &key).expect("delete"),
                            want.delete(table, &key).expect("delete"),
                            "seed {seed} step {step}: delete's answer"
                        ),
                        _ if rng.below(8) == 0 => {
                            got.clear(table).expect("clear");
                            want.clear(table).expect("clear");
                        }
                        _ => {}
                    }
                }
                assert_same(&*got, &*want, &mut rng, step);
                if rng.below(10) == 0 {
                    drop((got, want)); // abandoned: leaves no trace
                } else {
                    let durable = rng.below(8) == 0;
                    got.commit(durable).expect("commit");
                    want.commit(durable).expect("commit");
                }
                match rng.below(6) {
                    0 => buffered.flush().expect("flush"),
                    1 => old.push((buffered.begin_read().unwrap(), model.begin_read().unwrap())),
                    _ => {}
                }
                let (got, want) = (buffered.begin_read().unwrap(), model.begin_read().unwrap());
                assert_same(&*got, &*want, &mut rng, step);
            }
            for (got, want) in &old {
                assert_same(&**got, &**want, &mut rng, usize::MAX);
            }
        }
    }

    /// A commit is visible at once, reaches the inner engine by itself within a bounded
    /// time, and is handed over when the wrapper is dropped.
    #[test]
    fn commits_reach_the_inner_engine() {
        let (inner, buffered) = over_mem();
        put_one(&buffered, b"a", b"1", false);
        assert_eq!(
            buffered.begin_read().unwrap().get(Table::Kv, b"a").unwrap(),
            Some(b"1".to_vec())
        );
        let shared = &buffered.shared;
        let (state, waited) = shared
            .flushed
            .wait_timeout_while(shared.state(), Duration::from_secs(10), |s| {
                !s.layers.is_empty()
            })
            .unwrap();
        assert!(
            !waited.timed_out(),
            "the flusher never wrote the commit out"
        );
        drop(state);
        assert_eq!(
            inner.begin_read().unwrap().get(Table::Kv, b"a").unwrap(),
            Some(b"1".to_vec())
        );
        put_one(&buffered, b"b", b"2", false);
        drop(buffered);
        assert_eq!(
            inner.begin_read().unwrap().get(Table::Kv, b"b").unwrap(),
            Some(b"2".to_vec())
        );
    }

    /// A durable commit writes every buffered commit out in a durable inner commit.
    #[test]
    fn a_durable_commit_writes_everything_out() {
        let (inner, buffered) = over_mem();
        for (i, durable) in [(0u8, false), (1, false), (2, true)] {
            put_one(&buffered, &[i], &[i], durable);
        }
        let seen = everything(&*inner.begin_read().unwrap(), Table::Kv, Direction::Forward);
        assert_eq!(
            seen,
            vec![(vec![0], vec![0]), (vec![1], vec![1]), (vec![2], vec![2])]
        );
        assert!(buffered.shared.state().layers.is_empty());
    }

    /// Clearing a table (a snapshot restore) writes the inner engine directly; readers keep
    /// seeing the state before it until it commits, and the result is the same.
    #[test]
    fn a_clearing_transaction_writes_directly_and_stays_isolated() {
        let (inner, buffered) = over_mem();
        put_one(&buffered, b"old", b"1", false);
        let before = buffered.begin_read().unwrap();
        let mut txn = buffered.begin_write().unwrap();
        txn.clear(Table::Kv).unwrap();
        txn.put(Table::Kv, b"new", b"2").unwrap();
        assert_eq!(txn.get(Table::Kv, b"old").unwrap(), None);
        let during = buffered.begin_read().unwrap();
        assert_eq!(during.get(Table::Kv, b"old").unwrap(), Some(b"1".to_vec()));
        assert_eq!(during.get(Table::Kv, b"new").unwrap(), None);
        txn.commit(true).unwrap();
        let after = buffered.begin_read().unwrap();
        assert_eq!(
            everything(&*after, Table::Kv, Direction::Forward),
            vec![(b"new".to_vec(), b"2".to_vec())]
        );
        assert_eq!(before.get(Table::Kv, b"old").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            inner.begin_read().unwrap().get(Table::Kv, b"new").unwrap(),
            Some(b"2".to_vec())
        );
    }

    /// A transaction past [`DIRECT_BYTES`] stops buffering itself and still commits whole.
    #[test]
    fn a_transaction_past_the_direct_limit_writes_directly() {
        let (_, buffered) = over_mem();
        let value = vec![7u8; 64 << 10];
        let count = DIRECT_BYTES / value.len() + 2;
        let mut txn = buffered.begin_write().unwrap();
        for i in 0..count {
            txn.put(Table::Kv, format!("{i:05}").as_bytes(), &value)
                .unwrap();
        }
        assert!(matches!(
            txn.as_ref().get(Table::Kv, b"00000").unwrap(),
            Some(v) if v == value
        ));
        assert_eq!(
            buffered
                .begin_read()
                .unwrap()
                .get(Table::Kv, b"00000")
                .unwrap(),
            None
        );
        txn.commit(false).unwrap();
        let after = buffered.begin_read().unwrap();
        assert_eq!(
            everything(&*after, Table::Kv, Direction::Forward).len(),
            count
        );
        assert!(buffered.shared.state().layers.is_empty());
    }

    /// An inner commit that fails keeps the buffered commits readable and fails every later
    /// write with the reason.
    #[test]
    fn a_failed_flush_fails_later_writes_and_keeps_reads() {
        let plan = FaultPlan::new();
        let inner = Arc::new(FaultyBackend::new(
            Arc::new(MemBackend::new()),
            plan.clone(),
        ));
        let buffered = buffered_over(inner);
        plan.arm(FaultSpec::always(Fault::CommitError));
        put_one(&buffered, b"a", b"1", false);
        assert!(buffered.flush().is_err());
        assert_eq!(
            buffered.begin_read().unwrap().get(Table::Kv, b"a").unwrap(),
            Some(b"1".to_vec())
        );
        let err = buffered
            .begin_write()
            .err()
            .expect("a write after a failed flush");
        assert!(
            err.to_string().contains("write-behind flush failed"),
            "{err}"
        );
    }
}
