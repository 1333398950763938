//! Large random histories generated from a sequential execution: every operation takes
//! effect at a point inside a random interval around it, so the history is linearizable by
//! construction; corrupting one result must make it fail.

use std::collections::HashMap;
use std::time::Instant;

use keel_sim::history::{CasExpect, CasOk, History, Op, OpKind, Revision};
use keel_sim::linearizability::{check, CheckKind, CheckOptions, Verdict};

/// splitmix64: tiny, seedable, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A sequential etcd store: one global revision, each key's value and mod revision.
#[derive(Default)]
struct Store {
    revision: Revision,
    keys: HashMap<Vec<u8>, (Vec<u8>, Revision)>,
}

impl Store {
    fn new() -> Store {
        Store {
            revision: 1,
            keys: HashMap::new(),
        }
    }

    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) -> Revision {
        self.revision += 1;
        match value {
            Some(v) => self.keys.insert(key.to_vec(), (v, self.revision)),
            None => self.keys.remove(key),
        };
        self.revision
    }

    fn mod_revision(&self, key: &[u8]) -> Revision {
        self.keys.get(key).map_or(0, |(_, r)| *r)
    }
}

/// `ops` operations over `keys` keys; each takes effect at `100 * i` inside an interval of
/// up to `spread_ns` on either side; one in `unknown_one_in` (0: none) has an unknown
/// outcome, and then takes effect or not at random.
fn generate(seed: u64, ops: usize, keys: u64, spread_ns: u64, unknown_one_in: u64) -> History {
    let mut rng = Rng(seed);
    let mut store = Store::new();
    let mut history = History::default();
    for i in 0..ops {
        let point = 10 * spread_ns + 100 * i as u64;
        let call_ns = point - rng.below(spread_ns);
        let return_ns = point + rng.below(spread_ns);
        let key = format!("k{}", rng.below(keys)).into_bytes();
        let value = format!("v{i}").into_bytes();
        let unknown = unknown_one_in > 0 && rng.below(unknown_one_in) == 0;
        let applies = !unknown || rng.below(2) == 0;
        let client = i as u64;
        let op = match rng.below(20) {
            0..=7 => {
                let revision = if applies {
                    store.write(&key, Some(value.clone()))
                } else {
                    0
                };
                Op::put(client, call_ns, return_ns, &key, &value, revision)
            }
            8..=14 => {
                let found = store.keys.get(&key).map(|(v, _)| v.as_slice());
                Op::get(
                    client,
                    call_ns,
                    return_ns,
                    &key,
                    found,
                    store.mod_revision(&key),
                    store.revision,
                )
            }
            15..=16 => {
                let deleted = store.keys.contains_key(&key);
                let revision = if deleted && applies {
                    store.write(&key, None)
                } else {
                    store.revision
                };
                Op::delete(client, call_ns, return_ns, &key, deleted, revision)
            }
            _ => {
                // Half the compares use the current mod revision, half a stale guess.
                let current = store.mod_revision(&key);
                let expect = if rng.below(2) == 0 {
                    current
                } else {
                    current.saturating_sub(1)
                };
                let succeeded = expect == current;
                let revision = if succeeded && applies {
                    store.write(&key, Some(value.clone()))
                } else {
                    store.revision
                };
                let outcome = CasOk {
                    succeeded,
                    revision,
                };
                Op::cas(
                    client,
                    call_ns,
                    return_ns,
                    &key,
                    CasExpect::ModRevision(expect),
                    &value,
                    outcome,
                )
            }
        };
        history.push(if unknown { forget(op) } else { op });
    }
    history
}

fn forget(mut op: Op) -> Op {
    op.return_ns = None;
    match &mut op.kind {
        OpKind::Put { result, .. } => *result = None,
        OpKind::Get { result, .. } => *result = None,
        OpKind::Delete { result, .. } => *result = None,
        OpKind::Cas { result, .. } => *result = None,
    }
    op
}

#[test]
fn large_random_linearizable_history_passes_within_a_step_bound() {
    // About 20, then about 40 operations in flight at any time. The bound is on search
    // steps, which is deterministic; wall-clock time is only printed.
    for (seed, spread_ns) in [(1, 1_000), (2, 1_000), (3, 2_000)] {
        let history = generate(seed, 5_000, 4, spread_ns, 20);
        let started = Instant::now();
        let report = check(&history, &CheckOptions::default()).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(report.verdict, Verdict::Linearizable, "seed {seed}");
        assert_eq!(report.keys_checked, 4);
        eprintln!(
            "seed {seed}: {} ops checked in {elapsed:?}, {} steps",
            history.ops.len(),
            report.steps
        );
        assert!(
            report.steps < 1_000_000,
            "seed {seed}: {} steps",
            report.steps
        );
    }
}

#[test]
fn random_history_with_one_stale_read_fails() {
    for seed in 10..=12 {
        // No unknown outcomes here: an unknown delete called earlier could legitimately take
        // effect just before the read.
        let mut history = generate(seed, 2_000, 4, 1_000, 0);
        // Turn a read that saw a value whose write had returned before the read was called
        // (so the read cannot precede it) into one that saw the key absent.
        let stale = (0..history.ops.len())
            .rev()
            .find(|&i| saw_completed_write(&history, i))
            .expect("some read saw a completed write");
        if let OpKind::Get {
            result: Some(r), ..
        } = &mut history.ops[stale].kind
        {
            r.value = None;
            r.mod_revision = 0;
        }
        let report = check(&history, &CheckOptions::default()).unwrap();
        let Verdict::NotLinearizable(v) = report.verdict else {
            panic!("seed {seed}: {:?}", report.verdict)
        };
        assert_eq!(v.check, CheckKind::Linearizability);
        assert!(v.ops.contains(&stale), "seed {seed}: {v}");
        // The write it missed, the read, and at most the few writes concurrent with them
        // (an unpinned concurrent delete could otherwise explain the read).
        assert!(
            v.ops.len() <= 6,
            "seed {seed}: explanation should be small: {v}"
        );
        assert!(v.minimal, "seed {seed}: {v}");
    }
}

#[test]
fn random_history_with_one_read_of_a_value_never_written_fails() {
    for seed in 20..=22 {
        let mut history = generate(seed, 2_000, 4, 1_000, 20);
        let read = (0..history.ops.len())
            .rev()
            .find(|&i| matches!(&history.ops[i].kind, OpKind::Get { result: Some(r), .. } if r.value.is_some()))
            .expect("some read saw a value");
        if let OpKind::Get {
            result: Some(r), ..
        } = &mut history.ops[read].kind
        {
            r.value = Some(b"never written".to_vec());
        }
        let report = check(&history, &CheckOptions::default()).unwrap();
        let Verdict::NotLinearizable(v) = report.verdict else {
            panic!("seed {seed}: {:?}", report.verdict)
        };
        assert_eq!(v.ops, vec![read], "seed {seed}: {v}");
        assert!(v.minimal);
    }
}

fn saw_completed_write(history: &History, read: usize) -> bool {
    let op = &history.ops[read];
    let OpKind::Get {
        result: Some(r), ..
    } = &op.kind
    else {
        return false;
    };
    r.value.is_some()
        && history.ops.iter().any(|w| {
            w.key() == op.key()
                && w.return_ns.is_some_and(|ret| ret < op.call_ns)
                && w.returned_revision() == Some((r.mod_revision, true))
        })
}
