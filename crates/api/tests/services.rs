//! gRPC method paths (`/package.Service/Method`) and streaming shapes of every
//! service, read back from the compiled descriptor set. Clients call these
//! paths literally, so a misspelt rpc is as fatal as a wrong field number.

use keel_api::FILE_DESCRIPTOR_SET;
use prost::Message;

// Just enough of google/protobuf/descriptor.proto to read services.
#[derive(Clone, PartialEq, Message)]
struct FileDescriptorSet {
    #[prost(message, repeated, tag = "1")]
    file: Vec<FileDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct FileDescriptorProto {
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    method: Vec<MethodDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct MethodDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    input_type: Option<String>,
    #[prost(string, optional, tag = "3")]
    output_type: Option<String>,
    #[prost(bool, optional, tag = "5")]
    client_streaming: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    server_streaming: Option<bool>,
}

/// One line per rpc: "/pkg.Service/Method in out [client-stream] [server-stream]".
fn actual_methods() -> Vec<String> {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let mut lines = Vec::new();
    for file in &set.file {
        let package = file.package.clone().unwrap_or_default();
        for service in &file.service {
            let service_name = service.name.clone().unwrap_or_default();
            for m in &service.method {
                let mut line = format!(
                    "/{package}.{service_name}/{} {} {}",
                    m.name.clone().unwrap_or_default(),
                    m.input_type.clone().unwrap_or_default(),
                    m.output_type.clone().unwrap_or_default(),
                );
                if m.client_streaming == Some(true) {
                    line.push_str(" client-stream");
                }
                if m.server_streaming == Some(true) {
                    line.push_str(" server-stream");
                }
                lines.push(line);
            }
        }
    }
    lines.sort();
    lines
}

/// etcd v3.5's services, typed from etcd's rpc.proto, v3lock.proto and
/// v3election.proto, plus keel's own peer service.
const EXPECTED: &[&str] = &[
    "/etcdserverpb.Auth/AuthDisable .etcdserverpb.AuthDisableRequest .etcdserverpb.AuthDisableResponse",
    "/etcdserverpb.Auth/AuthEnable .etcdserverpb.AuthEnableRequest .etcdserverpb.AuthEnableResponse",
    "/etcdserverpb.Auth/AuthStatus .etcdserverpb.AuthStatusRequest .etcdserverpb.AuthStatusResponse",
    "/etcdserverpb.Auth/Authenticate .etcdserverpb.AuthenticateRequest .etcdserverpb.AuthenticateResponse",
    "/etcdserverpb.Auth/RoleAdd .etcdserverpb.AuthRoleAddRequest .etcdserverpb.AuthRoleAddResponse",
    "/etcdserverpb.Auth/RoleDelete .etcdserverpb.AuthRoleDeleteRequest .etcdserverpb.AuthRoleDeleteResponse",
    "/etcdserverpb.Auth/RoleGet .etcdserverpb.AuthRoleGetRequest .etcdserverpb.AuthRoleGetResponse",
    "/etcdserverpb.Auth/RoleGrantPermission .etcdserverpb.AuthRoleGrantPermissionRequest .etcdserverpb.AuthRoleGrantPermissionResponse",
    "/etcdserverpb.Auth/RoleList .etcdserverpb.AuthRoleListRequest .etcdserverpb.AuthRoleListResponse",
    "/etcdserverpb.Auth/RoleRevokePermission .etcdserverpb.AuthRoleRevokePermissionRequest .etcdserverpb.AuthRoleRevokePermissionResponse",
    "/etcdserverpb.Auth/UserAdd .etcdserverpb.AuthUserAddRequest .etcdserverpb.AuthUserAddResponse",
    "/etcdserverpb.Auth/UserChangePassword .etcdserverpb.AuthUserChangePasswordRequest .etcdserverpb.AuthUserChangePasswordResponse",
    "/etcdserverpb.Auth/UserDelete .etcdserverpb.AuthUserDeleteRequest .etcdserverpb.AuthUserDeleteResponse",
    "/etcdserverpb.Auth/UserGet .etcdserverpb.AuthUserGetRequest .etcdserverpb.AuthUserGetResponse",
    "/etcdserverpb.Auth/UserGrantRole .etcdserverpb.AuthUserGrantRoleRequest .etcdserverpb.AuthUserGrantRoleResponse",
    "/etcdserverpb.Auth/UserList .etcdserverpb.AuthUserListRequest .etcdserverpb.AuthUserListResponse",
    "/etcdserverpb.Auth/UserRevokeRole .etcdserverpb.AuthUserRevokeRoleRequest .etcdserverpb.AuthUserRevokeRoleResponse",
    "/etcdserverpb.Cluster/MemberAdd .etcdserverpb.MemberAddRequest .etcdserverpb.MemberAddResponse",
    "/etcdserverpb.Cluster/MemberList .etcdserverpb.MemberListRequest .etcdserverpb.MemberListResponse",
    "/etcdserverpb.Cluster/MemberPromote .etcdserverpb.MemberPromoteRequest .etcdserverpb.MemberPromoteResponse",
    "/etcdserverpb.Cluster/MemberRemove .etcdserverpb.MemberRemoveRequest .etcdserverpb.MemberRemoveResponse",
    "/etcdserverpb.Cluster/MemberUpdate .etcdserverpb.MemberUpdateRequest .etcdserverpb.MemberUpdateResponse",
    "/etcdserverpb.KV/Compact .etcdserverpb.CompactionRequest .etcdserverpb.CompactionResponse",
    "/etcdserverpb.KV/DeleteRange .etcdserverpb.DeleteRangeRequest .etcdserverpb.DeleteRangeResponse",
    "/etcdserverpb.KV/Put .etcdserverpb.PutRequest .etcdserverpb.PutResponse",
    "/etcdserverpb.KV/Range .etcdserverpb.RangeRequest .etcdserverpb.RangeResponse",
    "/etcdserverpb.KV/Txn .etcdserverpb.TxnRequest .etcdserverpb.TxnResponse",
    "/etcdserverpb.Lease/LeaseGrant .etcdserverpb.LeaseGrantRequest .etcdserverpb.LeaseGrantResponse",
    "/etcdserverpb.Lease/LeaseKeepAlive .etcdserverpb.LeaseKeepAliveRequest .etcdserverpb.LeaseKeepAliveResponse client-stream server-stream",
    "/etcdserverpb.Lease/LeaseLeases .etcdserverpb.LeaseLeasesRequest .etcdserverpb.LeaseLeasesResponse",
    "/etcdserverpb.Lease/LeaseRevoke .etcdserverpb.LeaseRevokeRequest .etcdserverpb.LeaseRevokeResponse",
    "/etcdserverpb.Lease/LeaseTimeToLive .etcdserverpb.LeaseTimeToLiveRequest .etcdserverpb.LeaseTimeToLiveResponse",
    "/etcdserverpb.Maintenance/Alarm .etcdserverpb.AlarmRequest .etcdserverpb.AlarmResponse",
    "/etcdserverpb.Maintenance/Defragment .etcdserverpb.DefragmentRequest .etcdserverpb.DefragmentResponse",
    "/etcdserverpb.Maintenance/Downgrade .etcdserverpb.DowngradeRequest .etcdserverpb.DowngradeResponse",
    "/etcdserverpb.Maintenance/Hash .etcdserverpb.HashRequest .etcdserverpb.HashResponse",
    "/etcdserverpb.Maintenance/HashKV .etcdserverpb.HashKVRequest .etcdserverpb.HashKVResponse",
    "/etcdserverpb.Maintenance/MoveLeader .etcdserverpb.MoveLeaderRequest .etcdserverpb.MoveLeaderResponse",
    "/etcdserverpb.Maintenance/Snapshot .etcdserverpb.SnapshotRequest .etcdserverpb.SnapshotResponse server-stream",
    "/etcdserverpb.Maintenance/Status .etcdserverpb.StatusRequest .etcdserverpb.StatusResponse",
    "/etcdserverpb.Watch/Watch .etcdserverpb.WatchRequest .etcdserverpb.WatchResponse client-stream server-stream",
    "/keelpb.Peer/AppendEntries .keelpb.RaftMessage .keelpb.RaftMessage",
    "/keelpb.Peer/AppendStream .keelpb.RaftMessage .keelpb.RaftMessage client-stream server-stream",
    "/keelpb.Peer/Forward .keelpb.ForwardRequest .keelpb.ForwardResponse client-stream server-stream",
    "/keelpb.Peer/InstallSnapshot .keelpb.RaftMessage .keelpb.RaftMessage",
    "/keelpb.Peer/LeaseKeepAlive .etcdserverpb.LeaseKeepAliveRequest .etcdserverpb.LeaseKeepAliveResponse",
    "/keelpb.Peer/LeaseTimeToLive .etcdserverpb.LeaseTimeToLiveRequest .etcdserverpb.LeaseTimeToLiveResponse",
    "/keelpb.Peer/ReadIndex .keelpb.ReadIndexRequest .keelpb.ReadIndexResponse",
    "/keelpb.Peer/TransferLeader .keelpb.RaftMessage .keelpb.RaftMessage",
    "/keelpb.Peer/Vote .keelpb.RaftMessage .keelpb.RaftMessage",
    "/v3electionpb.Election/Campaign .v3electionpb.CampaignRequest .v3electionpb.CampaignResponse",
    "/v3electionpb.Election/Leader .v3electionpb.LeaderRequest .v3electionpb.LeaderResponse",
    "/v3electionpb.Election/Observe .v3electionpb.LeaderRequest .v3electionpb.LeaderResponse server-stream",
    "/v3electionpb.Election/Proclaim .v3electionpb.ProclaimRequest .v3electionpb.ProclaimResponse",
    "/v3electionpb.Election/Resign .v3electionpb.ResignRequest .v3electionpb.ResignResponse",
    "/v3lockpb.Lock/Lock .v3lockpb.LockRequest .v3lockpb.LockResponse",
    "/v3lockpb.Lock/Unlock .v3lockpb.UnlockRequest .v3lockpb.UnlockResponse",
];

#[test]
fn every_rpc_has_etcds_path_types_and_streaming_shape() {
    let mut expected: Vec<String> = EXPECTED.iter().map(|line| line.to_string()).collect();
    expected.sort();
    assert_eq!(actual_methods(), expected);
}

#[test]
fn generated_service_names_match_the_wire_paths() {
    use keel_api::{etcdserverpb, keelpb, v3electionpb, v3lockpb};
    let names = [
        etcdserverpb::kv_server::SERVICE_NAME,
        etcdserverpb::watch_server::SERVICE_NAME,
        etcdserverpb::lease_server::SERVICE_NAME,
        etcdserverpb::cluster_server::SERVICE_NAME,
        etcdserverpb::maintenance_server::SERVICE_NAME,
        etcdserverpb::auth_server::SERVICE_NAME,
        v3lockpb::lock_server::SERVICE_NAME,
        v3electionpb::election_server::SERVICE_NAME,
        keelpb::peer_server::SERVICE_NAME,
    ];
    assert_eq!(
        names,
        [
            "etcdserverpb.KV",
            "etcdserverpb.Watch",
            "etcdserverpb.Lease",
            "etcdserverpb.Cluster",
            "etcdserverpb.Maintenance",
            "etcdserverpb.Auth",
            "v3lockpb.Lock",
            "v3electionpb.Election",
            "keelpb.Peer",
        ]
    );
}
