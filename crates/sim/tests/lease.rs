//! Lease observations that keep and that break the lease guarantees. Times in ms for
//! readability; one lease with a 10 s TTL granted at 0 ms.

use keel_sim::lease::{validate_leases, LeaseBounds, LeaseCheck, LeaseObservation as Obs};

const MS: u64 = 1_000_000;

fn grant() -> Obs {
    Obs::Grant {
        lease: 7,
        ttl_s: 10,
        call_ns: 0,
        return_ns: Some(100 * MS),
    }
}
fn attach() -> Obs {
    Obs::Attach {
        lease: 7,
        key: b"k".to_vec(),
        call_ns: 200 * MS,
        return_ns: 300 * MS,
    }
}
fn read(at_ms: u64, present: bool) -> Obs {
    Obs::ReadKey {
        key: b"k".to_vec(),
        present,
        call_ns: at_ms * MS,
        return_ns: (at_ms + 100) * MS,
    }
}
fn keep_alive(at_ms: u64, ttl_s: i64) -> Obs {
    Obs::KeepAlive {
        lease: 7,
        ttl_s,
        call_ns: at_ms * MS,
        return_ns: Some((at_ms + 100) * MS),
    }
}
fn time_to_live(at_ms: u64, remaining_s: i64) -> Obs {
    Obs::TimeToLive {
        lease: 7,
        remaining_s,
        call_ns: at_ms * MS,
        return_ns: (at_ms + 100) * MS,
    }
}

fn broken(observations: Vec<Obs>) -> LeaseCheck {
    validate_leases(&observations, &LeaseBounds::default())
        .expect_err("a lease guarantee is broken")
        .check
}

fn valid(observations: Vec<Obs>) {
    if let Err(v) = validate_leases(&observations, &LeaseBounds::default()) {
        panic!("unexpected violation: {v}");
    }
}

#[test]
fn kept_alive_lease_keeps_its_key_then_expires() {
    // Refreshed at 8 s: alive until at least 18 s, gone by 18.1 s + 2 s grace.
    valid(vec![
        grant(),
        attach(),
        read(5_000, true),
        keep_alive(8_000, 10),
        read(15_000, true),
        read(21_000, false),
        time_to_live(22_000, -1),
    ]);
}

#[test]
fn key_gone_before_the_lease_could_expire_is_caught() {
    assert_eq!(
        broken(vec![
            grant(),
            attach(),
            keep_alive(8_000, 10),
            read(12_000, false)
        ]),
        LeaseCheck::KeyGoneEarly
    );
}

#[test]
fn key_that_outlives_its_lease_is_caught() {
    assert_eq!(
        broken(vec![
            grant(),
            attach(),
            keep_alive(8_000, 10),
            read(21_000, true)
        ]),
        LeaseCheck::KeyOutlivedLease
    );
}

#[test]
fn revoke_removes_keys_at_once() {
    let revoke = Obs::Revoke {
        lease: 7,
        call_ns: 5_000 * MS,
        return_ns: Some(5_100 * MS),
    };
    valid(vec![grant(), attach(), revoke.clone(), read(5_050, false)]);
    assert_eq!(
        broken(vec![grant(), attach(), revoke, read(6_000, true)]),
        LeaseCheck::KeyOutlivedLease
    );
}

#[test]
fn lease_not_found_before_its_earliest_expiry_is_caught() {
    assert_eq!(
        broken(vec![grant(), keep_alive(8_000, 10), keep_alive(9_000, 0)]),
        LeaseCheck::ExpiredEarly
    );
}

#[test]
fn keep_alive_after_expiry_is_caught() {
    assert_eq!(
        broken(vec![grant(), keep_alive(8_000, 10), keep_alive(25_000, 10)]),
        LeaseCheck::RevivedAfterExpiry
    );
}

#[test]
fn unknown_outcome_keep_alive_may_or_may_not_extend() {
    let unknown = Obs::KeepAlive {
        lease: 7,
        ttl_s: 0,
        call_ns: 8_000 * MS,
        return_ns: None,
    };
    valid(vec![grant(), attach(), unknown.clone(), read(21_000, true)]);
    valid(vec![grant(), attach(), unknown, read(12_000, false)]);
}

#[test]
fn ttl_reset_by_leader_change_is_caught() {
    let change = Obs::LeaderChange { at_ns: 3_000 * MS };
    valid(vec![
        grant(),
        time_to_live(2_000, 8),
        change.clone(),
        time_to_live(4_000, 6),
    ]);
    let reset = vec![
        grant(),
        time_to_live(2_000, 8),
        change,
        time_to_live(4_000, 10),
    ];
    assert_eq!(broken(reset), LeaseCheck::TtlResetByLeaderChange);
}

#[test]
fn remaining_ttl_longer_than_refreshes_allow_is_caught() {
    assert_eq!(
        broken(vec![grant(), time_to_live(5_000, 10)]),
        LeaseCheck::TtlTooLong
    );
    valid(vec![
        grant(),
        keep_alive(4_000, 10),
        time_to_live(5_000, 10),
    ]);
}
