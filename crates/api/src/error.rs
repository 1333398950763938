//! The one table of errors a keel client can see.
//!
//! Clients match etcd's errors by gRPC status code and by the exact message
//! text (Go's clientv3 maps messages back to error values byte for byte), so
//! every string here is copied from etcd v3.5's `api/v3rpc/rpctypes/error.go`
//! and must not be reworded. Each row also carries a stable numeric code so an
//! error decided during apply can travel in `keelpb.InternalResponse.error`
//! from the member that applied the entry to the member holding the client.
//!
//! This module must never grow a second place where error text is built: the
//! gRPC services convert with [`EtcdError::to_status`] and nothing else.

use tonic::{Code, Status};

/// Numeric code meaning "no error" in `keelpb.InternalResponse.error`.
pub const CODE_OK: u32 = 0;

/// Numeric code of the variants that carry free text ([`EtcdError::Unimplemented`],
/// [`EtcdError::Unknown`]). The text cannot travel in a `u32`, so
/// [`EtcdError::from_code`] does not rebuild them; apply must never produce them.
pub const CODE_UNCODED: u32 = 1;

/// Defines [`EtcdError`] from one table so that the variant, its numeric code,
/// its gRPC code and its message can never drift apart.
macro_rules! etcd_error_table {
    ($( $(#[$doc:meta])* $variant:ident = $num:literal, $grpc:ident, $msg:literal; )*) => {
        /// An error as etcd reports it to clients.
        ///
        /// `Display` is the exact etcd message; [`EtcdError::grpc_code`] the
        /// exact gRPC code.
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        pub enum EtcdError {
            $( $(#[$doc])* #[error($msg)] $variant, )*
            /// An RPC keel accepts on the wire but does not serve yet. Holds
            /// the RPC's name, e.g. `"Maintenance.Defragment"`.
            #[error("keel: {0} is not implemented yet")]
            Unimplemented(String),
            /// Any other failure. etcd answers errors outside its table with
            /// `UNKNOWN` and the error's own text; so does keel.
            #[error("{0}")]
            Unknown(String),
        }

        impl EtcdError {
            /// Every variant that has a numeric code, in table order.
            pub const CODED: &'static [EtcdError] = &[$(EtcdError::$variant,)*];

            /// The gRPC status code etcd uses for this error.
            pub fn grpc_code(&self) -> Code {
                match self {
                    $( EtcdError::$variant => Code::$grpc, )*
                    EtcdError::Unimplemented(_) => Code::Unimplemented,
                    EtcdError::Unknown(_) => Code::Unknown,
                }
            }

            /// Stable numeric code for `keelpb.InternalResponse.error`; never
            /// [`CODE_OK`]. Codes are part of the peer protocol: never reuse or
            /// renumber one.
            pub fn code(&self) -> u32 {
                match self {
                    $( EtcdError::$variant => $num, )*
                    EtcdError::Unimplemented(_) | EtcdError::Unknown(_) => CODE_UNCODED,
                }
            }

            /// Inverse of [`EtcdError::code`]. `None` for [`CODE_OK`],
            /// [`CODE_UNCODED`] and codes this version does not know (a newer
            /// member may send them; the caller decides how to report that).
            pub fn from_code(code: u32) -> Option<EtcdError> {
                match code {
                    $( $num => Some(EtcdError::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

// Codes are grouped by area with gaps so related errors stay together when
// new ones are added. 0 and 1 are reserved (CODE_OK, CODE_UNCODED).
etcd_error_table! {
    // --- request validation and KV ---
    /// A request with an empty key.
    EmptyKey = 100, InvalidArgument, "etcdserver: key is not provided";
    /// `ignore_value` / `ignore_lease` on a key that does not exist.
    KeyNotFound = 101, InvalidArgument, "etcdserver: key not found";
    /// A value given together with `ignore_value`.
    ValueProvided = 102, InvalidArgument, "etcdserver: value is provided";
    /// A lease given together with `ignore_lease`.
    LeaseProvided = 103, InvalidArgument, "etcdserver: lease is provided";
    /// A txn branch with more operations than `max_txn_ops`.
    TooManyOps = 104, InvalidArgument, "etcdserver: too many operations in txn request";
    /// The same key written twice in one txn branch.
    DuplicateKey = 105, InvalidArgument, "etcdserver: duplicate key given in txn request";
    /// A request larger than `max_request_bytes`.
    RequestTooLarge = 106, InvalidArgument, "etcdserver: request is too large";
    /// Apply has fallen too far behind commit. (etcd returns this one through
    /// a path that loses the code, so some etcd versions send UNKNOWN; the
    /// table's code is what etcd intends and what keel sends.)
    RequestTooManyRequests = 107, ResourceExhausted, "etcdserver: too many requests";

    // --- MVCC ---
    /// Read, watch or compact at or below the compacted revision.
    Compacted = 200, OutOfRange, "etcdserver: mvcc: required revision has been compacted";
    /// Read or compact above the current revision.
    FutureRev = 201, OutOfRange, "etcdserver: mvcc: required revision is a future revision";
    /// The backend quota is used up (NOSPACE alarm).
    NoSpace = 202, ResourceExhausted, "etcdserver: mvcc: database space exceeded";

    // --- leases ---
    /// A lease ID that does not exist.
    LeaseNotFound = 300, NotFound, "etcdserver: requested lease not found";
    /// Grant with an ID already in use.
    LeaseExist = 301, FailedPrecondition, "etcdserver: lease already exists";
    /// Grant with a TTL above the maximum.
    LeaseTTLTooLarge = 302, OutOfRange, "etcdserver: too large lease TTL";

    // --- watch ---
    /// A watch stream the server ended.
    WatchCanceled = 350, Cancelled, "etcdserver: watch canceled";

    // --- membership ---
    /// MemberAdd with an ID already in the cluster.
    MemberExist = 400, FailedPrecondition, "etcdserver: member ID already exist";
    /// MemberAdd/Update with a peer URL another member has.
    PeerURLExist = 401, FailedPrecondition, "etcdserver: Peer URLs already exists";
    /// The change would leave too few started members for a quorum.
    MemberNotEnoughStarted = 402, FailedPrecondition, "etcdserver: re-configuration failed due to not enough started members";
    /// Peer URLs that do not parse.
    MemberBadURLs = 403, InvalidArgument, "etcdserver: given member URLs are invalid";
    /// A member ID not in the cluster.
    MemberNotFound = 404, NotFound, "etcdserver: member not found";
    /// MemberPromote of a voting member.
    MemberNotLearner = 405, FailedPrecondition, "etcdserver: can only promote a learner member";
    /// MemberPromote of a learner that has not caught up.
    LearnerNotReady = 406, FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader";
    /// MemberAdd of a learner when the learner limit is reached.
    TooManyLearners = 407, FailedPrecondition, "etcdserver: too many learner members in cluster";
    /// A peer from another cluster.
    ClusterIdMismatch = 408, FailedPrecondition, "etcdserver: cluster ID mismatch";

    // --- auth ---
    RootUserNotExist = 500, FailedPrecondition, "etcdserver: root user does not exist";
    RootRoleNotExist = 501, FailedPrecondition, "etcdserver: root user does not have root role";
    UserAlreadyExist = 502, FailedPrecondition, "etcdserver: user name already exists";
    UserEmpty = 503, InvalidArgument, "etcdserver: user name is empty";
    UserNotFound = 504, FailedPrecondition, "etcdserver: user name not found";
    RoleAlreadyExist = 505, FailedPrecondition, "etcdserver: role name already exists";
    RoleNotFound = 506, FailedPrecondition, "etcdserver: role name not found";
    RoleEmpty = 507, InvalidArgument, "etcdserver: role name is empty";
    /// Wrong user name or password.
    AuthFailed = 508, InvalidArgument, "etcdserver: authentication failed, invalid user ID or password";
    PermissionNotGiven = 509, InvalidArgument, "etcdserver: permission not given";
    PermissionDenied = 510, PermissionDenied, "etcdserver: permission denied";
    RoleNotGranted = 511, FailedPrecondition, "etcdserver: role is not granted to the user";
    PermissionNotGranted = 512, FailedPrecondition, "etcdserver: permission is not granted to the role";
    AuthNotEnabled = 513, FailedPrecondition, "etcdserver: authentication is not enabled";
    InvalidAuthToken = 514, Unauthenticated, "etcdserver: invalid auth token";
    InvalidAuthMgmt = 515, InvalidArgument, "etcdserver: invalid auth management";
    AuthOldRevision = 516, InvalidArgument, "etcdserver: revision of auth store is old";

    // --- leadership, availability, integrity ---
    /// No leader is known (clients fail fast and retry elsewhere).
    NoLeader = 600, Unavailable, "etcdserver: no leader";
    /// The request needs the leader and this member is not it.
    NotLeader = 601, FailedPrecondition, "etcdserver: not leader";
    /// Leadership changed while the request was in flight.
    LeaderChanged = 602, Unavailable, "etcdserver: leader changed";
    NotCapable = 603, Unavailable, "etcdserver: not capable";
    /// The member is shutting down.
    Stopped = 604, Unavailable, "etcdserver: server stopped";
    Timeout = 605, Unavailable, "etcdserver: request timed out";
    TimeoutDueToLeaderFail = 606, Unavailable, "etcdserver: request timed out, possibly due to previous leader failure";
    TimeoutDueToConnectionLost = 607, Unavailable, "etcdserver: request timed out, possibly due to connection lost";
    TimeoutWaitAppliedIndex = 608, Unavailable, "etcdserver: request timed out, waiting for the applied index took too long";
    Unhealthy = 609, Unavailable, "etcdserver: unhealthy cluster";
    /// A CORRUPT alarm is active.
    Corrupt = 610, DataLoss, "etcdserver: corrupt cluster";
    /// A learner asked for something only voters serve.
    NotSupportedForLearner = 611, Unavailable, "etcdserver: rpc not supported for learner";
    /// MoveLeader to a member that cannot lead.
    BadLeaderTransferee = 612, FailedPrecondition, "etcdserver: bad leader transferee";

    // --- downgrade ---
    ClusterVersionUnavailable = 700, Unavailable, "etcdserver: cluster version not found during downgrade";
    WrongDowngradeVersionFormat = 701, InvalidArgument, "etcdserver: wrong downgrade target version format";
    InvalidDowngradeTargetVersion = 702, InvalidArgument, "etcdserver: invalid downgrade target version";
    DowngradeInProcess = 703, FailedPrecondition, "etcdserver: cluster has a downgrade job in progress";
    NoInflightDowngrade = 704, FailedPrecondition, "etcdserver: no inflight downgrade job";

    // --- request lifetime ---
    Canceled = 800, Cancelled, "etcdserver: request canceled";
    DeadlineExceeded = 801, DeadlineExceeded, "etcdserver: context deadline exceeded";

    // --- v3election: etcd returns these as plain errors, hence UNKNOWN ---
    /// Proclaim/Resign by a caller that is not the leader.
    ElectionNotLeader = 900, Unknown, "election: not leader";
    /// Leader/Observe on an election nobody has won.
    ElectionNoLeader = 901, Unknown, "election: no leader";
    /// Proclaim/Resign without the `leader` field.
    ElectionMissingLeaderKey = 902, Unknown, "\"leader\" field must be provided";
    /// The lock waiter's key vanished (its lease expired) while it waited.
    LockSessionExpired = 903, Unknown, "mutex: session is expired";
}

/// etcd's `cancel_reason` for a watch create whose `watch_id` is already in use on the
/// stream (`mvcc.ErrWatcherDuplicateID`). Watch rejections travel in a `WatchResponse`, not
/// as a gRPC status, so they are texts rather than `EtcdError` rows.
pub const WATCH_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's `cancel_reason` for a watch create with `key >= range_end`
/// (`mvcc.ErrEmptyWatcherRange`).
pub const WATCH_EMPTY_RANGE: &str = "mvcc: watcher range is empty";

impl EtcdError {
    /// The gRPC status a client receives for this error.
    pub fn to_status(&self) -> Status {
        Status::new(self.grpc_code(), self.to_string())
    }
}

impl From<EtcdError> for Status {
    fn from(err: EtcdError) -> Status {
        err.to_status()
    }
}

impl From<&EtcdError> for Status {
    fn from(err: &EtcdError) -> Status {
        err.to_status()
    }
}
