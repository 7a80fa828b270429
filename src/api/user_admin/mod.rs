//! `crm.iam.v1.UserAdmin`: users and departments of a tenant. Requests become commands in
//! `requests.rs`; the operations (`service::users`, `service::departments`) authorize and run them.

use tonic::{Request, Response, Status};

use super::{accept, convert};
use crate::{
    proto::v1::{self as pb, user_admin_server::UserAdmin},
    service::Iam,
};

mod fields;
mod requests;
mod responses;

use responses::user_response;

pub struct UserAdminApi {
    iam: Iam,
}

impl UserAdminApi {
    pub fn new(iam: Iam) -> Self {
        UserAdminApi { iam }
    }
}

#[tonic::async_trait]
impl UserAdmin for UserAdminApi {
    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let created = self.iam.create_user(&call, cmd).await?;
        Ok(Response::new(responses::created(created)))
    }

    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let user = self.iam.get_user(&call, cmd).await?;
        Ok(Response::new(pb::GetUserResponse { user: user_response(user) }))
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        let (call, cmd): (_, crate::service::users::ListUsers) = accept(req)?;
        let filters = cmd.filters.clone();
        let page = self.iam.list_users(&call, cmd).await?;
        Ok(Response::new(responses::users_page(page, &filters)))
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let user = self.iam.update_user(&call, cmd).await?;
        Ok(Response::new(pb::UpdateUserResponse { user: user_response(user) }))
    }

    async fn deactivate_user(
        &self,
        req: Request<pb::DeactivateUserRequest>,
    ) -> Result<Response<pb::DeactivateUserResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let (user, transfer) = self.iam.deactivate_user(&call, cmd).await?;
        Ok(Response::new(responses::deactivated(user, transfer)))
    }

    async fn reactivate_user(
        &self,
        req: Request<pb::ReactivateUserRequest>,
    ) -> Result<Response<pb::ReactivateUserResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let user = self.iam.reactivate_user(&call, cmd).await?;
        Ok(Response::new(pb::ReactivateUserResponse { user: user_response(user) }))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let (user, transfer) = self.iam.delete_user(&call, cmd).await?;
        Ok(Response::new(responses::deleted(user, transfer)))
    }

    async fn undelete_user(
        &self,
        req: Request<pb::UndeleteUserRequest>,
    ) -> Result<Response<pb::UndeleteUserResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let user = self.iam.undelete_user(&call, cmd).await?;
        Ok(Response::new(pb::UndeleteUserResponse { user: user_response(user) }))
    }

    async fn purge_user(&self, req: Request<pb::PurgeUserRequest>) -> Result<Response<pb::PurgeUserResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let user = self.iam.purge_user(&call, cmd).await?;
        Ok(Response::new(pb::PurgeUserResponse { user: user_response(user) }))
    }

    async fn reset_password(
        &self,
        req: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let out = self.iam.reset_password(&call, cmd).await?;
        Ok(Response::new(responses::password_reset(out)))
    }

    async fn resend_invitation(
        &self,
        req: Request<pb::ResendInvitationRequest>,
    ) -> Result<Response<pb::ResendInvitationResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let out = self.iam.resend_invitation(&call, cmd).await?;
        Ok(Response::new(responses::invitation_resent(out)))
    }

    async fn create_department(
        &self,
        req: Request<pb::CreateDepartmentRequest>,
    ) -> Result<Response<pb::CreateDepartmentResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let d = self.iam.create_department(&call, cmd).await?;
        Ok(Response::new(pb::CreateDepartmentResponse { department: Some(convert::department_to_proto(d)) }))
    }

    async fn get_department(
        &self,
        req: Request<pb::GetDepartmentRequest>,
    ) -> Result<Response<pb::GetDepartmentResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let d = self.iam.get_department(&call, cmd).await?;
        Ok(Response::new(pb::GetDepartmentResponse { department: Some(convert::department_to_proto(d)) }))
    }

    async fn list_departments(
        &self,
        req: Request<pb::ListDepartmentsRequest>,
    ) -> Result<Response<pb::ListDepartmentsResponse>, Status> {
        let (call, cmd): (_, crate::service::users::ListDepartments) = accept(req)?;
        let filters = cmd.filters.clone();
        let page = self.iam.list_departments(&call, cmd).await?;
        Ok(Response::new(responses::departments_page(page, &filters)))
    }

    async fn update_department(
        &self,
        req: Request<pb::UpdateDepartmentRequest>,
    ) -> Result<Response<pb::UpdateDepartmentResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let d = self.iam.update_department(&call, cmd).await?;
        Ok(Response::new(pb::UpdateDepartmentResponse { department: Some(convert::department_to_proto(d)) }))
    }

    async fn delete_department(
        &self,
        req: Request<pb::DeleteDepartmentRequest>,
    ) -> Result<Response<pb::DeleteDepartmentResponse>, Status> {
        let (call, cmd) = accept(req)?;
        self.iam.delete_department(&call, cmd).await?;
        Ok(Response::new(pb::DeleteDepartmentResponse {}))
    }
}
