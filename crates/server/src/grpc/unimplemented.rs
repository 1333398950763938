//! Services declared on the wire but not built yet: each RPC answers gRPC `Unimplemented`
//! with a message naming it, so a client learns exactly what is missing.
//!
//! Must never: pretend to succeed. Each capability moves out of this file when its issue lands.

use keel_api::error::EtcdError;
use keel_api::etcdserverpb as pb;
use tonic::{Response, Status};

type Reply<T> = Result<Response<T>, Status>;

pub fn unimplemented<T>(rpc: &str) -> Reply<T> {
    Err(EtcdError::Unimplemented(rpc.to_string()).to_status())
}

/// Generates unary trait methods that answer `Unimplemented`. They are spelled in the form
/// `#[tonic::async_trait]` produces, because that attribute runs before this macro expands.
macro_rules! unimplemented_rpcs {
    ($service:literal; $($method:ident($req:ty) -> $resp:ty, $name:literal;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _: tonic::Request<$req>,
            ) -> ::core::pin::Pin<Box<
                dyn ::core::future::Future<Output = Result<tonic::Response<$resp>, tonic::Status>>
                    + Send
                    + 'async_trait,
            >>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async { $crate::grpc::unimplemented::unimplemented(concat!($service, ".", $name)) })
            }
        )*
    };
}
pub(crate) use unimplemented_rpcs;

/// Auth until its issue lands.
pub struct NotYet;

#[tonic::async_trait]
impl pb::auth_server::Auth for NotYet {
    unimplemented_rpcs! { "Auth";
        auth_enable(pb::AuthEnableRequest) -> pb::AuthEnableResponse, "AuthEnable";
        auth_disable(pb::AuthDisableRequest) -> pb::AuthDisableResponse, "AuthDisable";
        auth_status(pb::AuthStatusRequest) -> pb::AuthStatusResponse, "AuthStatus";
        authenticate(pb::AuthenticateRequest) -> pb::AuthenticateResponse, "Authenticate";
        user_add(pb::AuthUserAddRequest) -> pb::AuthUserAddResponse, "UserAdd";
        user_get(pb::AuthUserGetRequest) -> pb::AuthUserGetResponse, "UserGet";
        user_list(pb::AuthUserListRequest) -> pb::AuthUserListResponse, "UserList";
        user_delete(pb::AuthUserDeleteRequest) -> pb::AuthUserDeleteResponse, "UserDelete";
        user_change_password(pb::AuthUserChangePasswordRequest) -> pb::AuthUserChangePasswordResponse, "UserChangePassword";
        user_grant_role(pb::AuthUserGrantRoleRequest) -> pb::AuthUserGrantRoleResponse, "UserGrantRole";
        user_revoke_role(pb::AuthUserRevokeRoleRequest) -> pb::AuthUserRevokeRoleResponse, "UserRevokeRole";
        role_add(pb::AuthRoleAddRequest) -> pb::AuthRoleAddResponse, "RoleAdd";
        role_get(pb::AuthRoleGetRequest) -> pb::AuthRoleGetResponse, "RoleGet";
        role_list(pb::AuthRoleListRequest) -> pb::AuthRoleListResponse, "RoleList";
        role_delete(pb::AuthRoleDeleteRequest) -> pb::AuthRoleDeleteResponse, "RoleDelete";
        role_grant_permission(pb::AuthRoleGrantPermissionRequest) -> pb::AuthRoleGrantPermissionResponse, "RoleGrantPermission";
        role_revoke_permission(pb::AuthRoleRevokePermissionRequest) -> pb::AuthRoleRevokePermissionResponse, "RoleRevokePermission";
    }
}
