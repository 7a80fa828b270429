//! Password logins by phone number (a tenant's `login_policy`) look users up by
//! `(tenant_id, phone)`. Not unique: a number two users share names neither in a login.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create().name("ix_users_tenant_phone").table("users").col("tenant_id").col("phone").to_owned(),
        )
        .await
    }
}
