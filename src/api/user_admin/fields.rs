//! UserAdmin's request fields: profiles and patches validated field by field.

use super::requests::NAME_MAX;
use crate::{
    domain::{
        Violations,
        user::{Profile, UserPatch, derived_display_name},
        validate,
    },
    proto::v1 as pb,
};

/// Validates the profile fields of a new user, recording every bad field.
pub(super) fn profile(v: &mut Violations, u: &pb::User) -> Option<Profile> {
    let email = v.check("user.email", validate::email(&u.email));
    let given_name = v.check("user.given_name", validate::text(&u.given_name, NAME_MAX));
    let family_name = v.check("user.family_name", validate::text(&u.family_name, NAME_MAX));
    let display_name = v.check("user.display_name", validate::text(&u.display_name, 200));
    let phone = v.check("user.phone", validate::phone(&u.phone));
    let position = v.check("user.position", validate::text(&u.position, NAME_MAX));
    let employee_number = v.check("user.employee_number", validate::employee_number(&u.employee_number));
    let department_id = v.check("user.department_id", validate::optional_uuid(&u.department_id));
    let hire_date = v.check("user.hire_date", validate::date(&u.hire_date));
    let attributes = v.check("user.attributes", validate::attributes(&u.attributes));
    let locale = v.check("user.locale", validate::locale(&u.locale));
    let username = v.check("user.username", validate::username(&u.username));
    let external_id = v.check("user.external_id", validate::external_id(&u.external_id));
    let (email, email_key) = email?;
    let (given_name, family_name) = (given_name?, family_name?);
    let display_name =
        display_name.map(|d| if d.is_empty() { derived_display_name(&given_name, &family_name) } else { d })?;
    Some(Profile {
        email,
        email_key,
        given_name,
        family_name,
        display_name,
        phone: phone?,
        position: position?,
        employee_number: employee_number?,
        department_id: department_id?,
        hire_date: hire_date?,
        attributes: attributes?,
        locale: locale?,
        username: username?,
        external_id: external_id?,
    })
}

/// What an UpdateUser mask may name: the profile.
pub(super) const USER_MASK: &[&str] = crate::domain::user::PROFILE_FIELDS;

pub(super) fn user_patch(v: &mut Violations, u: &pb::User, paths: &[String]) -> UserPatch {
    let has = |p: &str| paths.iter().any(|x| x == p);
    let mut p = UserPatch::default();
    if has("email") {
        p.email = v.check("user.email", validate::email(&u.email));
    }
    if has("given_name") {
        p.given_name = v.check("user.given_name", validate::text(&u.given_name, NAME_MAX));
    }
    if has("family_name") {
        p.family_name = v.check("user.family_name", validate::text(&u.family_name, NAME_MAX));
    }
    if has("display_name") {
        p.display_name = v.check("user.display_name", validate::text(&u.display_name, 200));
    }
    if has("phone") {
        p.phone = v.check("user.phone", validate::phone(&u.phone));
    }
    if has("position") {
        p.position = v.check("user.position", validate::text(&u.position, NAME_MAX));
    }
    if has("employee_number") {
        p.employee_number = v.check("user.employee_number", validate::employee_number(&u.employee_number));
    }
    if has("department_id") {
        p.department_id = v.check("user.department_id", validate::optional_uuid(&u.department_id));
    }
    if has("hire_date") {
        p.hire_date = v.check("user.hire_date", validate::date(&u.hire_date));
    }
    if has("attributes") {
        p.attributes = v.check("user.attributes", validate::attributes(&u.attributes));
    }
    if has("locale") {
        p.locale = v.check("user.locale", validate::locale(&u.locale));
    }
    if has("username") {
        p.username = v.check("user.username", validate::username(&u.username));
    }
    if has("external_id") {
        p.external_id = v.check("user.external_id", validate::external_id(&u.external_id));
    }
    p
}
