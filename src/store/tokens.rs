//! Single-use user tokens (invitations, password resets). Only a SHA-256 of each token is stored:
//! tokens are 256-bit random values, so a fast hash is enough and lookups stay O(1).

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{db::Tx, entity::user_tokens};
use crate::domain::{Result, now, user::IssuedToken};

#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum TokenKind {
    Invitation,
    PasswordReset,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Issues a new token of `kind` for the user, revoking the user's earlier tokens of that kind.
pub async fn issue(
    tx: &Tx,
    tenant_id: &str,
    user_id: Uuid,
    kind: TokenKind,
    expire_time: DateTime<Utc>,
) -> Result<IssuedToken> {
    revoke(tx, user_id, Some(kind)).await?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    user_tokens::ActiveModel {
        token_hash: Set(hash(&token)),
        tenant_id: Set(tenant_id.to_owned()),
        user_id: Set(user_id),
        kind: Set(kind.as_str().to_owned()),
        expire_time: Set(expire_time),
        create_time: Set(now()),
        used_time: Set(None),
    }
    .insert(&**tx)
    .await?;
    let token = SecretString::from(token);
    debug_assert!(!token.expose_secret().is_empty());
    Ok(IssuedToken { token, expire_time })
}

/// Deletes the user's tokens (of one kind, or all).
pub async fn revoke(tx: &Tx, user_id: Uuid, kind: Option<TokenKind>) -> Result<()> {
    let mut q = user_tokens::Entity::delete_many().filter(user_tokens::Column::UserId.eq(user_id));
    if let Some(kind) = kind {
        q = q.filter(user_tokens::Column::Kind.eq(kind.as_str()));
    }
    q.exec(&**tx).await?;
    Ok(())
}

/// The stored token with this value, if any (used or not).
pub async fn find(conn: &impl sea_orm::ConnectionTrait, token: &str) -> Result<Option<user_tokens::Model>> {
    Ok(user_tokens::Entity::find_by_id(hash(token)).one(conn).await?)
}

/// Marks a token used; false when it already was (or is gone): each token works once.
pub async fn consume(tx: &Tx, token_hash: &str) -> Result<bool> {
    let r = user_tokens::Entity::update_many()
        .col_expr(user_tokens::Column::UsedTime, Some(now()).into())
        .filter(user_tokens::Column::TokenHash.eq(token_hash))
        .filter(user_tokens::Column::UsedTime.is_null())
        .exec(&**tx)
        .await?;
    Ok(r.rows_affected == 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_kinds_keep_their_stored_names() {
        assert_eq!(super::TokenKind::Invitation.as_str(), "invitation");
        assert_eq!(super::TokenKind::PasswordReset.as_str(), "password_reset");
    }
}
