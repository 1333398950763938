//! Exactly-once writes for tests that must know the committed history exactly.
//! Must never: assume a failed call did nothing (every outcome is settled before the next
//! write), or wait without a deadline.

use std::time::Duration;

use keel_api::etcdserverpb::compare::{CompareResult, TargetUnion};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::TxnRequest;
use tonic::transport::Channel;

use super::{compare, delete_req, eventually, op_delete, op_put, range_req, rev};

/// A single writer whose every write lands exactly once at a revision it learns, even when a
/// call fails and is retried on another member: each write is a `Txn` that first checks the
/// version of a counter key (`version == n`) and then puts the counter (`n + 1`) and does
/// the write. A retry of an attempt that did land fails the compare, and the counter's
/// `mod_revision` names the revision it landed at. So `events` is the exact list of
/// committed events under the writer's keys (two per revision: the counter, then the write),
/// which the watch validator can be given as the truth.
pub struct ExactWriter {
    counter_key: String,
    /// Writes done so far (the counter key's version).
    done: i64,
    /// Key -> value of every live key the writer wrote (the counter included).
    pub live: std::collections::BTreeMap<String, String>,
    /// Every committed event, in revision order.
    pub events: Vec<keel_sim::watch::WatchEvent>,
    /// Calls that failed and were retried (their outcome settled by the counter).
    pub failures: usize,
}

/// One write of an [`ExactWriter`].
#[derive(Clone, Debug)]
pub enum Write {
    Put(String, String),
    Delete(String),
}

impl ExactWriter {
    pub fn new(counter_key: &str) -> ExactWriter {
        ExactWriter {
            counter_key: counter_key.to_string(),
            done: 0,
            live: Default::default(),
            events: Vec::new(),
            failures: 0,
        }
    }

    /// Create-then-delete churn over `keys` keys under `prefix`: write `i` puts key
    /// `i % keys`, except that every third visit to a live key deletes it, so the newest
    /// revision is often a tombstone.
    pub fn churn(&self, prefix: &str, keys: usize, i: usize) -> Write {
        let key = format!("{prefix}{}", i % keys);
        if (i / keys) % 3 == 2 && self.live.contains_key(&key) {
            Write::Delete(key)
        } else {
            Write::Put(key, format!("v{i}"))
        }
    }

    /// Does `write` exactly once through the members behind `clients` (the next one after
    /// every failure), retrying until `timeout`; returns its revision.
    pub async fn write(
        &mut self,
        clients: &[KvClient<Channel>],
        write: Write,
        timeout: Duration,
    ) -> i64 {
        if let Write::Delete(key) = &write {
            assert!(
                self.live.contains_key(key),
                "delete of {key}, which is not live"
            );
        }
        let n = self.done;
        let next = (n + 1).to_string();
        let op = match &write {
            Write::Put(key, value) => op_put(key, value),
            Write::Delete(key) => op_delete(key, ""),
        };
        let txn = TxnRequest {
            compare: vec![compare(
                &self.counter_key,
                CompareResult::Equal,
                TargetUnion::Version(n),
            )],
            success: vec![op_put(&self.counter_key, &next), op],
            failure: vec![],
        };
        let mut turn = 0;
        let what = format!("write {} ({write:?}) to land", n + 1);
        let revision = eventually(&what, timeout, async || {
            let mut kv = clients[turn % clients.len()].clone();
            turn += 1;
            let resp = match kv.txn(txn.clone()).await {
                Ok(resp) => resp.into_inner(),
                Err(s) => {
                    self.failures += 1;
                    return Err(format!("{:?}: {}", s.code(), s.message()));
                }
            };
            if resp.succeeded {
                return Ok(rev(&resp));
            }
            // An earlier attempt landed: the counter says where.
            let read = kv
                .range(range_req(&self.counter_key, ""))
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            let counter = read.kvs.first().expect("the counter key exists");
            assert_eq!(
                counter.version,
                n + 1,
                "the counter moved by someone else than this writer"
            );
            Ok(counter.mod_revision)
        })
        .await;
        self.record(write, &next, revision);
        revision
    }

    fn record(&mut self, write: Write, counter_value: &str, revision: i64) {
        use keel_sim::watch::WatchEvent;
        self.done += 1;
        if let Some(last) = self.events.last() {
            assert!(last.revision < revision, "revisions go up: {revision}");
        }
        self.live
            .insert(self.counter_key.clone(), counter_value.to_string());
        self.events.push(WatchEvent::put(
            self.counter_key.as_bytes(),
            counter_value.as_bytes(),
            revision,
        ));
        match write {
            Write::Put(key, value) => {
                self.events
                    .push(WatchEvent::put(key.as_bytes(), value.as_bytes(), revision));
                self.live.insert(key, value);
            }
            Write::Delete(key) => {
                self.events
                    .push(WatchEvent::delete(key.as_bytes(), revision));
                self.live.remove(&key);
            }
        }
    }

    /// Writes done so far.
    pub fn writes(&self) -> usize {
        self.done as usize
    }

    /// Deletes the live `key` with a plain `DeleteRange` (no counter), so its revision
    /// holds nothing but the tombstone. Still exactly once: a repeated delete of a key that
    /// is gone writes nothing, and because this writer is the only one, the revision of a
    /// linearizable read right after such a no-op is the delete's revision.
    pub async fn delete_plain(
        &mut self,
        clients: &[KvClient<Channel>],
        key: &str,
        timeout: Duration,
    ) -> i64 {
        assert!(
            self.live.contains_key(key),
            "delete of {key}, which is not live"
        );
        let mut turn = 0;
        let what = format!("plain delete of {key} to land");
        let revision = eventually(&what, timeout, async || {
            let mut kv = clients[turn % clients.len()].clone();
            turn += 1;
            match kv.delete_range(delete_req(key, "")).await {
                Ok(resp) if resp.get_ref().deleted == 1 => return Ok(rev(resp.get_ref())),
                Ok(_) => {}
                Err(s) => {
                    self.failures += 1;
                    return Err(format!("{:?}: {}", s.code(), s.message()));
                }
            }
            // An earlier attempt landed, and nothing was written after it.
            let read = kv
                .range(range_req(key, ""))
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            assert!(read.kvs.is_empty(), "{key} is still there after its delete");
            Ok(rev(&read))
        })
        .await;
        if let Some(last) = self.events.last() {
            assert!(last.revision < revision, "revisions go up: {revision}");
        }
        self.live.remove(key);
        self.events.push(keel_sim::watch::WatchEvent::delete(
            key.as_bytes(),
            revision,
        ));
        revision
    }

    /// The revision of the last write, or 0.
    pub fn last_revision(&self) -> i64 {
        self.events.last().map_or(0, |e| e.revision)
    }
}
