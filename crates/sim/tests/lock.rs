//! Lock holds and resource writes that keep and that break fencing.

use keel_sim::lock::{validate_lock, LockCheck, LockHold, ResourceWrite};

fn hold(client: u64, token: i64, call_ns: u64, return_ns: u64) -> LockHold {
    LockHold {
        client,
        token,
        acquire_call_ns: call_ns,
        acquire_return_ns: return_ns,
    }
}

fn write(client: u64, token: i64, accepted_ns: u64) -> ResourceWrite {
    ResourceWrite {
        client,
        token,
        accepted_ns,
    }
}

fn broken(holds: &[LockHold], writes: &[ResourceWrite]) -> LockCheck {
    validate_lock(holds, writes)
        .expect_err("fencing is broken")
        .check
}

#[test]
fn successive_holders_with_growing_tokens_are_valid() {
    let holds = [hold(1, 5, 0, 10), hold(2, 9, 5, 30), hold(3, 12, 40, 50)];
    // Client 1 was paused past its lease and wrote late: the resource must reject that
    // write, so it is not among the accepted ones.
    let writes = [
        write(1, 5, 11),
        write(2, 9, 31),
        write(2, 9, 35),
        write(3, 12, 51),
    ];
    assert_eq!(validate_lock(&holds, &writes), Ok(()));
}

#[test]
fn stale_token_accepted_after_a_newer_one_is_caught() {
    let holds = [hold(1, 5, 0, 10), hold(2, 9, 20, 30)];
    let writes = [write(1, 5, 11), write(2, 9, 31), write(1, 5, 32)];
    let v = validate_lock(&holds, &writes).unwrap_err();
    assert_eq!(v.check, LockCheck::StaleTokenAccepted);
    assert_eq!(v.writes, vec![1, 2]);
}

#[test]
fn tokens_that_go_backwards_are_caught() {
    assert_eq!(
        broken(&[hold(1, 9, 0, 10), hold(2, 5, 20, 30)], &[]),
        LockCheck::TokenNotIncreasing
    );
    // Concurrent acquisitions may get tokens in either order.
    assert_eq!(
        validate_lock(&[hold(1, 9, 0, 30), hold(2, 5, 20, 40)], &[]),
        Ok(())
    );
}

#[test]
fn duplicate_tokens_are_caught() {
    assert_eq!(
        broken(&[hold(1, 5, 0, 10), hold(2, 5, 0, 10)], &[]),
        LockCheck::DuplicateToken
    );
}

#[test]
fn writes_must_carry_a_token_their_client_held() {
    let holds = [hold(1, 5, 0, 10)];
    assert_eq!(broken(&holds, &[write(2, 5, 11)]), LockCheck::UnknownToken);
    assert_eq!(broken(&holds, &[write(1, 6, 11)]), LockCheck::UnknownToken);
    let early = [hold(1, 5, 100, 110)];
    assert_eq!(
        broken(&early, &[write(1, 5, 50)]),
        LockCheck::WriteBeforeAcquire
    );
}
