//! Roles, tenant-defined modules, role assignments, and the tenant policy version that replicas
//! use to notice missed cache invalidations.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("tenants")
                // Bumped by every change that affects access decisions (roles, assignments, users'
                // state or department, the department tree, modules).
                .add_column(big_integer("policy_version").default(0))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("modules")
                .col(string("tenant_id"))
                .col(string("name"))
                .col(string("display_name"))
                // JSON array of action names.
                .col(text("actions"))
                .col(big_integer("version"))
                .col(timestamp_with_time_zone("create_time"))
                .col(timestamp_with_time_zone("update_time"))
                .primary_key(Index::create().col("tenant_id").col("name"))
                .foreign_key(
                    ForeignKey::create()
                        .from("modules", "tenant_id")
                        .to("tenants", "tenant_id")
                        .on_delete(ForeignKeyAction::Restrict),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("roles")
                .col(uuid("role_id").primary_key())
                .col(string("tenant_id"))
                .col(string("name"))
                .col(string("name_key"))
                .col(text("description"))
                // Template name for the built-in roles (administrator, manager, operator, guest).
                .col(string_null("builtin"))
                // JSON array of {module, action, scope}; empty for built-in roles, whose rights
                // come from the template in code.
                .col(text("permissions"))
                .col(big_integer("version"))
                .col(timestamp_with_time_zone("create_time"))
                .col(timestamp_with_time_zone("update_time"))
                .foreign_key(
                    ForeignKey::create()
                        .from("roles", "tenant_id")
                        .to("tenants", "tenant_id")
                        .on_delete(ForeignKeyAction::Restrict),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_roles_tenant_name")
                .table("roles")
                .col("tenant_id")
                .col("name_key")
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("user_roles")
                .col(uuid("user_id"))
                .col(uuid("role_id"))
                .col(string("tenant_id"))
                .col(timestamp_with_time_zone("create_time"))
                .primary_key(Index::create().col("user_id").col("role_id"))
                .foreign_key(
                    ForeignKey::create()
                        .from("user_roles", "user_id")
                        .to("users", "user_id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from("user_roles", "role_id")
                        .to("roles", "role_id")
                        .on_delete(ForeignKeyAction::Restrict),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(Index::create().name("ix_user_roles_role").table("user_roles").col("role_id").to_owned())
            .await?;
        m.create_index(
            Index::create().name("ix_user_roles_tenant").table("user_roles").col("tenant_id").col("user_id").to_owned(),
        )
        .await?;
        Ok(())
    }
}
