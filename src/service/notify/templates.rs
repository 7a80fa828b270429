//! The message templates: built-in ones in English, Russian and Simplified Chinese, and a
//! tenant's own (NotificationAdmin.SetTemplate), rendered by minijinja, a sandboxed engine (no
//! file or network access: no loader is set, so `include`/`import` find nothing; a fuel limit
//! bounds the work of a template, and the output is bounded too). Variables: `name` (the
//! recipient's display name), `tenant` (the tenant's display name), `time` (when it happened,
//! UTC); token kinds add `link` and `expires`, `new_administrator` adds `admin`.

use minijinja::{Environment, UndefinedBehavior};
use strum::IntoEnumIterator;

use crate::domain::notification::{Locale, NotificationKind};

/// (kind, locale, subject, body)
type Template = (NotificationKind, Locale, &'static str, &'static str);

use Locale::{En, Ru, ZhCn};
use NotificationKind::*;

const BUILT_IN: &[Template] = &[
    (
        Invitation,
        En,
        "You are invited to {{ tenant }}",
        "Hello {{ name }},\n\nyou have been invited to {{ tenant }}. Set your password and sign in here:\n\n{{ link }}\n\nThe link works until {{ expires }} and only once.\nIf you did not expect this invitation, ignore this message.\n",
    ),
    (
        Invitation,
        Ru,
        "Приглашение в {{ tenant }}",
        "Здравствуйте, {{ name }}!\n\nВас пригласили в {{ tenant }}. Задайте пароль и войдите по ссылке:\n\n{{ link }}\n\nСсылка действует до {{ expires }} (UTC) и только один раз.\nЕсли вы не ждали приглашения, просто проигнорируйте это письмо.\n",
    ),
    (
        Invitation,
        ZhCn,
        "邀请您加入 {{ tenant }}",
        "{{ name }}，您好：\n\n您已被邀请加入 {{ tenant }}。请通过以下链接设置密码并登录：\n\n{{ link }}\n\n该链接在 {{ expires }}（UTC）之前有效，且只能使用一次。\n如果您没有预期收到此邀请，请忽略本邮件。\n",
    ),
    (
        InvitationReminder,
        En,
        "Reminder: your invitation to {{ tenant }}",
        "Hello {{ name }},\n\nyour invitation to {{ tenant }} is still waiting. Set your password and sign in here:\n\n{{ link }}\n\nThe link works until {{ expires }} and only once; earlier links no longer work.\n",
    ),
    (
        InvitationReminder,
        Ru,
        "Напоминание: приглашение в {{ tenant }}",
        "Здравствуйте, {{ name }}!\n\nВаше приглашение в {{ tenant }} всё ещё ждёт вас. Задайте пароль и войдите по ссылке:\n\n{{ link }}\n\nСсылка действует до {{ expires }} (UTC) и только один раз; прежние ссылки больше не работают.\n",
    ),
    (
        InvitationReminder,
        ZhCn,
        "提醒：您加入 {{ tenant }} 的邀请",
        "{{ name }}，您好：\n\n您加入 {{ tenant }} 的邀请仍然有效。请通过以下链接设置密码并登录：\n\n{{ link }}\n\n该链接在 {{ expires }}（UTC）之前有效，且只能使用一次；之前的链接已失效。\n",
    ),
    (
        PasswordReset,
        En,
        "Reset your {{ tenant }} password",
        "Hello {{ name }},\n\na password reset was requested for your {{ tenant }} account. Choose a new password here:\n\n{{ link }}\n\nThe link works until {{ expires }} and only once. If you did not ask for it, ignore this message: your password stays as it is.\n",
    ),
    (
        PasswordReset,
        Ru,
        "Сброс пароля {{ tenant }}",
        "Здравствуйте, {{ name }}!\n\nДля вашей учётной записи {{ tenant }} запрошен сброс пароля. Задайте новый пароль по ссылке:\n\n{{ link }}\n\nСсылка действует до {{ expires }} (UTC) и только один раз. Если вы не запрашивали сброс, проигнорируйте письмо: пароль останется прежним.\n",
    ),
    (
        PasswordReset,
        ZhCn,
        "重置您的 {{ tenant }} 密码",
        "{{ name }}，您好：\n\n您的 {{ tenant }} 账户收到了重置密码的请求。请通过以下链接设置新密码：\n\n{{ link }}\n\n该链接在 {{ expires }}（UTC）之前有效，且只能使用一次。如果这不是您本人的操作，请忽略本邮件，您的密码不会改变。\n",
    ),
    (
        PasswordChanged,
        En,
        "Your {{ tenant }} password was changed",
        "Hello {{ name }},\n\nthe password of your {{ tenant }} account was changed at {{ time }} (UTC), and your other sessions were ended.\nIf this was not you, contact your administrator at once.\n",
    ),
    (
        PasswordChanged,
        Ru,
        "Пароль {{ tenant }} изменён",
        "Здравствуйте, {{ name }}!\n\nПароль вашей учётной записи {{ tenant }} изменён {{ time }} (UTC), другие сеансы завершены.\nЕсли это были не вы, немедленно обратитесь к администратору.\n",
    ),
    (
        PasswordChanged,
        ZhCn,
        "您的 {{ tenant }} 密码已更改",
        "{{ name }}，您好：\n\n您的 {{ tenant }} 账户密码已于 {{ time }}（UTC）更改，其他会话已结束。\n如果这不是您本人的操作，请立即联系管理员。\n",
    ),
    (
        AccountLocked,
        En,
        "Your {{ tenant }} account is locked",
        "Hello {{ name }},\n\nafter several failed sign-in attempts your {{ tenant }} account was locked at {{ time }} (UTC) for a while.\nIf this was not you, someone may be guessing your password: contact your administrator.\n",
    ),
    (
        AccountLocked,
        Ru,
        "Учётная запись {{ tenant }} заблокирована",
        "Здравствуйте, {{ name }}!\n\nПосле нескольких неудачных попыток входа ваша учётная запись {{ tenant }} временно заблокирована ({{ time }} UTC).\nЕсли это были не вы, возможно, кто-то подбирает ваш пароль: обратитесь к администратору.\n",
    ),
    (
        AccountLocked,
        ZhCn,
        "您的 {{ tenant }} 账户已被锁定",
        "{{ name }}，您好：\n\n由于多次登录失败，您的 {{ tenant }} 账户已于 {{ time }}（UTC）被暂时锁定。\n如果这不是您本人的操作，可能有人在尝试猜测您的密码，请联系管理员。\n",
    ),
    (
        MfaEnabled,
        En,
        "Two-step sign-in is on for your {{ tenant }} account",
        "Hello {{ name }},\n\na second factor (an authenticator app) was enabled for your {{ tenant }} account at {{ time }} (UTC).\nIf this was not you, contact your administrator at once.\n",
    ),
    (
        MfaEnabled,
        Ru,
        "Двухэтапный вход включён для {{ tenant }}",
        "Здравствуйте, {{ name }}!\n\nДля вашей учётной записи {{ tenant }} включён второй фактор (приложение-аутентификатор), {{ time }} (UTC).\nЕсли это были не вы, немедленно обратитесь к администратору.\n",
    ),
    (
        MfaEnabled,
        ZhCn,
        "您的 {{ tenant }} 账户已开启两步验证",
        "{{ name }}，您好：\n\n您的 {{ tenant }} 账户已于 {{ time }}（UTC）启用第二重验证（身份验证器应用）。\n如果这不是您本人的操作，请立即联系管理员。\n",
    ),
    (
        MfaDisabled,
        En,
        "Two-step sign-in was removed from your {{ tenant }} account",
        "Hello {{ name }},\n\nthe second factor of your {{ tenant }} account was removed at {{ time }} (UTC).\nIf this was not you, contact your administrator at once.\n",
    ),
    (
        MfaDisabled,
        Ru,
        "Двухэтапный вход отключён для {{ tenant }}",
        "Здравствуйте, {{ name }}!\n\nВторой фактор вашей учётной записи {{ tenant }} отключён {{ time }} (UTC).\nЕсли это были не вы, немедленно обратитесь к администратору.\n",
    ),
    (
        MfaDisabled,
        ZhCn,
        "您的 {{ tenant }} 账户已关闭两步验证",
        "{{ name }}，您好：\n\n您的 {{ tenant }} 账户的第二重验证已于 {{ time }}（UTC）移除。\n如果这不是您本人的操作，请立即联系管理员。\n",
    ),
    (
        NewAdministrator,
        En,
        "{{ admin }} is now an administrator of {{ tenant }}",
        "Hello {{ name }},\n\n{{ admin }} was given the administrator role in {{ tenant }} at {{ time }} (UTC).\nIf you did not expect this, review the administrators of {{ tenant }} at once.\n",
    ),
    (
        NewAdministrator,
        Ru,
        "{{ admin }} теперь администратор {{ tenant }}",
        "Здравствуйте, {{ name }}!\n\n{{ admin }} получил(а) роль администратора в {{ tenant }} ({{ time }} UTC).\nЕсли вы этого не ожидали, немедленно проверьте список администраторов {{ tenant }}.\n",
    ),
    (
        NewAdministrator,
        ZhCn,
        "{{ admin }} 已成为 {{ tenant }} 的管理员",
        "{{ name }}，您好：\n\n{{ admin }} 已于 {{ time }}（UTC）被授予 {{ tenant }} 的管理员角色。\n如果这不在您的预期之中，请立即检查 {{ tenant }} 的管理员列表。\n",
    ),
];

/// Work a template may do (minijinja fuel); far above what any built-in one needs.
const FUEL: u64 = 50_000;
/// Longest subject and body a tenant may write, in characters.
pub const MAX_SUBJECT: usize = 200;
pub const MAX_BODY: usize = 20_000;
/// Longest rendered body (a loop cannot make a message of megabytes).
const MAX_RENDERED: usize = 100_000;

/// A rendered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub body: String,
}

/// The built-in subject and body of `kind` in `locale`.
pub fn builtin(kind: NotificationKind, locale: Locale) -> (&'static str, &'static str) {
    BUILT_IN
        .iter()
        .find(|(k, l, ..)| *k == kind && *l == locale)
        .map(|(.., subject, body)| (*subject, *body))
        .expect("every kind has a template in every language (checked at start)")
}

/// The variables the templates of `kind` may use.
pub fn variables(kind: NotificationKind) -> &'static [&'static str] {
    match kind {
        _ if kind.carries_token() => &["name", "tenant", "time", "link", "expires"],
        NewAdministrator => &["name", "tenant", "time", "admin"],
        _ => &["name", "tenant", "time"],
    }
}

fn sandbox() -> Environment<'static> {
    let mut env = Environment::new();
    // Plain-text messages: no HTML escaping; a missing variable is an error, not an empty string.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env
}

/// Renders a subject and body (a tenant's own, or the built-in one).
pub fn render(subject: &str, body: &str, vars: &serde_json::Value) -> Result<Rendered, String> {
    let env = sandbox();
    let part = |what: &str, source: &str| {
        let out = env.render_str(source, vars).map_err(|e| format!("the {what} template: {}", describe(&e)))?;
        if out.len() > MAX_RENDERED {
            return Err(format!("the {what} template renders more than {MAX_RENDERED} bytes"));
        }
        Ok(out)
    };
    // A subject is one line, whatever a variable holds (no header injection).
    let subject = part("subject", subject)?.replace(['\r', '\n'], " ").trim().to_owned();
    Ok(Rendered { subject, body: part("body", body)? })
}

/// minijinja's description of an error, without the template's source.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.detail().map(|d| format!("{} ({d})", e.kind())).unwrap_or_else(|| e.kind().to_string());
    if let Some(line) = e.line() {
        s.push_str(&format!(", line {line}"));
    }
    s
}

/// Checks a tenant's subject and body by rendering them with `sample` variables (those of the
/// kind): what is wrong, by part (`subject`, `body`).
pub fn check(
    kind: NotificationKind,
    subject: &str,
    body: &str,
    sample: &serde_json::Value,
) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if subject.trim().is_empty() {
        problems.push(("subject", "must not be empty".to_owned()));
    } else if subject.chars().count() > MAX_SUBJECT {
        problems.push(("subject", format!("must be at most {MAX_SUBJECT} characters")));
    } else if subject.contains(['\r', '\n']) {
        problems.push(("subject", "must be one line".to_owned()));
    }
    if body.trim().is_empty() {
        problems.push(("body", "must not be empty".to_owned()));
    } else if body.chars().count() > MAX_BODY {
        problems.push(("body", format!("must be at most {MAX_BODY} characters")));
    }
    if !problems.is_empty() {
        return problems;
    }
    let known = variables(kind).join(", ");
    let env = sandbox();
    for (part, source) in [("subject", subject), ("body", body)] {
        match env.render_str(source, sample) {
            Err(e) if e.kind() == minijinja::ErrorKind::UndefinedError => problems.push((
                part,
                format!(
                    "uses a variable {} templates do not have ({}); they have: {known}",
                    kind.as_str(),
                    describe(&e)
                ),
            )),
            Err(e) => problems.push((part, format!("does not render: {}", describe(&e)))),
            Ok(out) if out.len() > MAX_RENDERED => {
                problems.push((part, format!("renders more than {MAX_RENDERED} bytes")));
            }
            Ok(out) => {
                let link = sample.get("link").and_then(|l| l.as_str());
                if part == "body" && kind.carries_token() && link.is_some_and(|l| !out.contains(l)) {
                    problems.push((part, "must contain {{ link }}: the message is useless without it".to_owned()));
                }
            }
        }
    }
    problems
}

/// Every kind has a template in every language (checked by a unit test and at start), and each
/// built-in one passes the checks a tenant's must pass.
pub fn complete() -> bool {
    NotificationKind::iter().all(|k| Locale::iter().all(|l| BUILT_IN.iter().any(|(kk, ll, ..)| *kk == k && *ll == l)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> serde_json::Value {
        serde_json::json!({
            "name": "Анна", "tenant": "Acme", "link": "https://acme.example/x?token=T",
            "expires": "2026-12-13 10:00", "time": "2026-12-06 10:00", "admin": "Bob",
        })
    }

    fn vars_of(kind: NotificationKind) -> serde_json::Value {
        let all = vars();
        variables(kind).iter().map(|v| (v.to_string(), all[v].clone())).collect::<serde_json::Map<_, _>>().into()
    }

    fn render_builtin(k: NotificationKind, l: Locale, vars: &serde_json::Value) -> Result<Rendered, String> {
        let (subject, body) = builtin(k, l);
        render(subject, body, vars)
    }

    #[test]
    fn every_kind_renders_in_every_language() {
        assert!(complete());
        for k in NotificationKind::iter() {
            for l in Locale::iter() {
                let r = render_builtin(k, l, &vars_of(k)).unwrap();
                let (subject, body) = builtin(k, l);
                assert_eq!(check(k, subject, body, &vars_of(k)), [], "{k:?} {l:?} passes the checks of a tenant's own");
                assert!(r.subject.contains("Acme") && r.body.contains("Анна"), "{k:?} {l:?}: {r:?}");
                if k.carries_token() {
                    assert!(r.body.contains("https://acme.example/x?token=T"), "{k:?} {l:?} has its link");
                }
            }
        }
        assert!(render_builtin(Invitation, Ru, &vars()).unwrap().body.contains("Здравствуйте"));
        assert!(render_builtin(Invitation, ZhCn, &vars()).unwrap().body.contains("您好"));
    }

    #[test]
    fn a_variable_cannot_break_the_subject_line_and_a_missing_one_is_an_error() {
        let mut v = vars();
        v["tenant"] = "Acme\r\nBcc: evil@example.com".into();
        let r = render_builtin(Invitation, En, &v).unwrap();
        assert!(!r.subject.contains('\n') && !r.subject.contains('\r'));
        assert!(render_builtin(Invitation, En, &serde_json::json!({"name": "x"})).is_err());
    }

    #[test]
    fn a_tenants_template_is_checked_before_it_is_saved() {
        let v = vars_of(Invitation);
        let ok = |s: &str, b: &str| check(Invitation, s, b, &v);
        assert_eq!(ok("Welcome to {{ tenant }}", "Hi {{ name }}: {{ link }}"), []);
        let part = |p: Vec<(&'static str, String)>| p.into_iter().map(|(part, _)| part).collect::<Vec<_>>();
        assert_eq!(part(ok("Welcome {{ tenant", "{{ link }}")), ["subject"], "syntax error");
        assert_eq!(part(ok("Welcome", "{{ link }} {{ password }}")), ["body"], "unknown variable");
        assert_eq!(part(ok("Welcome", "Hi {{ name }}")), ["body"], "no link");
        assert_eq!(part(ok("", "")), ["subject", "body"]);
        assert_eq!(part(ok("a\nBcc: x@example.com", "{{ link }}")), ["subject"]);
        assert_eq!(part(check(PasswordChanged, "x", "{{ link }}", &vars_of(PasswordChanged))), ["body"]);
        // Work is bounded: a loop of a million iterations runs out of fuel.
        assert_eq!(
            part(ok("x", "{{ link }}{% for i in range(1000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}")),
            ["body"]
        );
        // No files: there is no loader.
        assert_eq!(part(ok("x", "{{ link }}{% include '/etc/passwd' %}")), ["body"]);
        let r = render("Hi {{ name }}", "{{ link }}", &v).unwrap();
        assert_eq!(r, Rendered { subject: "Hi Анна".into(), body: "https://acme.example/x?token=T".into() });
    }
}
