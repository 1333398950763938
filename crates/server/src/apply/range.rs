//! etcd's `Range` semantics on top of the MVCC store: filters, sorting, limit and `more`.
//!
//! Owns: everything a `RangeRequest` means beyond "which keys at which revision" (the store
//! answers that). Used by the `Range` RPC (on a read view) and by txn ranges (on a txn writer,
//! so they see the txn's earlier writes).
//! Must never: write, or read clocks.

use keel_api::error::EtcdError;
use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::{RangeRequest, RangeResponse};
use keel_api::mvccpb;
use keel_storage::{
    KeyValue, RangeOptions, RangeResult, ReadView, StorageError, TxnWriter, WriteBatch,
};

/// Anything that answers an MVCC range read.
pub trait RangeSource {
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: RangeOptions,
    ) -> Result<RangeResult, StorageError>;
}

impl RangeSource for ReadView {
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: RangeOptions,
    ) -> Result<RangeResult, StorageError> {
        ReadView::range(self, key, range_end, opts)
    }
}

impl RangeSource for TxnWriter<'_> {
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: RangeOptions,
    ) -> Result<RangeResult, StorageError> {
        TxnWriter::range(self, key, range_end, opts)
    }
}

impl RangeSource for WriteBatch {
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: RangeOptions,
    ) -> Result<RangeResult, StorageError> {
        WriteBatch::range(self, key, range_end, opts)
    }
}

/// Maps a storage error to what the client sees; anything but a revision error is fatal to
/// the request and logged.
pub fn storage_error(e: StorageError) -> EtcdError {
    match e {
        StorageError::Compacted => EtcdError::Compacted,
        StorageError::FutureRevision => EtcdError::FutureRev,
        other => {
            tracing::error!(error = %other, "storage failure");
            EtcdError::Unknown(format!("etcdserver: {other}"))
        }
    }
}

pub fn to_pb(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

fn needs_full_scan(req: &RangeRequest) -> bool {
    req.sort_order != SortOrder::None as i32
        || req.sort_target != SortTarget::Key as i32
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
}

/// Executes a range request; the header is left for the caller to fill.
pub fn range(src: &dyn RangeSource, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
    // Sorting and filtering need every match; otherwise read one past the limit to learn `more`.
    let limit = if needs_full_scan(req) || req.limit <= 0 {
        0
    } else {
        req.limit.saturating_add(1)
    };
    let opts = RangeOptions {
        revision: req.revision,
        limit,
        count_only: req.count_only,
        keys_only: req.keys_only,
    };
    let result = src
        .range(&req.key, &req.range_end, opts)
        .map_err(storage_error)?;
    let mut kvs = result.kvs;
    kvs.retain(|kv| passes_filters(req, kv));
    sort(req, &mut kvs);
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.count_only {
        kvs.clear();
    }
    Ok(RangeResponse {
        header: None,
        kvs: kvs.into_iter().map(to_pb).collect(),
        more,
        count: result.count,
    })
}

fn passes_filters(req: &RangeRequest, kv: &KeyValue) -> bool {
    (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
        && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
        && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
}

fn sort(req: &RangeRequest, kvs: &mut [KeyValue]) {
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    // etcd: a sort target without an order sorts ascending.
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    if order == SortOrder::None || (order == SortOrder::Ascend && target == SortTarget::Key) {
        return; // the store already returns keys in ascending order
    }
    // Stable sorts keep key order among equal targets, as etcd's do.
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::Store;

    fn store_with(keys: &[(&str, &str)]) -> Store {
        let store = Store::in_memory().expect("store");
        let mut batch = store.write().expect("batch");
        for (k, v) in keys {
            let mut txn = batch.begin_txn();
            txn.put(k.as_bytes(), v.as_bytes(), 0).expect("put");
            txn.end();
        }
        batch.commit(false).expect("commit");
        store
    }

    fn keys(resp: &RangeResponse) -> Vec<String> {
        resp.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    fn req(key: &str, end: &str) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        }
    }

    #[test]
    fn limit_sets_more_and_count_is_the_total() {
        let store = store_with(&[("a", "3"), ("b", "2"), ("c", "1")]);
        let view = store.read().expect("view");
        let resp = range(
            &view,
            &RangeRequest {
                limit: 2,
                ..req("a", "z")
            },
        )
        .expect("range");
        assert_eq!(keys(&resp), ["a", "b"]);
        assert!(resp.more);
        assert_eq!(resp.count, 3);
        let resp = range(
            &view,
            &RangeRequest {
                limit: 3,
                ..req("a", "z")
            },
        )
        .expect("range");
        assert!(!resp.more);
    }

    #[test]
    fn sort_target_without_order_sorts_ascending_and_descend_reverses() {
        let store = store_with(&[("a", "3"), ("b", "1"), ("c", "2")]);
        let view = store.read().expect("view");
        let by_value = RangeRequest {
            sort_target: SortTarget::Value as i32,
            ..req("a", "z")
        };
        assert_eq!(
            keys(&range(&view, &by_value).expect("range")),
            ["b", "c", "a"]
        );
        let desc = RangeRequest {
            sort_order: SortOrder::Descend as i32,
            ..by_value
        };
        assert_eq!(keys(&range(&view, &desc).expect("range")), ["a", "c", "b"]);
        let key_desc = RangeRequest {
            sort_order: SortOrder::Descend as i32,
            limit: 2,
            ..req("a", "z")
        };
        let resp = range(&view, &key_desc).expect("range");
        assert_eq!(keys(&resp), ["c", "b"]);
        assert!(resp.more);
    }

    #[test]
    fn revision_filters_apply_before_limit() {
        let store = store_with(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let view = store.read().expect("view");
        // a@2, b@3, c@4
        let r = RangeRequest {
            min_mod_revision: 3,
            ..req("a", "z")
        };
        assert_eq!(keys(&range(&view, &r).expect("range")), ["b", "c"]);
        let r = RangeRequest {
            max_create_revision: 3,
            limit: 1,
            ..req("a", "z")
        };
        let resp = range(&view, &r).expect("range");
        assert_eq!(keys(&resp), ["a"]);
        assert!(resp.more);
    }

    #[test]
    fn count_only_returns_no_kvs() {
        let store = store_with(&[("a", "1"), ("b", "1")]);
        let view = store.read().expect("view");
        let resp = range(
            &view,
            &RangeRequest {
                count_only: true,
                ..req("a", "z")
            },
        )
        .expect("range");
        assert!(resp.kvs.is_empty());
        assert_eq!(resp.count, 2);
    }

    #[test]
    fn compacted_and_future_revisions_map_to_etcd_errors() {
        let store = store_with(&[("a", "1"), ("a", "2"), ("a", "3")]);
        store.compact(3).expect("compact");
        let view = store.read().expect("view");
        let err = range(
            &view,
            &RangeRequest {
                revision: 2,
                ..req("a", "")
            },
        )
        .expect_err("compacted");
        assert_eq!(err, EtcdError::Compacted);
        let err = range(
            &view,
            &RangeRequest {
                revision: 99,
                ..req("a", "")
            },
        )
        .expect_err("future");
        assert_eq!(err, EtcdError::FutureRev);
    }
}
