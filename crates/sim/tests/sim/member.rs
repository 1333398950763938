//! One simulated keel member: the real `keel_server::Node` with its storage on simulated
//! disks that survive crashes, serving on turmoil's network.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use keel_raft::{MemLogDisk, MemLogOptions};
use keel_server::server::Server;
use keel_server::{Config, Node, Served, Storage};

use crate::disk::StoreDisk;
use crate::net::{listen, CLIENT_PORT, PEER_PORT};

/// Everything about a member that outlives its crashes.
#[derive(Clone)]
pub struct MemberDisks {
    pub log: MemLogDisk,
    pub store: StoreDisk,
}

impl MemberDisks {
    pub fn new(options: MemLogOptions) -> Self {
        Self {
            log: MemLogDisk::new(options),
            store: StoreDisk::default(),
        }
    }
}

/// The running incarnation's server, for the harness to look at (leader, revision, hash).
pub type ServerSlot = Rc<RefCell<Option<Arc<Server>>>>;

/// Why the running incarnation stopped on its own (a fatal storage error), if it did.
pub type FatalSlot = Rc<RefCell<Option<String>>>;

pub struct MemberSpec {
    pub name: String,
    pub ip: IpAddr,
    pub initial_cluster: String,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
}

impl MemberSpec {
    pub fn config(&self) -> Config {
        let client = format!("http://{}:{CLIENT_PORT}", self.ip);
        let peer = format!("http://{}:{PEER_PORT}", self.ip);
        let args = [
            "keel".to_string(),
            "--name".into(),
            self.name.clone(),
            // Never created: a simulated member keeps everything on its simulated disks.
            "--data-dir".into(),
            format!("/nonexistent/keel-sim/{}", self.name),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer,
            "--initial-cluster".into(),
            self.initial_cluster.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--heartbeat-interval".into(),
            self.heartbeat_ms.to_string(),
            "--election-timeout".into(),
            self.election_timeout_ms.to_string(),
            "--snapshot-count".into(),
            self.snapshot_count.to_string(),
        ];
        <Config as clap::Parser>::try_parse_from(args).expect("simulated member flags parse")
    }
}

/// The host software turmoil runs (again after every bounce): start the member on its disks
/// and serve until crashed. A member that stops itself on a fatal storage error (a failed
/// fsync) leaves its slot empty and says why in `fatal`; the host then idles until the
/// nemesis crashes and restarts it.
pub async fn run_member(
    config: Config,
    ip: IpAddr,
    disks: MemberDisks,
    slot: ServerSlot,
    fatal: FatalSlot,
) -> turmoil::Result {
    let served = Served::Streams {
        client: vec![listen(ip, CLIENT_PORT).await?],
        peer: vec![listen(ip, PEER_PORT).await?],
    };
    let storage = Storage::Simulated {
        store: disks.store.open()?,
        log_disk: disks.log.clone(),
    };
    let node = Node::start_on(&config, served, storage).await?;
    *fatal.borrow_mut() = None;
    *slot.borrow_mut() = Some(node.server.clone());
    // Serve until turmoil crashes this host (which drops everything running here), or until
    // the member stops itself.
    let reason = node.wait_fatal().await;
    *slot.borrow_mut() = None;
    *fatal.borrow_mut() = Some(reason);
    std::future::pending::<()>().await;
    drop(node);
    Ok(())
}
