//! UserAdmin's responses built from what the operations return.

use secrecy::ExposeSecret;

use crate::{
    api::{convert, next_page_token},
    domain::{
        department::Department,
        ownership::Transfer,
        user::{User, UserWithToken},
    },
    proto::v1 as pb,
    service::Page,
};

pub(super) fn token_text(t: &UserWithToken) -> String {
    t.token.as_ref().map(|t| t.token.expose_secret().to_owned()).unwrap_or_default()
}

pub(super) fn user_response(u: User) -> Option<pb::User> {
    Some(convert::user_to_proto(u))
}

pub(super) fn created(out: UserWithToken) -> pb::CreateUserResponse {
    pb::CreateUserResponse {
        invitation_token: token_text(&out),
        invitation_expire_time: convert::opt_ts(out.token_expire_time),
        user: user_response(out.user),
    }
}

pub(super) fn invitation_resent(out: UserWithToken) -> pb::ResendInvitationResponse {
    pb::ResendInvitationResponse {
        invitation_token: token_text(&out),
        invitation_expire_time: convert::opt_ts(out.token_expire_time),
        user: user_response(out.user),
    }
}

pub(super) fn password_reset(out: UserWithToken) -> pb::ResetPasswordResponse {
    pb::ResetPasswordResponse {
        reset_token: token_text(&out),
        reset_token_expire_time: convert::opt_ts(out.token_expire_time),
        user: user_response(out.user),
    }
}

pub(super) fn deactivated(user: User, transfer: Option<Transfer>) -> pb::DeactivateUserResponse {
    pb::DeactivateUserResponse { user: user_response(user), transfer: transfer.map(convert::transfer_to_proto) }
}

pub(super) fn deleted(user: User, transfer: Option<Transfer>) -> pb::DeleteUserResponse {
    pb::DeleteUserResponse { user: user_response(user), transfer: transfer.map(convert::transfer_to_proto) }
}

pub(super) fn users_page(page: Page<User>, filters: &str) -> pb::ListUsersResponse {
    let next_page_token = next_page_token(&page, filters, |last| last.user_id.to_string());
    pb::ListUsersResponse { users: page.items.into_iter().map(convert::user_to_proto).collect(), next_page_token }
}

pub(super) fn departments_page(page: Page<Department>, filters: &str) -> pb::ListDepartmentsResponse {
    let next_page_token = next_page_token(&page, filters, |last| last.department_id.to_string());
    let departments = page.items.into_iter().map(convert::department_to_proto).collect();
    pb::ListDepartmentsResponse { departments, next_page_token }
}
