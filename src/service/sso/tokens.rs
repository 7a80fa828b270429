//! Reading what a provider sends: validating tokens signed like ID tokens, and the claims in them.

use base64::Engine;
use openidconnect::core::{CoreIdToken, CoreIdTokenClaims};
use serde_json::{Map, Value};

use super::flow::STATE_TTL_SECS;
use crate::domain::now;

/// How far a token's `iat` may be from this server's clock.
const IAT_SKEW_SECS: i64 = 300;

pub(super) fn text_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    claims.get(name).and_then(Value::as_str).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

pub(super) fn groups(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The provider's `amr` values crm-iam passes on: short tokens of letters, digits, `_`, `-`.
pub(super) fn provider_methods(claims: &Map<String, Value>) -> Vec<String> {
    let Some(Value::Array(items)) = claims.get("amr") else { return Vec::new() };
    items
        .iter()
        .filter_map(Value::as_str)
        .filter(|m| !m.is_empty() && m.len() <= 16 && m.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)))
        .filter(|m| *m != "sso")
        .take(8)
        // Marked as the provider's: an `otp` or `mfa` it reports is not crm-iam's own second
        // factor (which `require_mfa_for_admins` asks for).
        .map(|m| format!("idp:{m}"))
        .collect()
}

/// The claims of a token whose signature has been verified.
pub(super) fn payload(token: &str) -> Map<String, Value> {
    token
        .split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// A provider's client as crm-iam builds it from the discovery document.
pub(super) type Client = openidconnect::core::CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// Validates a token signed like an ID token (an ID token, a logout token) against a provider's
/// current keys: signature, `iss`, `aud`, `azp`, `exp`, `iat` within the skew, and the nonce.
/// `logout`: a logout token (typed `logout+jwt` or plain `JWT`) instead of an ID token.
pub(super) fn verify<N: openidconnect::NonceVerifier>(
    client: &Client,
    id_token: &CoreIdToken,
    nonce: N,
    logout: bool,
) -> std::result::Result<CoreIdTokenClaims, openidconnect::ClaimsVerificationError> {
    use openidconnect::core::CoreJwsSigningAlgorithm as A;
    // Public-key signatures only: never HS256 keyed with the client secret (which a provider's
    // discovery document could offer), never `none`.
    let mut verifier = client.id_token_verifier().set_allowed_algs([
        A::RsaSsaPkcs1V15Sha256,
        A::RsaSsaPkcs1V15Sha384,
        A::RsaSsaPkcs1V15Sha512,
        A::RsaSsaPssSha256,
        A::RsaSsaPssSha384,
        A::RsaSsaPssSha512,
        A::EcdsaP256Sha256,
        A::EcdsaP384Sha384,
        A::EcdsaP521Sha512,
        A::EdDsa,
    ]);
    if logout {
        let types = ["logout+jwt", "JWT"].into_iter().filter_map(|t| {
            openidconnect::NormalizedJsonWebTokenType::try_from(&openidconnect::JsonWebTokenType::new(t.into())).ok()
        });
        verifier = verifier.set_allowed_jose_types(types);
    }
    let verifier = verifier.set_issue_time_verifier_fn(|iat| {
        let skew = (now() - iat).num_seconds();
        if (-IAT_SKEW_SECS..=IAT_SKEW_SECS + STATE_TTL_SECS).contains(&skew) {
            Ok(())
        } else {
            Err(format!("issued {skew} s from now, beyond the allowed clock skew"))
        }
    });
    id_token.claims(&verifier, nonce).cloned()
}

/// What the token endpoint said, without anything secret (it echoes no secret).
pub(super) fn token_error<E: std::error::Error>(
    e: &openidconnect::RequestTokenError<
        E,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> String {
    match e {
        openidconnect::RequestTokenError::ServerResponse(r) => format!("the token endpoint refused: {}", r.error()),
        openidconnect::RequestTokenError::Request(e) => format!("the token endpoint could not be reached: {e}"),
        openidconnect::RequestTokenError::Parse(_, _) => "the token response is not valid".into(),
        openidconnect::RequestTokenError::Other(m) => m.clone(),
    }
}
