//! A simulated watcher: watches every workload key through the real Watch gRPC API, moving to
//! another member (and resuming after the last revision it saw) whenever its stream breaks;
//! each stream is then judged by `keel_sim::watch::validate_watch` against the committed
//! history read back from a member after the run.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{WatchCreateRequest, WatchRequest};
use keel_api::mvccpb::event::EventType;
use keel_sim::watch::{EventKind, WatchEvent, WatchResponse, WatchSpec};

use crate::net::{dial, CLIENT_PORT};
use crate::workload::WorkloadSpec;

/// The watched range: every workload key (`k0`..`k2`).
pub const RANGE: (&[u8], &[u8]) = (b"k", b"l");

/// Each stream the watcher opened: what it asked for and what it received.
pub type Streams = Rc<RefCell<Vec<(WatchSpec, Vec<WatchResponse>)>>>;

fn convert(resp: keel_api::etcdserverpb::WatchResponse) -> WatchResponse {
    let events = resp
        .events
        .into_iter()
        .map(|e| {
            let kv = e.kv.unwrap_or_default();
            let delete = e.r#type == EventType::Delete as i32;
            WatchEvent {
                kind: if delete {
                    EventKind::Delete
                } else {
                    EventKind::Put
                },
                key: kv.key,
                value: if delete { Vec::new() } else { kv.value },
                revision: kv.mod_revision,
            }
        })
        .collect();
    WatchResponse {
        header_revision: resp.header.map_or(0, |h| h.revision),
        created: resp.created,
        canceled: resp.canceled,
        compact_revision: resp.compact_revision,
        fragment: resp.fragment,
        events,
    }
}

/// Watcher software: keeps a watch open until the clients' final reads are done.
pub async fn run_watcher(spec: WorkloadSpec, out: Streams) -> turmoil::Result {
    let end = spec.work_end + spec.final_read_after + Duration::from_secs(2);
    let mut next_revision = 1;
    let mut member = 0usize;
    // Bounded: one stream per attempt, and attempts pause, so this ends by `end`.
    while turmoil::sim_elapsed().unwrap_or_default() < end {
        let url = format!("http://{}:{CLIENT_PORT}", spec.members[member]);
        member = (member + 1) % spec.members.len();
        let mut client = WatchClient::new(dial(&url)?);
        let watch = WatchSpec {
            key: RANGE.0.to_vec(),
            range_end: RANGE.1.to_vec(),
            start_revision: next_revision,
            ..WatchSpec::default()
        };
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: watch.key.clone(),
                range_end: watch.range_end.clone(),
                start_revision: next_revision,
                ..Default::default()
            })),
        };
        // Keep the request side open: closing it would end the watch.
        let requests = futures::stream::iter([create]).chain(futures::stream::pending());
        let opened = tokio::time::timeout(spec.op_timeout, client.watch(requests)).await;
        let Ok(Ok(stream)) = opened else {
            // Reconnect pause (simulated time); the loop ends at the schedule's end.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        out.borrow_mut().push((watch, Vec::new()));
        loop {
            let left = end.saturating_sub(turmoil::sim_elapsed().unwrap_or_default());
            let Ok(Ok(Some(resp))) = tokio::time::timeout(left, stream.message()).await else {
                break;
            };
            let resp = convert(resp);
            if let Some(last) = resp.events.last() {
                next_revision = last.revision + 1;
            }
            let canceled = resp.canceled;
            if let Some((_, got)) = out.borrow_mut().last_mut() {
                got.push(resp);
            }
            if canceled {
                break;
            }
        }
        // Pause before resuming the watch from the next revision (simulated time).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
