//! The built-in message templates, in English, Russian and Simplified Chinese, rendered by
//! minijinja (a sandboxed engine: no file or network access; a fuel limit bounds the work of a
//! template). Variables: `name` (the user's display name), `tenant` (the tenant's display name),
//! `link` (invitation and reset messages), `expires` (when the link stops working, UTC),
//! `time` (when the event happened, UTC).

use std::sync::LazyLock;

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
];

/// Work a template may do (minijinja fuel); far above what any built-in one needs.
const FUEL: u64 = 50_000;

fn name(kind: NotificationKind, locale: Locale, part: &str) -> String {
    format!("{}.{}.{part}", kind.as_str(), locale.tag())
}

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // Plain-text messages: no HTML escaping; a missing variable is an error, not an empty string.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    for (kind, locale, subject, body) in BUILT_IN {
        env.add_template(Box::leak(name(*kind, *locale, "subject").into_boxed_str()), subject)
            .expect("built-in subject template parses");
        env.add_template(Box::leak(name(*kind, *locale, "body").into_boxed_str()), body)
            .expect("built-in body template parses");
    }
    env
});

/// A rendered message.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub body: String,
}

/// Renders the built-in template of `kind` in `locale`.
pub fn render(kind: NotificationKind, locale: Locale, vars: &serde_json::Value) -> Result<Rendered, String> {
    let part = |p: &str| {
        ENV.get_template(&name(kind, locale, p))
            .and_then(|t| t.render(vars))
            .map_err(|e| format!("template {}: {e}", name(kind, locale, p)))
    };
    // A subject is one line, whatever a variable holds (no header injection).
    let subject = part("subject")?.replace(['\r', '\n'], " ");
    Ok(Rendered { subject, body: part("body")? })
}

/// Every kind has a template in every language (checked by a unit test and at start).
pub fn complete() -> bool {
    NotificationKind::iter().all(|k| Locale::iter().all(|l| BUILT_IN.iter().any(|(kk, ll, ..)| *kk == k && *ll == l)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> serde_json::Value {
        serde_json::json!({
            "name": "Анна", "tenant": "Acme", "link": "https://acme.example/x?token=T",
            "expires": "2026-12-13 10:00", "time": "2026-12-06 10:00",
        })
    }

    #[test]
    fn every_kind_renders_in_every_language() {
        assert!(complete());
        for k in NotificationKind::iter() {
            for l in Locale::iter() {
                let r = render(k, l, &vars()).unwrap();
                assert!(r.subject.contains("Acme") && r.body.contains("Анна"), "{k:?} {l:?}: {r:?}");
                if k.carries_token() {
                    assert!(r.body.contains("https://acme.example/x?token=T"), "{k:?} {l:?} has its link");
                }
            }
        }
        assert!(render(Invitation, Ru, &vars()).unwrap().body.contains("Здравствуйте"));
        assert!(render(Invitation, ZhCn, &vars()).unwrap().body.contains("您好"));
    }

    #[test]
    fn a_variable_cannot_break_the_subject_line_and_a_missing_one_is_an_error() {
        let mut v = vars();
        v["tenant"] = "Acme\r\nBcc: evil@example.com".into();
        let r = render(Invitation, En, &v).unwrap();
        assert!(!r.subject.contains('\n') && !r.subject.contains('\r'));
        assert!(render(Invitation, En, &serde_json::json!({"name": "x"})).is_err());
    }
}
