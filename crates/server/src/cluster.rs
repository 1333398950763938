//! Member and cluster identity, derived from the bootstrap flags like etcd does.
//!
//! Owns: how a member id and the cluster id are computed. Every founding member computes the
//! same ids from the same `--initial-cluster` and `--initial-cluster-token`, so no
//! coordination is needed to agree on them.
//! Must never: depend on anything but its inputs (ids must be stable across restarts).

/// 64-bit FNV-1a: small, stable across versions and platforms.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xffu8)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // 0 means "no member" in etcd's API (for example Status.leader); never hand it out.
    hash.max(1)
}

/// A member's id: a hash of its sorted peer URLs and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut parts: Vec<&[u8]> = urls.iter().map(|u| u.as_bytes()).collect();
    parts.push(token.as_bytes());
    fnv1a64(&parts)
}

/// The cluster's id: a hash of the founding members' ids.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
    let parts: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
    fnv1a64(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_id_is_stable_and_order_independent() {
        let a = member_id(
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            "t",
        );
        let b = member_id(
            &["http://127.0.0.1:2".into(), "http://127.0.0.1:1".into()],
            "t",
        );
        assert_eq!(a, b);
        assert_ne!(a, member_id(&["http://127.0.0.1:1".into()], "t"));
        assert_ne!(
            a,
            member_id(
                &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
                "u"
            )
        );
        assert_ne!(a, 0);
    }

    #[test]
    fn cluster_id_depends_on_the_member_set_only() {
        assert_eq!(cluster_id(&[3, 1, 2]), cluster_id(&[1, 2, 3]));
        assert_ne!(cluster_id(&[1, 2, 3]), cluster_id(&[1, 2]));
    }
}
