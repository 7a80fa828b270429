//! Password hashing with argon2id (OWASP parameters: m = 19456 KiB, t = 2, p = 1; PHC strings).
//!
//! Hashing is CPU- and memory-heavy, so it never runs on the async workers: each hash runs on
//! tokio's blocking pool, and a semaphore bounds how many run at once (default: one per core), so
//! a login or import flood queues here instead of starving everything else or exhausting memory.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier, Version, password_hash::SaltString,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use tracing::Span;

use crate::domain::{Error, Result};

/// The bounded hashing pool.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    /// A hash of a random password, verified against when the user is unknown so that unknown
    /// users cost the same time as wrong passwords.
    dummy_hash: Arc<String>,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_now(password: &[u8]) -> Result<String> {
    let mut salt_bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| Error::internal(anyhow::anyhow!("argon2 salt encoding failed: {e}")))?;
    argon2()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(anyhow::anyhow!("argon2 hashing failed: {e}")))
}

impl Passwords {
    /// A pool running at most `parallelism` hashes at once.
    pub fn new(parallelism: usize) -> Passwords {
        let mut random = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
        let dummy_hash = hash_now(&random).expect("dummy hash");
        Passwords {
            permits: Arc::new(Semaphore::new(parallelism.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            dummy_hash: Arc::new(dummy_hash),
        }
    }

    /// Requests waiting for a hashing slot right now.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self.permits.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = permit.map_err(Error::internal)?;
        let span = Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(work)
        })
        .await
        .map_err(Error::internal)
    }

    /// Hashes a password into a PHC string.
    pub async fn hash(&self, password: SecretString) -> Result<String> {
        self.run(move || hash_now(password.expose_secret().as_bytes())).await?
    }

    /// Verifies a password against a stored PHC string; with no stored hash (unknown user,
    /// invited user) it verifies against a dummy hash and returns false, taking the same time.
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> Result<bool> {
        let dummy = self.dummy_hash.clone();
        self.run(move || {
            let (phc, real) = match &stored {
                Some(s) => (s.as_str(), true),
                None => (dummy.as_str(), false),
            };
            let Ok(parsed) = PasswordHash::new(phc) else {
                return false;
            };
            let ok = argon2().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok();
            ok && real
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_is_argon2id_owasp_and_verifies() {
        let p = Passwords::new(2);
        let h = p.hash(SecretString::from("correct horse battery")).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(p.verify(SecretString::from("correct horse battery"), Some(h.clone())).await.unwrap());
        assert!(!p.verify(SecretString::from("wrong"), Some(h)).await.unwrap());
        assert!(!p.verify(SecretString::from("anything"), None).await.unwrap());
    }
}
