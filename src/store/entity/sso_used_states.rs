use sea_orm::entity::prelude::*;

/// A sign-in state that has been presented to CompleteSso (kept until it would have expired).
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sso_used_states")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub state_sha256: String,
    pub expire_time: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
