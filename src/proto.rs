//! Generated protobuf and gRPC code (see `build.rs`), plus the encoded descriptor set served by
//! reflection.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("crm.iam.v1");
}

/// The path of every gRPC method, as constants (generated from the protos by `build.rs`).
pub mod methods {
    include!(concat!(env!("OUT_DIR"), "/methods.rs"));

    /// Envoy's external authorization, served beside crm-iam's own services. A service credential
    /// allowed `Access.Check` may call it (it answers the same question).
    pub const ENVOY_CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

    /// The `&'static` name of a request path, None for a path crm-iam does not serve.
    pub fn find(path: &str) -> Option<&'static str> {
        if path == ENVOY_CHECK {
            return Some(ENVOY_CHECK);
        }
        ALL.binary_search(&path).ok().map(|i| ALL[i])
    }
}

/// Encoded `FileDescriptorSet` of every crm-iam proto, with comments, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/crm_iam_descriptor.bin"));

use std::fmt;

/// Messages that carry secrets have no derived `Debug` (see `build.rs`); these print everything
/// but the secret fields, so logging a request can never leak a password or token.
macro_rules! redacted_debug {
    ($ty:ident { $($field:ident),* } hides [$($secret:ident),*]) => {
        impl fmt::Debug for v1::$ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut d = f.debug_struct(stringify!($ty));
                $(d.field(stringify!($field), &self.$field);)*
                $(d.field(stringify!($secret), &if self.$secret.is_empty() { "" } else { "<redacted>" });)*
                d.finish()
            }
        }
    };
}

redacted_debug!(CreateUserRequest { tenant_id, user, password_is_permanent, send_invitation, role_ids, request_id } hides [initial_password]);
redacted_debug!(CreateUserResponse { user, invitation_expire_time } hides [invitation_token]);
redacted_debug!(ResetPasswordRequest { tenant_id, user_id, request_id } hides [temporary_password]);
redacted_debug!(ResetPasswordResponse { user, reset_token_expire_time } hides [reset_token]);
redacted_debug!(ResendInvitationResponse { user, invitation_expire_time } hides [invitation_token]);
redacted_debug!(AuthenticateRequest { tenant_id, email, username, phone } hides [password, totp_code]);
redacted_debug!(AuthenticateResponse { expires_in, session_id, token_type, user_id, password_change_required } hides [access_token, refresh_token]);
redacted_debug!(RefreshRequest {} hides [refresh_token]);
redacted_debug!(RefreshResponse { expires_in, session_id, token_type, user_id, password_change_required } hides [access_token, refresh_token]);
redacted_debug!(ChangePasswordRequest {} hides [old_password, new_password]);
redacted_debug!(ChangePasswordResponse { expires_in, session_id, token_type, user_id } hides [access_token, refresh_token]);
redacted_debug!(AcceptInvitationRequest {} hides [invitation_token, new_password]);
redacted_debug!(CompletePasswordResetRequest {} hides [reset_token, new_password]);
redacted_debug!(EnrollTotpResponse {} hides [otpauth_uri, secret]);
redacted_debug!(ConfirmTotpRequest {} hides [code]);
redacted_debug!(DisableTotpRequest { tenant_id, user_id, request_id } hides [code]);
redacted_debug!(IntrospectTokenRequest {} hides [token]);
redacted_debug!(IdentityProvider { name, issuer, client_id, scopes, allowed_email_domains, redirect_uris, jit_provisioning, group_role_mappings, sso_required, break_glass_user_ids, claim_mapping, create_time, created_by } hides [client_secret]);
redacted_debug!(BeginSsoResponse { authorization_url } hides [state, browser_binding]);
redacted_debug!(CompleteSsoRequest { iss } hides [state, code, browser_binding]);
redacted_debug!(CompleteSsoResponse { expires_in, session_id, token_type, user_id } hides [access_token, refresh_token]);

impl fmt::Debug for v1::ConfirmTotpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfirmTotpResponse")
            .field("recovery_codes", &format!("<{} redacted>", self.recovery_codes.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_never_reach_debug_output() {
        let req = super::v1::CreateUserRequest {
            tenant_id: "acme".into(),
            initial_password: "hunter2hunter2".into(),
            ..Default::default()
        };
        let printed = format!("{req:?}");
        assert!(printed.contains("acme") && printed.contains("<redacted>"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
