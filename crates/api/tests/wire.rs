//! Wire compatibility with etcd v3.5: each expected byte string is derived by
//! hand from the protobuf encoding rules and etcd's field numbers (see the
//! comment on every row), never produced by the code under test.
//!
//! prost, like gogoproto in etcd and its Go clients, writes fields in number
//! order, so each string is also what etcd itself sends; every row checks
//! both encoding and decoding.

use keel_api::etcdserverpb::{
    compare, range_request, request_op, watch_create_request, watch_request, Compare,
    LeaseGrantRequest, LeaseTimeToLiveResponse, Member, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, TxnRequest, WatchCreateRequest, WatchRequest,
};
use keel_api::keelpb::{internal_request, internal_response, InternalRequest, InternalResponse};
use keel_api::mvccpb::{event, Event, KeyValue};
use prost::Message;

/// Asserts `msg` encodes to `bytes` and `bytes` decodes back to `msg`.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, bytes: &[u8]) {
    assert_eq!(msg.encode_to_vec(), bytes, "encoding of {msg:?}");
    assert_decodes(bytes, msg);
}

fn assert_decodes<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8], msg: &M) {
    let decoded = M::decode(bytes).expect("hand-written bytes must decode");
    assert_eq!(&decoded, msg);
}

#[test]
fn put_request_uses_etcd_field_numbers() {
    let msg = PutRequest {
        key: b"a".to_vec(),
        value: b"b".to_vec(),
        lease: 5,
        prev_kv: true,
        ..Default::default()
    };
    #[rustfmt::skip]
    let bytes = [
        0x0a, 0x01, b'a', // 1 key: (1<<3)|LEN
        0x12, 0x01, b'b', // 2 value: (2<<3)|LEN
        0x18, 0x05,       // 3 lease: (3<<3)|VARINT
        0x20, 0x01,       // 4 prev_kv: (4<<3)|VARINT
    ];
    assert_wire(&msg, &bytes);
}

#[test]
fn compare_mod_revision_target_and_range_end_64() {
    let msg = Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Mod as i32,
        key: b"k".to_vec(),
        range_end: b"z".to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(300)),
    };
    // Fields go out in number order, as gogoproto writes them for Go clients.
    #[rustfmt::skip]
    let bytes = [
        0x08, 0x01,             // 1 result = GREATER (1)
        0x10, 0x02,             // 2 target = MOD (2)
        0x1a, 0x01, b'k',       // 3 key
        0x30, 0xac, 0x02,       // 6 mod_revision = 300 = varint 0xac 0x02
        0x82, 0x04, 0x01, b'z', // 64 range_end: tag (64<<3)|2 = 514 = varint 0x82 0x04
    ];
    assert_wire(&msg, &bytes);
    // Other encoders may write fields in any order; decoding must not care.
    #[rustfmt::skip]
    let shuffled = [
        0x82, 0x04, 0x01, b'z', 0x30, 0xac, 0x02,
        0x1a, 0x01, b'k', 0x10, 0x02, 0x08, 0x01,
    ];
    assert_decodes(&shuffled, &msg);
}

#[test]
fn compare_value_target_is_field_7_bytes() {
    let msg = Compare {
        target: compare::CompareTarget::Value as i32,
        key: b"k".to_vec(),
        target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
        ..Default::default()
    };
    // result EQUAL (0) is the default and is not written.
    let bytes = [0x10, 0x03, 0x1a, 0x01, b'k', 0x3a, 0x01, b'v'];
    assert_wire(&msg, &bytes);
}

#[test]
fn watch_create_request_inside_watch_request() {
    let create = WatchCreateRequest {
        key: b"foo".to_vec(),
        range_end: b"fop".to_vec(),
        start_revision: 7,
        progress_notify: true,
        filters: vec![watch_create_request::FilterType::Nodelete as i32],
        prev_kv: true,
        watch_id: 3,
        fragment: true,
    };
    let msg = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    };
    #[rustfmt::skip]
    let bytes = [
        0x0a, 23,                          // 1 create_request, 23 bytes follow
        0x0a, 0x03, b'f', b'o', b'o',      // 1 key
        0x12, 0x03, b'f', b'o', b'p',      // 2 range_end
        0x18, 0x07,                        // 3 start_revision
        0x20, 0x01,                        // 4 progress_notify
        0x2a, 0x01, 0x01,                  // 5 filters, packed: [NODELETE = 1]
        0x30, 0x01,                        // 6 prev_kv
        0x38, 0x03,                        // 7 watch_id
        0x40, 0x01,                        // 8 fragment
    ];
    assert_wire(&msg, &bytes);
}

#[test]
fn watch_cancel_and_progress_requests_are_fields_2_and_3() {
    let cancel = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(
            keel_api::etcdserverpb::WatchCancelRequest { watch_id: 9 },
        )),
    };
    assert_wire(&cancel, &[0x12, 0x02, 0x08, 0x09]);
    let progress = WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            keel_api::etcdserverpb::WatchProgressRequest {},
        )),
    };
    // An empty message is still present: tag, zero length.
    assert_wire(&progress, &[0x1a, 0x00]);
}

#[test]
fn response_header() {
    let msg = ResponseHeader {
        cluster_id: 0x1234,
        member_id: 1,
        revision: 150,
        raft_term: 2,
    };
    #[rustfmt::skip]
    let bytes = [
        0x08, 0xb4, 0x24, // 1 cluster_id = 4660 = varint 0xb4 0x24
        0x10, 0x01,       // 2 member_id
        0x18, 0x96, 0x01, // 3 revision = 150 = varint 0x96 0x01
        0x20, 0x02,       // 4 raft_term
    ];
    assert_wire(&msg, &bytes);
}

#[test]
fn range_request_with_sort_options() {
    let msg = RangeRequest {
        key: b"a".to_vec(),
        range_end: vec![0],
        limit: 10,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Mod as i32,
        serializable: true,
        min_mod_revision: 5,
        ..Default::default()
    };
    #[rustfmt::skip]
    let bytes = [
        0x0a, 0x01, b'a', // 1 key
        0x12, 0x01, 0x00, // 2 range_end = "\0"
        0x18, 0x0a,       // 3 limit = 10
        0x28, 0x02,       // 5 sort_order = DESCEND (2)
        0x30, 0x03,       // 6 sort_target = MOD (3)
        0x38, 0x01,       // 7 serializable
        0x50, 0x05,       // 10 min_mod_revision = 5
    ];
    assert_wire(&msg, &bytes);
}

#[test]
fn txn_request_with_nested_request_txn() {
    let inner_put = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: b"x".to_vec(),
            value: b"y".to_vec(),
            ..Default::default()
        })),
    };
    let nested_txn = RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            success: vec![inner_put],
            ..Default::default()
        })),
    };
    let range = RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })),
    };
    let msg = TxnRequest {
        compare: vec![],
        success: vec![nested_txn],
        failure: vec![range],
    };
    #[rustfmt::skip]
    let bytes = [
        0x12, 12,                               // 2 success[0]: RequestOp, 12 bytes
          0x22, 10,                             //   4 request_txn: TxnRequest, 10 bytes
            0x12, 8,                            //     2 success[0]: RequestOp, 8 bytes
              0x12, 6,                          //       2 request_put: PutRequest, 6 bytes
                0x0a, 0x01, b'x', 0x12, 0x01, b'y',
        0x1a, 5,                                // 3 failure[0]: RequestOp, 5 bytes
          0x0a, 3,                              //   1 request_range: RangeRequest, 3 bytes
            0x0a, 0x01, b'x',
    ];
    assert_wire(&msg, &bytes);
}

#[test]
fn negative_int64_is_a_ten_byte_varint_not_zigzag() {
    // etcd uses int64 (two's complement varint), not sint64: TTL = -1 must be
    // ten bytes, or Go clients read a huge positive number.
    let msg = LeaseTimeToLiveResponse {
        id: 1,
        ttl: -1,
        ..Default::default()
    };
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x01, // 2 ID
        0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // 3 TTL = -1
    ];
    assert_wire(&msg, &bytes);
}

#[test]
fn lease_grant_request_ttl_then_id() {
    let msg = LeaseGrantRequest { ttl: 60, id: 16 };
    assert_wire(&msg, &[0x08, 0x3c, 0x10, 0x10]);
}

#[test]
fn member_fields() {
    let msg = Member {
        id: 1,
        name: "n".to_string(),
        peer_ur_ls: vec!["http://a".to_string()],
        client_ur_ls: vec![],
        is_learner: true,
    };
    #[rustfmt::skip]
    let mut bytes = vec![
        0x08, 0x01,       // 1 ID
        0x12, 0x01, b'n', // 2 name
        0x1a, 0x08,       // 3 peerURLs[0], 8 bytes
    ];
    bytes.extend_from_slice(b"http://a");
    bytes.extend_from_slice(&[0x28, 0x01]); // 5 isLearner
    assert_wire(&msg, &bytes);
}

#[test]
fn delete_event_with_key_value() {
    let msg = Event {
        r#type: event::EventType::Delete as i32,
        kv: Some(KeyValue {
            key: b"k".to_vec(),
            mod_revision: 4,
            ..Default::default()
        }),
        prev_kv: None,
    };
    #[rustfmt::skip]
    let bytes = [
        0x08, 0x01,             // 1 type = DELETE
        0x12, 0x05,             // 2 kv, 5 bytes
          0x0a, 0x01, b'k',     //   1 key
          0x18, 0x04,           //   3 mod_revision
    ];
    assert_wire(&msg, &bytes);
}

#[test]
fn internal_request_and_response() {
    let req = InternalRequest {
        group_id: 0,
        request_id: 9,
        request: Some(internal_request::Request::Put(PutRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })),
    };
    #[rustfmt::skip]
    let req_bytes = [
        0x10, 0x09,                   // 2 request_id (group_id 0 is not written)
        0x1a, 0x03, 0x0a, 0x01, b'a', // 3 put
    ];
    assert_wire(&req, &req_bytes);

    let resp = InternalResponse {
        response: Some(internal_response::Response::Compaction(
            keel_api::etcdserverpb::CompactionResponse { header: None },
        )),
        error: 200,
    };
    #[rustfmt::skip]
    let resp_bytes = [
        0x22, 0x00,       // 4 compaction, empty
        0x78, 0xc8, 0x01, // 15 error = 200: tag (15<<3)|0 = 0x78
    ];
    assert_wire(&resp, &resp_bytes);
}
