//! Account lockout: how failed verifications of a user's password or second factor are counted.
//!
//! A verification is *admitted* before it runs and counted as a failure at that moment; a success
//! takes the count back. So however many verifications of one account run at once (a wave of
//! parallel guesses, on any number of replicas), at most `max_failed_attempts` of them are
//! admitted before the lock holds: the admission that reaches the limit locks the account, and
//! every later one is refused without verifying anything. Admission runs with the account's
//! login-state row locked (the store's `lock_login_state`), so counting is atomic.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The counters of one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Admitted verifications since the last success or lock.
    pub failed: i32,
    /// Locks in a row (each one lasts twice as long as the one before).
    pub lockouts: i32,
    pub locked_until: Option<DateTime<Utc>>,
}

/// A tenant's lockout policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_failed_attempts: u32,
    pub base_duration_secs: u64,
}

/// The outcome of asking to verify a secret of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    /// The account is locked until then: verify nothing.
    Refused { until: DateTime<Utc> },
    /// Verify; this is failed attempt number `attempt` unless it succeeds. `locked_until` is set
    /// when this attempt used the last one allowed: the account is locked from now on (a success
    /// of this or an earlier admitted attempt unlocks it).
    Admitted { attempt: i32, locked_until: Option<DateTime<Utc>> },
}

impl Policy {
    /// How long the n-th lockout in a row lasts (n from 0): the base, doubled each time, at most a day.
    pub fn lock_duration(&self, lockouts: i32) -> Duration {
        let base = self.base_duration_secs.max(1);
        let secs = base.saturating_mul(1u64 << lockouts.clamp(0, 20)).min(24 * 3600);
        Duration::seconds(secs as i64)
    }

    /// Admits (and counts) one verification, or refuses it while the account is locked.
    pub fn admit(&self, c: &mut Counters, now: DateTime<Utc>) -> Admission {
        match c.locked_until {
            Some(until) if until > now => return Admission::Refused { until },
            Some(until) => {
                c.locked_until = None;
                // Locks in a row: a day without one starts the doubling afresh, so a handful of
                // guesses a day cannot keep an account locked for a day at a time forever.
                if now - until > QUIET_RESET {
                    c.lockouts = 0;
                }
            }
            None => {}
        }
        c.failed += 1;
        let attempt = c.failed;
        if attempt as u32 >= self.max_failed_attempts.max(1) {
            let until = now + self.lock_duration(c.lockouts);
            c.locked_until = Some(until);
            c.lockouts += 1;
            c.failed = 0;
            return Admission::Admitted { attempt, locked_until: Some(until) };
        }
        Admission::Admitted { attempt, locked_until: None }
    }
}

/// How long after a lock ends the lockouts-in-a-row count starts again.
const QUIET_RESET: Duration = Duration::days(1);

/// A verification of the account's own secret (its password, or a code of the second factor at
/// login) succeeded: the account is in good standing again, even if a racing admission locked it.
pub fn succeed(c: &mut Counters) {
    *c = Counters::default();
}

/// A verification of something the caller may have chosen (the code of an authenticator being
/// enrolled, or of one enrolled in this session) succeeded: only its own admission is taken back.
/// It never lifts a lock: a session thief who enrolls an authenticator must not be able to reset
/// the count of their password guesses with its codes.
pub fn take_back_one(c: &mut Counters) {
    c.failed = (c.failed - 1).max(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy { max_failed_attempts: 3, base_duration_secs: 300 }
    }

    #[test]
    fn lockouts_double_up_to_a_day() {
        let p = policy();
        assert_eq!(p.lock_duration(0).num_seconds(), 300);
        assert_eq!(p.lock_duration(2).num_seconds(), 1200);
        assert_eq!(p.lock_duration(15).num_seconds(), 24 * 3600);
    }

    #[test]
    fn the_last_allowed_attempt_locks_before_it_is_verified() {
        let (p, now) = (policy(), Utc::now());
        let mut c = Counters::default();
        assert_eq!(p.admit(&mut c, now), Admission::Admitted { attempt: 1, locked_until: None });
        assert_eq!(p.admit(&mut c, now), Admission::Admitted { attempt: 2, locked_until: None });
        let until = now + Duration::seconds(300);
        assert_eq!(p.admit(&mut c, now), Admission::Admitted { attempt: 3, locked_until: Some(until) });
        // However many more arrive before any of the three is verified: none is admitted.
        for _ in 0..1000 {
            assert_eq!(p.admit(&mut c, now), Admission::Refused { until });
        }
    }

    #[test]
    fn a_lock_ends_and_the_next_one_lasts_twice_as_long() {
        let (p, now) = (policy(), Utc::now());
        let mut c = Counters::default();
        for _ in 0..3 {
            p.admit(&mut c, now);
        }
        let later = now + Duration::seconds(301);
        assert_eq!(p.admit(&mut c, later), Admission::Admitted { attempt: 1, locked_until: None });
        p.admit(&mut c, later);
        let Admission::Admitted { locked_until: Some(until), .. } = p.admit(&mut c, later) else { panic!() };
        assert_eq!(until - later, Duration::seconds(600));
    }

    #[test]
    fn a_quiet_day_restarts_the_doubling() {
        let (p, now) = (policy(), Utc::now());
        let mut c = Counters { failed: 0, lockouts: 6, locked_until: Some(now - Duration::hours(25)) };
        let Admission::Admitted { .. } = p.admit(&mut c, now) else { panic!() };
        assert_eq!(c.lockouts, 0);
        let mut c = Counters { failed: 0, lockouts: 6, locked_until: Some(now - Duration::hours(1)) };
        p.admit(&mut c, now);
        assert_eq!(c.lockouts, 6, "an hour is not quiet enough");
    }

    #[test]
    fn a_chosen_secret_takes_back_only_its_own_admission() {
        let (p, now) = (policy(), Utc::now());
        let mut c = Counters::default();
        p.admit(&mut c, now);
        p.admit(&mut c, now);
        take_back_one(&mut c);
        assert_eq!(c.failed, 1, "the earlier failure stays counted");
        p.admit(&mut c, now);
        let Admission::Admitted { locked_until: Some(until), .. } = p.admit(&mut c, now) else { panic!() };
        take_back_one(&mut c);
        assert_eq!(c.locked_until, Some(until), "never lifts a lock");
    }

    #[test]
    fn a_success_takes_the_count_back() {
        let (p, now) = (policy(), Utc::now());
        let mut c = Counters::default();
        p.admit(&mut c, now);
        p.admit(&mut c, now);
        succeed(&mut c);
        assert_eq!(p.admit(&mut c, now), Admission::Admitted { attempt: 1, locked_until: None });
        // Even a lock set by a racing admission ends when an earlier admitted attempt succeeds.
        p.admit(&mut c, now);
        p.admit(&mut c, now);
        succeed(&mut c);
        assert_eq!(c, Counters::default());
    }
}
