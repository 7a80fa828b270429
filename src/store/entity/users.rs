use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    pub tenant_id: String,
    pub email: Option<String>,
    pub email_key: Option<String>,
    /// UTS #39 skeleton of `email_key` (unique per tenant: look-alike addresses collide).
    pub email_skeleton: Option<String>,
    pub given_name: String,
    pub family_name: String,
    pub display_name: String,
    pub phone: Option<String>,
    pub position: String,
    pub employee_number: Option<String>,
    pub department_id: Option<Uuid>,
    pub hire_date: Option<String>,
    pub state: String,
    /// BCP 47 tag of the user's messages; "" = the tenant's default.
    pub locale: String,
    pub mfa_enrolled: bool,
    pub must_change_password: bool,
    #[sea_orm(column_type = "Text")]
    pub attributes: String,
    pub password_hash: Option<String>,
    pub last_login_time: Option<DateTimeUtc>,
    pub deactivate_time: Option<DateTimeUtc>,
    pub delete_time: Option<DateTimeUtc>,
    pub purge_after: Option<DateTimeUtc>,
    pub purge_time: Option<DateTimeUtc>,
    /// A login name (SCIM `userName` when it is not the e-mail address), unique per tenant by
    /// `username_key` (NFKC, lower case).
    pub username: Option<String>,
    pub username_key: Option<String>,
    /// The identity provider's id of the user (SCIM `externalId`).
    pub external_id: Option<String>,
    pub version: i64,
    pub create_time: DateTimeUtc,
    pub update_time: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
