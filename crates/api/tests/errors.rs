//! The error table against etcd v3.5's `api/v3rpc/rpctypes/error.go`, typed in
//! again here from etcd's source so a typo in either copy fails the test.

use std::collections::HashSet;

use keel_api::error::{CODE_OK, CODE_UNCODED};
use keel_api::EtcdError;
use tonic::Code;

/// (error, gRPC code, exact message) as etcd sends them.
fn expected() -> Vec<(EtcdError, Code, &'static str)> {
    use EtcdError as E;
    vec![
        (
            E::EmptyKey,
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        ),
        (
            E::KeyNotFound,
            Code::InvalidArgument,
            "etcdserver: key not found",
        ),
        (
            E::ValueProvided,
            Code::InvalidArgument,
            "etcdserver: value is provided",
        ),
        (
            E::LeaseProvided,
            Code::InvalidArgument,
            "etcdserver: lease is provided",
        ),
        (
            E::TooManyOps,
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        (
            E::DuplicateKey,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        (
            E::RequestTooLarge,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        ),
        (
            E::RequestTooManyRequests,
            Code::ResourceExhausted,
            "etcdserver: too many requests",
        ),
        (
            E::Compacted,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        (
            E::FutureRev,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        (
            E::NoSpace,
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        (
            E::LeaseNotFound,
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (
            E::LeaseExist,
            Code::FailedPrecondition,
            "etcdserver: lease already exists",
        ),
        (
            E::LeaseTTLTooLarge,
            Code::OutOfRange,
            "etcdserver: too large lease TTL",
        ),
        (
            E::WatchCanceled,
            Code::Cancelled,
            "etcdserver: watch canceled",
        ),
        (
            E::MemberExist,
            Code::FailedPrecondition,
            "etcdserver: member ID already exist",
        ),
        (
            E::PeerURLExist,
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ),
        (
            E::MemberNotEnoughStarted,
            Code::FailedPrecondition,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        (
            E::MemberBadURLs,
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
        (
            E::MemberNotFound,
            Code::NotFound,
            "etcdserver: member not found",
        ),
        (
            E::MemberNotLearner,
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        ),
        (
            E::LearnerNotReady,
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        (
            E::TooManyLearners,
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster",
        ),
        (
            E::ClusterIdMismatch,
            Code::FailedPrecondition,
            "etcdserver: cluster ID mismatch",
        ),
        (
            E::RootUserNotExist,
            Code::FailedPrecondition,
            "etcdserver: root user does not exist",
        ),
        (
            E::RootRoleNotExist,
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role",
        ),
        (
            E::UserAlreadyExist,
            Code::FailedPrecondition,
            "etcdserver: user name already exists",
        ),
        (
            E::UserEmpty,
            Code::InvalidArgument,
            "etcdserver: user name is empty",
        ),
        (
            E::UserNotFound,
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ),
        (
            E::RoleAlreadyExist,
            Code::FailedPrecondition,
            "etcdserver: role name already exists",
        ),
        (
            E::RoleNotFound,
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ),
        (
            E::RoleEmpty,
            Code::InvalidArgument,
            "etcdserver: role name is empty",
        ),
        (
            E::AuthFailed,
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password",
        ),
        (
            E::PermissionNotGiven,
            Code::InvalidArgument,
            "etcdserver: permission not given",
        ),
        (
            E::PermissionDenied,
            Code::PermissionDenied,
            "etcdserver: permission denied",
        ),
        (
            E::RoleNotGranted,
            Code::FailedPrecondition,
            "etcdserver: role is not granted to the user",
        ),
        (
            E::PermissionNotGranted,
            Code::FailedPrecondition,
            "etcdserver: permission is not granted to the role",
        ),
        (
            E::AuthNotEnabled,
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
        ),
        (
            E::InvalidAuthToken,
            Code::Unauthenticated,
            "etcdserver: invalid auth token",
        ),
        (
            E::InvalidAuthMgmt,
            Code::InvalidArgument,
            "etcdserver: invalid auth management",
        ),
        (
            E::AuthOldRevision,
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        ),
        (E::NoLeader, Code::Unavailable, "etcdserver: no leader"),
        (
            E::NotLeader,
            Code::FailedPrecondition,
            "etcdserver: not leader",
        ),
        (
            E::LeaderChanged,
            Code::Unavailable,
            "etcdserver: leader changed",
        ),
        (E::NotCapable, Code::Unavailable, "etcdserver: not capable"),
        (E::Stopped, Code::Unavailable, "etcdserver: server stopped"),
        (
            E::Timeout,
            Code::Unavailable,
            "etcdserver: request timed out",
        ),
        (
            E::TimeoutDueToLeaderFail,
            Code::Unavailable,
            "etcdserver: request timed out, possibly due to previous leader failure",
        ),
        (
            E::TimeoutDueToConnectionLost,
            Code::Unavailable,
            "etcdserver: request timed out, possibly due to connection lost",
        ),
        (
            E::TimeoutWaitAppliedIndex,
            Code::Unavailable,
            "etcdserver: request timed out, waiting for the applied index took too long",
        ),
        (
            E::Unhealthy,
            Code::Unavailable,
            "etcdserver: unhealthy cluster",
        ),
        (E::Corrupt, Code::DataLoss, "etcdserver: corrupt cluster"),
        (
            E::NotSupportedForLearner,
            Code::Unavailable,
            "etcdserver: rpc not supported for learner",
        ),
        (
            E::BadLeaderTransferee,
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        ),
        (
            E::ClusterVersionUnavailable,
            Code::Unavailable,
            "etcdserver: cluster version not found during downgrade",
        ),
        (
            E::WrongDowngradeVersionFormat,
            Code::InvalidArgument,
            "etcdserver: wrong downgrade target version format",
        ),
        (
            E::InvalidDowngradeTargetVersion,
            Code::InvalidArgument,
            "etcdserver: invalid downgrade target version",
        ),
        (
            E::DowngradeInProcess,
            Code::FailedPrecondition,
            "etcdserver: cluster has a downgrade job in progress",
        ),
        (
            E::NoInflightDowngrade,
            Code::FailedPrecondition,
            "etcdserver: no inflight downgrade job",
        ),
        (E::Canceled, Code::Cancelled, "etcdserver: request canceled"),
        (
            E::DeadlineExceeded,
            Code::DeadlineExceeded,
            "etcdserver: context deadline exceeded",
        ),
        (E::ElectionNotLeader, Code::Unknown, "election: not leader"),
        (E::ElectionNoLeader, Code::Unknown, "election: no leader"),
        (
            E::ElectionMissingLeaderKey,
            Code::Unknown,
            "\"leader\" field must be provided",
        ),
        (
            E::LockSessionExpired,
            Code::Unknown,
            "mutex: session is expired",
        ),
    ]
}

#[test]
fn every_error_has_etcds_exact_code_and_message() {
    for (err, code, message) in expected() {
        let status = err.to_status();
        assert_eq!(status.code(), code, "gRPC code of {err:?}");
        assert_eq!(status.message(), message, "message of {err:?}");
        assert_eq!(err.to_string(), message, "Display of {err:?}");
        let via_from: tonic::Status = err.clone().into();
        assert_eq!((via_from.code(), via_from.message()), (code, message));
    }
}

#[test]
fn expected_table_covers_every_coded_variant() {
    let tested: Vec<EtcdError> = expected().into_iter().map(|(err, _, _)| err).collect();
    for err in EtcdError::CODED {
        assert!(
            tested.contains(err),
            "{err:?} has no row in the expected table"
        );
    }
    assert_eq!(tested.len(), EtcdError::CODED.len());
}

#[test]
fn from_code_round_trips_every_coded_variant() {
    for err in EtcdError::CODED {
        let code = err.code();
        assert_eq!(
            EtcdError::from_code(code).as_ref(),
            Some(err),
            "code {code}"
        );
    }
}

#[test]
fn numeric_codes_are_unique_and_never_reserved() {
    let mut seen = HashSet::new();
    for err in EtcdError::CODED {
        let code = err.code();
        assert_ne!(code, CODE_OK, "{err:?} uses the ok code");
        assert_ne!(code, CODE_UNCODED, "{err:?} uses the uncoded code");
        assert!(seen.insert(code), "{err:?} reuses code {code}");
    }
}

#[test]
fn apply_error_codes_are_stable() {
    // These numbers travel between members in InternalResponse.error; changing
    // one breaks mixed-version clusters.
    let pinned = [
        (EtcdError::Compacted, 200),
        (EtcdError::FutureRev, 201),
        (EtcdError::NoSpace, 202),
        (EtcdError::LeaseNotFound, 300),
        (EtcdError::LeaseExist, 301),
        (EtcdError::LeaseTTLTooLarge, 302),
        (EtcdError::KeyNotFound, 101),
        (EtcdError::DuplicateKey, 105),
    ];
    for (err, code) in pinned {
        assert_eq!(err.code(), code, "{err:?}");
    }
}

#[test]
fn ok_uncoded_and_unknown_codes_decode_to_none() {
    assert_eq!(EtcdError::from_code(CODE_OK), None);
    assert_eq!(EtcdError::from_code(CODE_UNCODED), None);
    assert_eq!(EtcdError::from_code(u32::MAX), None);
}

#[test]
fn unimplemented_names_the_rpc() {
    let err = EtcdError::Unimplemented("Maintenance.Defragment".to_string());
    let status = err.to_status();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(
        status.message(),
        "keel: Maintenance.Defragment is not implemented yet"
    );
    assert_eq!(err.code(), CODE_UNCODED);
}

#[test]
fn unknown_passes_its_text_through_like_etcd() {
    let err = EtcdError::Unknown("disk on fire".to_string());
    let status = err.to_status();
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(status.message(), "disk on fire");
    assert_eq!(err.code(), CODE_UNCODED);
}
