//! Field checks shared by every request. Each returns the normalised value, or a description of
//! what is wrong that is safe to send back (it never echoes secrets).

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use uuid::Uuid;

pub type Check<T> = Result<T, String>;

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Free text of at most `max` characters, trimmed, without control characters.
pub fn text(s: &str, max: usize) -> Check<String> {
    let s = s.trim();
    if s.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if has_control(s) {
        return Err("must not contain control characters".into());
    }
    Ok(s.to_owned())
}

/// Like [`text`], but must not be empty.
pub fn required_text(s: &str, max: usize) -> Check<String> {
    let s = text(s, max)?;
    if s.is_empty() {
        return Err("is required".into());
    }
    Ok(s)
}

/// Tenant slug: `[a-z0-9-]{3,63}`, starting and ending with a letter or digit.
pub fn tenant_id(s: &str) -> Check<String> {
    if s.is_empty() {
        return Err("is required".into());
    }
    let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !(3..=63).contains(&s.len()) || !ok_chars || s.starts_with('-') || s.ends_with('-') {
        return Err("must be 3 to 63 characters from [a-z0-9-], starting and ending with a letter or digit".into());
    }
    Ok(s.to_owned())
}

/// A server-made id.
pub fn uuid(s: &str) -> Check<Uuid> {
    if s.is_empty() {
        return Err("is required".into());
    }
    Uuid::parse_str(s).map_err(|_| "must be a UUID".to_string())
}

/// An optional server-made id: empty means none.
pub fn optional_uuid(s: &str) -> Check<Option<Uuid>> {
    if s.is_empty() { Ok(None) } else { uuid(s).map(Some) }
}

/// An email address (RFC 5322 syntax, checked by the `email_address` crate). Returns the address
/// as given (trimmed) and the lower-cased key used for the case-insensitive uniqueness.
pub fn email(s: &str) -> Check<(String, String)> {
    let s = s.trim();
    if s.is_empty() {
        return Err("is required".into());
    }
    if s.len() > 254 {
        return Err("must be at most 254 characters".into());
    }
    let parsed: email_address::EmailAddress =
        s.parse().map_err(|_| "must be a valid email address such as name@example.com".to_string())?;
    // Reject display-name forms ("Ann <ann@x.org>"): the field holds the bare address only.
    if parsed.email() != s || !parsed.domain().contains('.') {
        return Err("must be a valid email address such as name@example.com".into());
    }
    Ok((s.to_owned(), s.to_lowercase()))
}

/// What an e-mail key looks like: every character outside ASCII is replaced by its Unicode UTS #39
/// confusable skeleton (`unicode-security`, the tables rustc's confusable lints use) after NFKC, so
/// `аnn@acme.example` (Cyrillic а), `ａnn@acme.example` (full-width) and `ann@acme.example` share
/// one skeleton and collide as duplicates. ASCII characters stay themselves: `user1@` and `userl@`
/// were always different addresses of different people.
pub fn email_skeleton(email_key: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut out = String::with_capacity(email_key.len());
    for c in email_key.nfkc().flat_map(char::to_lowercase) {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            out.extend(unicode_security::confusable_detection::skeleton(c.encode_utf8(&mut buf)));
        }
    }
    out.to_lowercase()
}

/// A phone number with a country code, normalised to E.164 (`+14155550123`) by the `phonenumber`
/// crate (libphonenumber's metadata), which also checks that the number is valid for its region.
pub fn phone(s: &str) -> Check<Option<String>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > 32 {
        return Err("must be a phone number in E.164 form such as +14155550123".into());
    }
    let number = phonenumber::parse(None, s)
        .map_err(|_| "must be a phone number with country code, in E.164 form such as +14155550123".to_string())?;
    if !phonenumber::is_valid(&number) {
        return Err("is not a valid phone number for its country code".into());
    }
    Ok(Some(number.format().mode(phonenumber::Mode::E164).to_string()))
}

/// Personnel number: 1 to 64 characters from letters, digits, `.`, `_`, `-`, `/`.
pub fn employee_number(s: &str) -> Check<Option<String>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let ok = s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if !ok {
        return Err("must be at most 64 characters from letters, digits, '.', '_', '-', '/'".into());
    }
    Ok(Some(s.to_owned()))
}

/// A login name: 1 to 256 characters without control characters or spaces at either end; its
/// uniqueness key is the NFKC form in lower case, so `Ann` and `ａｎｎ` are one name.
pub fn username(s: &str) -> Check<Option<(String, String)>> {
    use unicode_normalization::UnicodeNormalization;
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.chars().count() > 256 || s.chars().any(char::is_control) {
        return Err("must be at most 256 characters, without control characters".into());
    }
    let key: String = s.nfkc().flat_map(char::to_lowercase).collect();
    Ok(Some((s.to_owned(), key)))
}

/// An identity provider's id of a user: at most 256 characters without control characters.
pub fn external_id(s: &str) -> Check<Option<String>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.chars().count() > 256 || s.chars().any(char::is_control) {
        return Err("must be at most 256 characters, without control characters".into());
    }
    Ok(Some(s.to_owned()))
}

/// A calendar date `YYYY-MM-DD` between 1900 and 2100.
pub fn date(s: &str) -> Check<Option<NaiveDate>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let d =
        NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| "must be a date in the form YYYY-MM-DD".to_string())?;
    if !(1900..=2100).contains(&d.year()) {
        return Err("must be a date between 1900 and 2100".into());
    }
    Ok(Some(d))
}

/// Free-form attributes: at most 50 entries; keys `[a-z][a-z0-9_.-]{0,62}`; values at most 1024
/// characters without control characters.
pub fn attributes(map: &BTreeMap<String, String>) -> Check<BTreeMap<String, String>> {
    if map.len() > 50 {
        return Err("must have at most 50 entries".into());
    }
    for (k, v) in map {
        let key_ok = k.len() <= 63
            && k.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !key_ok {
            return Err(format!("key {k:?} must match [a-z][a-z0-9_.-]{{0,62}}"));
        }
        if v.chars().count() > 1024 || has_control(v) {
            return Err(format!("value of {k:?} must be at most 1024 characters without control characters"));
        }
    }
    Ok(map.clone())
}

/// Idempotency key: at most 128 printable ASCII characters; empty means none.
pub fn request_id(s: &str) -> Check<Option<String>> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be at most 128 printable ASCII characters without spaces".into());
    }
    Ok(Some(s.to_owned()))
}

/// A password against a policy. The description never contains the password.
pub fn password(password: &str, min_length: usize, email_key: Option<&str>) -> Check<()> {
    let chars = password.chars().count();
    if chars < min_length {
        return Err(format!("must be at least {min_length} characters"));
    }
    if password.len() > 1024 {
        return Err("must be at most 1024 bytes".into());
    }
    if password.trim().is_empty() {
        return Err("must not be blank".into());
    }
    if let Some(email) = email_key {
        let lower = password.to_lowercase();
        let local = email.split('@').next().unwrap_or(email);
        if lower == email || (local.len() >= 4 && lower.contains(local)) {
            return Err("must not contain the email address".into());
        }
    }
    // zxcvbn knows the common-password lists, keyboard patterns, dates and repeats; score 0–1
    // means it would fall to an online guessing attack. The email counts as a known word.
    let inputs: Vec<&str> = email_key.into_iter().flat_map(|e| [e, e.split('@').next().unwrap_or(e)]).collect();
    let estimate = zxcvbn::zxcvbn(password, &inputs);
    if (estimate.score() as u8) < 2 {
        let why = estimate.feedback().and_then(|f| f.warning()).map(|w| format!(" ({w})")).unwrap_or_default();
        return Err(format!("is too easy to guess{why}: use a longer passphrase of unrelated words"));
    }
    Ok(())
}

/// Page size: 0 means the default of 50; at most 1000.
pub fn page_size(n: i32) -> Check<u64> {
    match n {
        0 => Ok(50),
        1..=1000 => Ok(n as u64),
        _ => Err("must be between 0 and 1000 (0 means 50)".into()),
    }
}

/// A language for messages (BCP 47): empty, or one the built-in templates speak; stored in its
/// canonical form (`en`, `ru`, `zh-CN`).
pub fn locale(s: &str) -> Check<String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    super::notification::Locale::parse(s)
        .map(|l| l.tag().to_owned())
        .ok_or_else(|| "must be a BCP 47 language tag of a supported language: en, ru or zh-CN".to_string())
}

/// The base of the links in messages: empty, or an absolute `https://` URL (`http://` only for
/// `localhost` and loopback addresses) without credentials, query or fragment; stored without a
/// trailing `/`.
pub fn link_base(s: &str) -> Check<String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    if s.len() > 500 {
        return Err("must be at most 500 characters".into());
    }
    let u = url::Url::parse(s).map_err(|e| format!("must be an absolute URL ({e})"))?;
    let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match u.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("must be an https:// URL (http:// only for localhost)".into()),
    }
    if u.host_str().is_none_or(str::is_empty) || !u.username().is_empty() || u.password().is_some() {
        return Err("must name a host and no credentials".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(u.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alike_emails_share_a_skeleton() {
        let ann = email_skeleton("ann@acme.example");
        assert_eq!(ann, "ann@acme.example");
        for look_alike in
            ["\u{430}nn@acme.example", "\u{ff41}nn@acme.example", "ann@\u{430}cme.example", "\u{251}nn@acme.example"]
        {
            assert_eq!(email_skeleton(look_alike), ann, "{look_alike}");
        }
        assert_ne!(email_skeleton("user1@acme.example"), email_skeleton("userl@acme.example"));
        assert_ne!(email_skeleton("bob@acme.example"), ann);
        assert_eq!(
            email_skeleton("\u{442}\u{435}\u{441}\u{442}@acme.example"),
            email_skeleton("\u{442}\u{435}\u{441}\u{442}@acme.example")
        );
    }

    #[test]
    fn emails() {
        assert_eq!(
            email(" Ann.Lee@Example.com ").unwrap(),
            ("Ann.Lee@Example.com".into(), "ann.lee@example.com".into())
        );
        for bad in ["", "ann", "ann@", "@example.com", "Ann <ann@example.com>", "ann@localhost"] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones_normalise_to_e164() {
        assert_eq!(phone("+1 415 555 2671").unwrap().as_deref(), Some("+14155552671"));
        assert_eq!(phone("").unwrap(), None);
        assert!(phone("4155552671").is_err(), "no country code");
        assert!(phone("+1 000").is_err());
    }

    #[test]
    fn tenant_ids() {
        assert!(tenant_id("acme-corp").is_ok());
        for bad in ["ab", "-acme", "acme-", "Acme", "acme_corp", &"a".repeat(64)] {
            assert!(tenant_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(password("correct horse battery", 12, Some("ann@example.com")).is_ok());
        assert!(password("short", 12, None).is_err());
        assert!(password("ann@example.com", 12, Some("ann@example.com")).is_err());
        assert!(password("my-annlee-password", 12, Some("annlee@example.com")).is_err());
    }

    #[test]
    fn dates_and_numbers() {
        assert!(date("2024-02-29").unwrap().is_some());
        assert!(date("2023-02-29").is_err());
        assert!(date("1800-01-01").is_err());
        assert!(employee_number("E-001/7").unwrap().is_some());
        assert!(employee_number("E 001").is_err());
    }
}
