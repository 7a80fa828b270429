//! Identity providers (TenantAdmin.*IdentityProvider*) and single sign-on (Auth.BeginSso /
//! CompleteSso): requests checked field by field, results converted.

use secrecy::SecretString;

use super::{convert, tenant_field, uuid_field};
use crate::{
    domain::{Error, Violations},
    proto::v1 as pb,
    service::{
        scim,
        sso::{
            BeginSso, ClaimMapping, CompleteSso, CreateIdentityProvider, GroupRole, IdentityProvider,
            IdentityProviderRef, ListIdentityProviders, ProviderConfig,
        },
    },
};

pub fn to_proto(p: IdentityProvider) -> pb::IdentityProvider {
    let c = p.config;
    pb::IdentityProvider {
        name: p.name,
        issuer: p.issuer,
        client_id: p.client_id,
        client_secret: String::new(),
        scopes: c.scopes,
        allowed_email_domains: c.allowed_email_domains,
        redirect_uris: c.redirect_uris,
        jit_provisioning: p.jit_provisioning,
        group_role_mappings: c
            .group_role_mappings
            .into_iter()
            .map(|m| pb::GroupRoleMapping { group: m.group, role_id: m.role_id.to_string() })
            .collect(),
        sso_required: p.sso_required,
        break_glass_user_ids: c.break_glass_user_ids.iter().map(ToString::to_string).collect(),
        claim_mapping: Some(pb::ClaimMapping {
            email: c.claims.email,
            given_name: c.claims.given_name,
            family_name: c.claims.family_name,
            phone: c.claims.phone,
            position: c.claims.position,
            department: c.claims.department,
            groups: c.claims.groups,
        }),
        create_time: Some(convert::ts(p.create_time)),
        created_by: p.created_by,
    }
}

/// An absolute http(s) URL without a fragment (redirect URIs, RFC 6749 §3.1.2).
fn redirect_uri(v: &mut Violations, field: &str, s: &str) {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.fragment().is_none() && u.host_str().is_some() => {}
        _ => v.add(field, "must be an absolute http(s) URL without a fragment"),
    }
}

fn claim_name(v: &mut Violations, field: &str, given: &str, default: &str) -> String {
    if given.is_empty() {
        return default.to_owned();
    }
    if given.len() > 256 || given.chars().any(char::is_control) {
        v.add(field, "must be a claim name of at most 256 bytes");
    }
    given.to_owned()
}

fn claims(v: &mut Violations, m: Option<&pb::ClaimMapping>) -> ClaimMapping {
    let d = ClaimMapping::default();
    let m = m.cloned().unwrap_or_default();
    let f = "identity_provider.claim_mapping.";
    ClaimMapping {
        email: claim_name(v, &format!("{f}email"), &m.email, &d.email),
        given_name: claim_name(v, &format!("{f}given_name"), &m.given_name, &d.given_name),
        family_name: claim_name(v, &format!("{f}family_name"), &m.family_name, &d.family_name),
        phone: claim_name(v, &format!("{f}phone"), &m.phone, &d.phone),
        position: claim_name(v, &format!("{f}position"), &m.position, &d.position),
        department: claim_name(v, &format!("{f}department"), &m.department, &d.department),
        groups: claim_name(v, &format!("{f}groups"), &m.groups, &d.groups),
    }
}

impl TryFrom<pb::CreateIdentityProviderRequest> for CreateIdentityProvider {
    type Error = Error;

    fn try_from(msg: pb::CreateIdentityProviderRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &msg.tenant_id);
        let p = msg.identity_provider.unwrap_or_default();
        let f = |name: &str| format!("identity_provider.{name}");
        scim::check_name(&p.name, &f("name"), &mut v);
        if p.issuer.is_empty() {
            v.add(f("issuer"), "is required");
        }
        if p.client_id.trim().is_empty() {
            v.add(f("client_id"), "is required");
        }
        if p.client_secret.is_empty() {
            v.add(f("client_secret"), "is required");
        }
        for (i, s) in p.scopes.iter().enumerate() {
            if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\') {
                v.add(format!("identity_provider.scopes[{i}]"), "must be 1 to 64 printable characters");
            }
        }
        let mut domains = Vec::new();
        if p.allowed_email_domains.is_empty() {
            v.add(f("allowed_email_domains"), "is required: the domains whose addresses the provider may sign in");
        }
        for (i, d) in p.allowed_email_domains.iter().enumerate() {
            let d = d.trim().to_lowercase();
            let ok = d.contains('.')
                && d.len() <= 253
                && d.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            if !ok {
                v.add(format!("identity_provider.allowed_email_domains[{i}]"), "must be a domain such as example.com");
            }
            domains.push(d);
        }
        if p.redirect_uris.is_empty() {
            v.add(f("redirect_uris"), "is required: where the provider may send the browser back");
        }
        for (i, u) in p.redirect_uris.iter().enumerate() {
            redirect_uri(&mut v, &format!("identity_provider.redirect_uris[{i}]"), u);
        }
        let mut mappings = Vec::new();
        for (i, m) in p.group_role_mappings.iter().enumerate() {
            if m.group.is_empty() {
                v.add(format!("identity_provider.group_role_mappings[{i}].group"), "is required");
            }
            let role_id =
                uuid_field(&mut v, &format!("identity_provider.group_role_mappings[{i}].role_id"), &m.role_id);
            mappings.push(GroupRole { group: m.group.clone(), role_id });
        }
        let break_glass = p
            .break_glass_user_ids
            .iter()
            .enumerate()
            .map(|(i, u)| uuid_field(&mut v, &format!("identity_provider.break_glass_user_ids[{i}]"), u))
            .collect();
        let claims = claims(&mut v, p.claim_mapping.as_ref());
        v.finish()?;
        Ok(CreateIdentityProvider {
            tenant_id,
            name: p.name,
            issuer: p.issuer,
            client_id: p.client_id.trim().to_owned(),
            client_secret: SecretString::from(p.client_secret),
            jit_provisioning: p.jit_provisioning,
            sso_required: p.sso_required,
            config: ProviderConfig {
                scopes: p.scopes,
                allowed_email_domains: domains,
                redirect_uris: p.redirect_uris,
                group_role_mappings: mappings,
                break_glass_user_ids: break_glass,
                claims,
            },
        })
    }
}

converts! {
    pb::ListIdentityProvidersRequest => ListIdentityProviders, |m| {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &m.tenant_id);
        v.finish()?;
        Ok(ListIdentityProviders { tenant_id })
    };
    pb::DeleteIdentityProviderRequest => IdentityProviderRef, |m| {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &m.tenant_id);
        scim::check_name(&m.name, "name", &mut v);
        v.finish()?;
        Ok(IdentityProviderRef { tenant_id, name: m.name })
    };
    pb::BeginSsoRequest => BeginSso, |m| {
        let mut v = Violations::default();
        let tenant_id = tenant_field(&mut v, &m.tenant_id);
        scim::check_name(&m.connection, "connection", &mut v);
        if m.redirect_uri.is_empty() {
            v.add("redirect_uri", "is required");
        }
        v.finish()?;
        Ok(BeginSso { tenant_id, connection: m.connection, redirect_uri: m.redirect_uri })
    };
    pb::CompleteSsoRequest => CompleteSso, |m| {
        let mut v = Violations::default();
        if m.state.is_empty() {
            v.add("state", "is required");
        }
        if m.code.is_empty() {
            v.add("code", "is required");
        }
        if m.browser_binding.is_empty() {
            v.add("browser_binding", "is required: the browser_binding BeginSso answered");
        }
        v.finish()?;
        Ok(CompleteSso { state: m.state, code: m.code, iss: m.iss, browser_binding: m.browser_binding })
    };
}

impl From<crate::service::sso::SsoStart> for pb::BeginSsoResponse {
    fn from(s: crate::service::sso::SsoStart) -> Self {
        pb::BeginSsoResponse {
            authorization_url: s.authorization_url,
            state: s.state,
            browser_binding: s.browser_binding,
        }
    }
}
