//! keel-api owns keel's wire contract: the etcd v3 compatible `.proto` files
//! (authored in `proto/`), the Rust code generated from them, keel's internal
//! peer protocol (`keelpb`), and the one table of errors a client can see
//! ([`EtcdError`]).
//!
//! It must never contain behaviour: no I/O, no storage or Raft types. Anything
//! that changes a byte on the wire or a client-visible error string changes here
//! and nowhere else.

pub mod error;

pub use error::EtcdError;

/// Generated code is not held to the workspace's lint bar; only its wire format matters.
macro_rules! generated_module {
    ($(#[$doc:meta])* $name:ident, $package:literal) => {
        $(#[$doc])*
        #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        pub mod $name {
            tonic::include_proto!($package);
        }
    };
}

generated_module!(
    /// etcd's MVCC data model: `KeyValue` and watch `Event`.
    mvccpb,
    "mvccpb"
);
generated_module!(
    /// etcd's stored auth records: `User`, `Role`, `Permission`.
    authpb,
    "authpb"
);
generated_module!(
    /// The etcd v3 client API: KV, Watch, Lease, Cluster, Maintenance, Auth.
    etcdserverpb,
    "etcdserverpb"
);
generated_module!(
    /// etcd's lock service (`v3lockpb.Lock`).
    v3lockpb,
    "v3lockpb"
);
generated_module!(
    /// etcd's election service (`v3electionpb.Election`).
    v3electionpb,
    "v3electionpb"
);
generated_module!(
    /// keel's member-to-member protocol: Raft transport, forwarding, read index.
    keelpb,
    "keelpb"
);

/// The standard gRPC health service (`grpc.health.v1`), which load balancers and
/// `grpc_health_probe` expect next to the etcd services.
pub use tonic_health as health;

/// Encoded `google.protobuf.FileDescriptorSet` of every keel .proto file and its
/// imports, for gRPC server reflection and tooling.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keel_descriptor.bin"));

/// etcd's range end covering every key that starts with `prefix` (`clientv3.GetPrefixRangeEnd`):
/// the prefix with its last byte below 0xff incremented and what follows dropped; `[0]` ("to
/// the end of the key space") when there is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|b| *b != 0xff) {
        Some(last) => {
            let mut end = prefix[..=last].to_vec();
            end[last] += 1;
            end
        }
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"job/"), b"job0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
