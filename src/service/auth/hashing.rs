//! Password hashing with argon2id (OWASP parameters: m = 19456 KiB, t = 2, p = 1; PHC strings).
//!
//! Hashing is CPU- and memory-heavy, so it never runs on the async workers: hashes run on a few
//! dedicated threads (default: one per core). Admission is bounded: at most `queue_limit` hashes
//! may wait or run; the next caller is refused at once (RESOURCE_EXHAUSTED, `OVERLOADED`, with a
//! `RetryInfo` of about the time the queue needs to drain) instead of queueing without bound, so a
//! login flood costs memory and latency only up to that limit. Callers take their admission
//! ([`Passwords::admit`]) before any other work of theirs (a login before reserving its attempt),
//! so a refused call has changed nothing. The threads run
//! at a lower CPU priority (nice 10): when the machine is busy, request serving (Access.Check on
//! the hot path of every CRM request) goes first and logins wait; when it is idle, hashing gets
//! every core.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
    mpsc::RecvTimeoutError,
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, SaltString},
};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tracing::Span;

use crate::domain::{Error, Kind, Reason, Result};

type Job = Box<dyn FnOnce() + Send>;

/// The bounded hashing pool.
#[derive(Clone)]
pub struct Passwords {
    /// Hashes admitted (waiting or running): the bound of the queue.
    admitted: Arc<Semaphore>,
    queue_limit: usize,
    parallelism: usize,
    /// Duration of the last hash, microseconds (for the RetryInfo of a refusal).
    last_hash_micros: Arc<std::sync::atomic::AtomicU64>,
    permits: Arc<Semaphore>,
    jobs: std::sync::mpsc::Sender<Job>,
    waiting: Arc<AtomicUsize>,
    /// A hash of a random password, verified against when the user is unknown so that unknown
    /// users cost the same time as wrong passwords.
    dummy_hash: Arc<String>,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` with a fresh random salt into a PHC string on the calling thread, reusing the
/// thread's argon2 memory (see [`BLOCKS`]).
pub fn hash_now(password: &[u8]) -> Result<String> {
    let mut salt_bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt_bytes);
    let a = argon2();
    let output = BLOCKS.with(|b| {
        let mut b = b.borrow_mut();
        working_memory(&mut b, a.params().block_count());
        Output::init_with(a.params().output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN), |out| {
            Ok(a.hash_password_into_with_memory(password, &salt_bytes, out, &mut b[..])?)
        })
    });
    let output = output.map_err(|e| Error::internal(anyhow::anyhow!("argon2 hashing failed: {e}")))?;
    phc(a.params(), &salt_bytes, output)
}

/// The PHC string of an argon2id (v19) output.
fn phc(params: &Params, salt: &[u8], output: Output) -> Result<String> {
    let fail = |e| Error::internal(anyhow::anyhow!("argon2 PHC encoding failed: {e}"));
    let salt = SaltString::encode_b64(salt).map_err(fail)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(fail)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// A caller's place in the hashing queue (see [`Passwords::admit`]): held until its hash is done.
pub struct HashTicket(#[allow(dead_code, reason = "held for its Drop")] tokio::sync::OwnedSemaphorePermit);

impl Passwords {
    /// A pool running at most `parallelism` hashes at once, with at most `queue_limit` admitted
    /// (0: 32 per hashing thread).
    pub fn new(parallelism: usize, queue_limit: usize) -> Passwords {
        let parallelism = parallelism.max(1);
        let queue_limit = if queue_limit == 0 { 32 * parallelism } else { queue_limit.max(parallelism) };
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..parallelism {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv_timeout(IDLE_RELEASE),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            // Idle: give the hashing memory back.
                            Err(RecvTimeoutError::Timeout) => BLOCKS.with(|b| *b.borrow_mut() = Vec::new()),
                            // Every sender is gone: the pool was dropped.
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                })
                .expect("spawn a hashing thread");
        }
        // Random salt and random "output": verifying against it costs a full hash with the same
        // parameters, and no password matches it; making it costs no hashing (nor 19 MiB at start).
        let (mut salt, mut output) = ([0u8; 16], [0u8; Params::DEFAULT_OUTPUT_LEN]);
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut output);
        let output = Output::new(&output).expect("a 32-byte argon2 output");
        let dummy_hash = phc(argon2().params(), &salt, output).expect("dummy hash");
        Passwords {
            admitted: Arc::new(Semaphore::new(queue_limit)),
            queue_limit,
            parallelism,
            last_hash_micros: Arc::new(std::sync::atomic::AtomicU64::new(50_000)),
            // One job queued behind each running one: a thread that finishes starts the next hash
            // at once instead of waiting for an async task to be scheduled and hand it over.
            permits: Arc::new(Semaphore::new(parallelism * 2)),
            jobs,
            waiting: Arc::new(AtomicUsize::new(0)),
            dummy_hash: Arc::new(dummy_hash),
        }
    }

    /// Requests waiting for a hashing slot right now.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A place in the hashing queue, or RESOURCE_EXHAUSTED (`OVERLOADED`) at once when it is full.
    pub fn admit(&self) -> Result<HashTicket> {
        match self.admitted.clone().try_acquire_owned() {
            Ok(permit) => Ok(HashTicket(permit)),
            Err(_) => {
                metrics::counter!("crm_iam_password_hash_refused_total").increment(1);
                let per_hash = self.last_hash_micros.load(Ordering::Relaxed).max(1_000);
                let drain_ms = per_hash * (self.queue_limit / self.parallelism) as u64 / 1_000;
                let mut e = Error::new(
                    Kind::ResourceExhausted,
                    Reason::Overloaded,
                    "too many password checks are waiting: retry shortly (with backoff)",
                );
                e.retry_after_ms = u32::try_from(drain_ms).unwrap_or(u32::MAX).clamp(100, 30_000);
                Err(e)
            }
        }
    }

    async fn run<T: Send + 'static>(&self, ticket: HashTicket, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let queued = std::time::Instant::now();
        let permit = self.permits.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = permit.map_err(Error::internal)?;
        let span = Span::current();
        let (done, result) = tokio::sync::oneshot::channel();
        let last_hash = self.last_hash_micros.clone();
        let job: Job = Box::new(move || {
            metrics::histogram!("crm_iam_password_hash_wait_seconds").record(queued.elapsed().as_secs_f64());
            let started = std::time::Instant::now();
            let out = span.in_scope(work);
            last_hash.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            // The places are free before the caller hears of the result.
            drop((permit, ticket));
            let _ = done.send(out);
        });
        self.jobs.send(job).map_err(|_| Error::internal(anyhow::anyhow!("the hashing threads are gone")))?;
        result.await.map_err(|_| Error::internal(anyhow::anyhow!("a hashing thread failed")))
    }

    /// Hashes a password into a PHC string (admission included: see [`Passwords::admit`]).
    pub async fn hash(&self, password: SecretString) -> Result<String> {
        let ticket = self.admit()?;
        self.hash_admitted(ticket, password).await
    }

    /// Hashes a password with a place in the queue taken earlier.
    pub async fn hash_admitted(&self, ticket: HashTicket, password: SecretString) -> Result<String> {
        self.run(ticket, move || hash_now(password.expose_secret().as_bytes())).await?
    }

    /// Verifies a password against a stored PHC string; with no stored hash (unknown user,
    /// invited user, a refused attempt) it verifies against a dummy hash and returns false,
    /// taking the same time. Needs a place in the queue taken with [`Passwords::admit`].
    pub async fn verify(&self, ticket: HashTicket, password: SecretString, stored: Option<String>) -> Result<bool> {
        let dummy = self.dummy_hash.clone();
        self.run(ticket, move || {
            let (phc, real) = match &stored {
                Some(s) => (s.as_str(), true),
                None => (dummy.as_str(), false),
            };
            verify_now(password.expose_secret().as_bytes(), phc) && real
        })
        .await
    }
}

/// A hashing thread keeps its argon2 memory (19 MiB) between hashes; after this long without
/// work it gives it back.
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(10);

thread_local! {
    /// The argon2 working memory of this thread, reused from hash to hash: allocating 19 MiB
    /// afresh for every verification costs the kernel about a tenth of the hash in page zeroing.
    static BLOCKS: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sizes the thread's argon2 memory to `blocks` blocks. A new allocation asks the kernel for
/// transparent huge pages (argon2 reads its memory at random: with 2 MiB pages instead of 4 KiB
/// ones a hash takes about 10% less time here); the rest of the heap does not use them.
fn working_memory(b: &mut Vec<Block>, blocks: usize) {
    if b.len() == blocks {
        return;
    }
    // Advice first, then the first touch: pages already faulted in stay small.
    *b = Vec::with_capacity(blocks);
    #[cfg(target_os = "linux")]
    {
        let page = 4096;
        let start = (b.as_mut_ptr() as usize).next_multiple_of(page);
        let end = (b.as_mut_ptr() as usize + blocks * std::mem::size_of::<Block>()) & !(page - 1);
        if end > start {
            // SAFETY: advice on whole pages inside this allocation; it changes no contents, and a
            // kernel without THP just refuses it.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    b.resize(blocks, Block::default());
}

/// Verifies `password` against a PHC string on the calling thread, reusing the thread's argon2
/// memory. The parameters come from the PHC string. Constant-time comparison of the outputs.
pub fn verify_now(password: &[u8], phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let (Ok(params), Ok(algorithm)) = (Params::try_from(&parsed), Algorithm::try_from(parsed.algorithm)) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let mut out = vec![0u8; expected.len()];
    let blocks = params.block_count();
    let hashed = BLOCKS.with(|b| {
        let mut b = b.borrow_mut();
        working_memory(&mut b, blocks);
        Argon2::new(algorithm, version, params).hash_password_into_with_memory(password, salt, &mut out, &mut b[..])
    });
    hashed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// Lowers the calling thread's CPU priority (Linux: nice is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread; failure only leaves the priority as is.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_is_argon2id_owasp_and_verifies() {
        let p = Passwords::new(2, 0);
        let h = p.hash(SecretString::from("correct horse battery")).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let verify = |pw: &str, stored: Option<String>| p.verify(p.admit().unwrap(), SecretString::from(pw), stored);
        assert!(verify("correct horse battery", Some(h.clone())).await.unwrap());
        assert!(!verify("wrong", Some(h)).await.unwrap());
        assert!(!verify("anything", None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_frees_with_the_tickets() {
        let p = Passwords::new(1, 2);
        let a = p.admit().unwrap();
        let _b = p.admit().unwrap();
        let e = p.admit().err().expect("a third is refused");
        assert_eq!((e.kind, e.reason), (Kind::ResourceExhausted, Reason::Overloaded));
        assert!(e.retry_after_ms >= 100);
        assert!(!p.verify(a, SecretString::from("x"), None).await.unwrap());
        p.admit().expect("the verified ticket's place is free again");
    }

    #[test]
    fn reused_memory_gives_the_same_answers() {
        let a = hash_now(b"first long password here").unwrap();
        let b = hash_now(b"second long password here").unwrap();
        for _ in 0..2 {
            assert!(verify_now(b"first long password here", &a));
            assert!(!verify_now(b"first long password here", &b));
            assert!(verify_now(b"second long password here", &b));
            assert!(!verify_now(b"second long password her", &b));
        }
        assert!(!verify_now(b"x", "not a PHC string"));
    }

    #[test]
    fn hashes_verify_with_the_argon2_crates_own_verifier() {
        use argon2::PasswordVerifier as _;
        let h = hash_now(b"an interoperable password").unwrap();
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default().verify_password(b"an interoperable password", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"another password", &parsed).is_err());
    }

    #[test]
    fn the_dummy_hash_has_the_real_parameters_and_matches_nothing() {
        let p = Passwords::new(1, 0);
        let real = hash_now(b"x").unwrap();
        let params = |phc: &str| phc.rsplitn(3, '$').nth(2).unwrap().to_owned();
        assert_eq!(params(&p.dummy_hash), params(&real));
        assert!(!verify_now(b"", &p.dummy_hash));
        assert_ne!(Passwords::new(1, 0).dummy_hash, p.dummy_hash);
    }
}
