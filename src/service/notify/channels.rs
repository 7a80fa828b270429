//! The two channels a rendered message leaves by: e-mail over SMTP (lettre, a pooled transport),
//! and a webhook to the platform's notification service, signed per the Standard Webhooks
//! specification (<https://www.standardwebhooks.com>): headers `webhook-id` (the notification id,
//! stable across retries, so a receiver drops repeats), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (`v1,` + base64 of HMAC-SHA256 over `id.timestamp.body` under the secret).

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use hmac::{Hmac, Mac};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::templates::Rendered;

/// The e-mail channel.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl Mailer {
    /// `smtp://` (STARTTLS whenever the server offers it) or `smtps://` (implicit TLS), with
    /// optional credentials in the URL.
    pub fn new(url: &SecretString, from: &str, timeout: Duration) -> anyhow::Result<Mailer> {
        let mut url =
            url::Url::parse(url.expose_secret()).map_err(|e| anyhow::anyhow!("smtp_url is not a URL: {e}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "smtp" | "smtps"),
            "smtp_url must start with smtp:// (STARTTLS when offered) or smtps:// (implicit TLS)"
        );
        if url.scheme() == "smtp" && !url.query_pairs().any(|(k, _)| k == "tls") {
            // STARTTLS whenever the server offers it (lettre's default for smtp:// is none).
            url.query_pairs_mut().append_pair("tls", "opportunistic");
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.as_str())
            .map_err(|e| anyhow::anyhow!("smtp_url: {e}"))?
            .timeout(Some(timeout))
            // As many connections as messages a replica sends at once (a batch).
            .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(2 * super::SMTP_CONNECTIONS))
            .build();
        let from: Mailbox = from.parse().map_err(|e| anyhow::anyhow!("smtp_from is not an address: {e}"))?;
        Ok(Mailer { transport, from, timeout })
    }

    pub async fn send(&self, id: &str, to: &str, message: Rendered) -> Result<(), String> {
        let to: Mailbox = to.parse().map_err(|e| format!("the recipient is not an address: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.subject)
            .message_id(Some(format!("<{id}@crm-iam>")))
            .header(ContentType::TEXT_PLAIN)
            .body(message.body)
            .map_err(|e| format!("building the message: {e}"))?;
        // The transport's own timeout bounds each command; this bounds the whole conversation.
        match tokio::time::timeout(self.timeout * 2, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            // lettre's errors name the server's reply, never the message's content.
            Ok(Err(e)) => Err(format!("SMTP: {e}")),
            Err(_) => Err("SMTP: timed out".into()),
        }
    }
}

/// The webhook channel.
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    key: secrecy::SecretSlice<u8>,
}

impl Webhook {
    pub fn new(url: &SecretString, secret: Option<&SecretString>, timeout: Duration) -> anyhow::Result<Webhook> {
        let url = reqwest::Url::parse(url.expose_secret())
            .map_err(|e| anyhow::anyhow!("notification_webhook_url is not a URL: {e}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https") && url.host_str().is_some(),
            "notification_webhook_url must be an http:// or https:// URL"
        );
        let secret = secret.ok_or_else(|| {
            anyhow::anyhow!(
                "notification_webhook_url needs notification_webhook_secret (whsec_ + base64 of 24-64 bytes)"
            )
        })?;
        let key = B64
            .decode(secret.expose_secret().strip_prefix("whsec_").unwrap_or(secret.expose_secret()))
            .map_err(|_| anyhow::anyhow!("notification_webhook_secret must be whsec_ followed by base64"))?;
        anyhow::ensure!(
            (24..=64).contains(&key.len()),
            "notification_webhook_secret must encode 24 to 64 bytes (it has {})",
            key.len()
        );
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A receiver's redirect is not followed: the message goes where the operator said.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("crm-iam/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Webhook { client, url, key: key.into() })
    }

    /// `webhook-signature` of a payload (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`).
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose_secret()).expect("HMAC takes any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// POSTs the payload; any 2xx answer is a delivery. Errors name the status, never the
    /// payload or the receiver's answer.
    pub async fn send(&self, id: &str, payload: &serde_json::Value) -> Result<(), String> {
        let body = serde_json::to_vec(payload).map_err(|e| format!("encoding the payload: {e}"))?;
        let timestamp = chrono::Utc::now().timestamp();
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", self.signature(id, timestamp, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                format!("webhook: {what}")
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("webhook: the receiver answered HTTP {}", status.as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_as_the_specification_does() {
        let hook = Webhook::new(
            &SecretString::from("http://receiver.example/hook"),
            Some(&SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            hook.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_weak_or_missing_secrets() {
        let url = SecretString::from("https://receiver.example/hook");
        assert!(Webhook::new(&url, None, Duration::from_secs(1)).is_err());
        assert!(Webhook::new(&url, Some(&SecretString::from("whsec_c2hvcnQ=")), Duration::from_secs(1)).is_err());
        assert!(
            Webhook::new(&SecretString::from("ftp://x/"), Some(&SecretString::from("whsec_x")), Duration::from_secs(1))
                .is_err()
        );
    }
}
