//! Simulated clients: put / get / delete / compare-and-swap through the real etcd gRPC API,
//! recorded as a `keel_sim::history` for the linearizability checker.
//!
//! A request that fails or times out is a write of unknown outcome (it may or may not have
//! taken effect); a failed read is not recorded (it constrains nothing).

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::request_op::Request as OpRequest;
use keel_api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_sim::history::{CasExpect, CasOk, Op};
use tonic::transport::Channel;

use crate::net::{dial, CLIENT_PORT};
use crate::rng::SimRng;

pub const KEYS: [&[u8]; 3] = [b"k0", b"k1", b"k2"];

/// What every client shares.
#[derive(Clone)]
pub struct WorkloadSpec {
    pub members: Vec<IpAddr>,
    /// Clients issue operations until this much simulated time has passed...
    pub work_end: Duration,
    /// ...then wait this long (faults are healed by then) and read every key once more.
    pub final_read_after: Duration,
    pub op_timeout: Duration,
    /// Pause between one client's operations.
    pub think: Duration,
}

pub type Recorded = Rc<RefCell<Vec<Op>>>;

fn now_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_nanos() as u64)
}

struct Client {
    id: u64,
    rng: SimRng,
    kvs: Vec<KvClient<Channel>>,
    /// The last mod_revision this client saw per key (0 = absent): the CAS compare.
    seen: [i64; KEYS.len()],
    out: Recorded,
    op_timeout: Duration,
    writes: u64,
    /// The member the last request went to (for the trace).
    last_member: usize,
}

/// Client software: a random mix of operations against random members.
pub async fn run_client(id: u64, seed: u64, spec: WorkloadSpec, out: Recorded) -> turmoil::Result {
    let mut kvs = Vec::new();
    for ip in &spec.members {
        kvs.push(KvClient::new(dial(&format!("http://{ip}:{CLIENT_PORT}"))?));
    }
    let mut client = Client {
        id,
        rng: SimRng::new(seed ^ (id.wrapping_mul(0x9e37_79b9))),
        kvs,
        seen: [0; KEYS.len()],
        out,
        op_timeout: spec.op_timeout,
        writes: 0,
        last_member: 0,
    };
    while turmoil::sim_elapsed().unwrap_or_default() < spec.work_end {
        client.one_op().await;
        // Think time between operations (simulated time), not a synchroniser.
        tokio::time::sleep(spec.think).await;
    }
    let until = spec.work_end + spec.final_read_after;
    let wait = until.saturating_sub(turmoil::sim_elapsed().unwrap_or_default());
    // The schedule's quiet period before the final reads (simulated time).
    tokio::time::sleep(wait).await;
    client.final_reads().await
}

impl Client {
    async fn one_op(&mut self) {
        let member = self.rng.below(self.kvs.len() as u64) as usize;
        let k = self.rng.below(KEYS.len() as u64) as usize;
        match self.rng.below(10) {
            0..=3 => self.put(member, k).await,
            4..=6 => {
                self.get(member, k).await;
            }
            7..=8 => self.cas(member, k).await,
            _ => self.delete(member, k).await,
        }
    }

    fn value(&mut self) -> Vec<u8> {
        self.writes += 1;
        format!("c{}-{}", self.id, self.writes).into_bytes()
    }

    fn record(&self, op: Op) {
        if std::env::var_os("KEEL_SIM_TRACE").is_some() {
            eprintln!(
                "op #{} member n{}: {op:?}",
                self.out.borrow().len(),
                self.last_member + 1
            );
        }
        self.out.borrow_mut().push(op);
    }

    async fn put(&mut self, member: usize, k: usize) {
        let value = self.value();
        let req = PutRequest {
            key: KEYS[k].to_vec(),
            value: value.clone(),
            ..Default::default()
        };
        self.last_member = member;
        let mut kv = self.kvs[member].clone();
        let call = now_ns();
        let res = tokio::time::timeout(self.op_timeout, kv.put(req)).await;
        let op = match res {
            Ok(Ok(resp)) => {
                let rev = resp.into_inner().header.map_or(0, |h| h.revision);
                self.seen[k] = rev;
                Op::put(self.id, call, now_ns(), KEYS[k], &value, rev)
            }
            _ => Op::put_unknown(self.id, call, KEYS[k], &value),
        };
        self.record(op);
    }

    /// A linearizable read; returns whether it got an answer.
    async fn get(&mut self, member: usize, k: usize) -> bool {
        let req = RangeRequest {
            key: KEYS[k].to_vec(),
            ..Default::default()
        };
        self.last_member = member;
        let mut kv = self.kvs[member].clone();
        let call = now_ns();
        let Ok(Ok(resp)) = tokio::time::timeout(self.op_timeout, kv.range(req)).await else {
            return false;
        };
        let resp = resp.into_inner();
        let rev = resp.header.map_or(0, |h| h.revision);
        let (value, mod_rev) = match resp.kvs.first() {
            Some(kv) => (Some(kv.value.as_slice()), kv.mod_revision),
            None => (None, 0),
        };
        self.seen[k] = mod_rev;
        self.record(Op::get(
            self.id,
            call,
            now_ns(),
            KEYS[k],
            value,
            mod_rev,
            rev,
        ));
        true
    }

    async fn cas(&mut self, member: usize, k: usize) {
        let value = self.value();
        let expect = self.seen[k];
        let req = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: KEYS[k].to_vec(),
                target_union: Some(TargetUnion::ModRevision(expect)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(OpRequest::RequestPut(PutRequest {
                    key: KEYS[k].to_vec(),
                    value: value.clone(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        self.last_member = member;
        let mut kv = self.kvs[member].clone();
        let call = now_ns();
        let res = tokio::time::timeout(self.op_timeout, kv.txn(req)).await;
        let expect_kind = CasExpect::ModRevision(expect);
        let op = match res {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                let revision = resp.header.map_or(0, |h| h.revision);
                if resp.succeeded {
                    self.seen[k] = revision;
                }
                let outcome = CasOk {
                    succeeded: resp.succeeded,
                    revision,
                };
                Op::cas(
                    self.id,
                    call,
                    now_ns(),
                    KEYS[k],
                    expect_kind,
                    &value,
                    outcome,
                )
            }
            _ => Op::cas_unknown(self.id, call, KEYS[k], expect_kind, &value),
        };
        self.record(op);
    }

    async fn delete(&mut self, member: usize, k: usize) {
        let req = DeleteRangeRequest {
            key: KEYS[k].to_vec(),
            ..Default::default()
        };
        self.last_member = member;
        let mut kv = self.kvs[member].clone();
        let call = now_ns();
        let res = tokio::time::timeout(self.op_timeout, kv.delete_range(req)).await;
        let op = match res {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                let rev = resp.header.map_or(0, |h| h.revision);
                Op::delete(self.id, call, now_ns(), KEYS[k], resp.deleted > 0, rev)
            }
            _ => Op::delete_unknown(self.id, call, KEYS[k]),
        };
        self.record(op);
    }

    /// After the faults are healed: read every key through some member, retrying (bounded)
    /// until each read answers, so a lost write shows up even if nothing read it earlier.
    async fn final_reads(&mut self) -> turmoil::Result {
        for k in 0..KEYS.len() {
            let mut answered = false;
            for attempt in 0..20u64 {
                let member = ((self.id + attempt) as usize) % self.kvs.len();
                if self.get(member, k).await {
                    answered = true;
                    break;
                }
                // Retry pause between members, bounded by the attempt count.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if !answered {
                return Err(
                    format!("client {}: no final read of key {k} answered", self.id).into(),
                );
            }
        }
        Ok(())
    }
}
