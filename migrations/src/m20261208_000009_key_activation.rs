//! Signing keys are published before they sign: a rotated key is in the JWK Set at once and
//! signs only from its `activate_time`, so consumers that cache the set (Envoy, Istio, OIDC
//! libraries) have it before they meet a token signed by it. NULL (every key made before this
//! migration): the key signed from its `create_time`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter().table("signing_keys").add_column(timestamp_with_time_zone_null("activate_time")).to_owned(),
        )
        .await
    }
}
