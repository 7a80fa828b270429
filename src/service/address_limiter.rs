//! The per-address limit on failing logins (password spraying: many accounts, one address).
//!
//! Each login takes a slot of its address *before* any hashing; a login that succeeds gives its
//! slot back, one that fails keeps it until the address's window (a minute) ends. So however many
//! logins one address sends at once, at most `limit` of them are hashed per window, and users who
//! log in successfully behind one NAT never use up its budget. IPv6 addresses count per /64
//! (what one host or home usually gets), so rotating addresses inside a subnet does not help.
//!
//! governor (the GCRA limiter used before) cannot give a cell back, which a reservation needs;
//! this fixed-window count does, in a few lines.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::DashMap;

use crate::domain::{Error, Kind, Reason, Result};

/// The key an address counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl From<IpAddr> for Key {
    fn from(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(a) => Key::V4(a.into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Key::V4(v4.into()),
                None => Key::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    used: u32,
}

struct Inner {
    limit: u32,
    window: Duration,
    windows: DashMap<Key, Window, foldhash::fast::RandomState>,
    /// When expired windows were last swept (at most once a second, whatever the traffic).
    swept: std::sync::Mutex<Instant>,
}

/// Failing-login slots per address and minute (0 = no limit).
#[derive(Clone)]
pub struct AddressLimiter(Option<Arc<Inner>>);

/// A slot taken by a login in flight: dropped, it stays used (a failure); [`Slot::give_back`]
/// returns it (a success).
#[must_use]
pub struct Slot {
    inner: Option<(Arc<Inner>, Key, Instant)>,
}

/// Windows kept before the expired ones are swept. Memory is bounded by the addresses (IPv6:
/// /64 prefixes) that fail within one window: about 64 bytes each.
const SWEEP_AT: usize = 50_000;

impl AddressLimiter {
    pub fn new(limit_per_minute: u32) -> AddressLimiter {
        AddressLimiter((limit_per_minute > 0).then(|| {
            Arc::new(Inner {
                limit: limit_per_minute,
                window: Duration::from_secs(60),
                windows: DashMap::default(),
                swept: std::sync::Mutex::new(Instant::now()),
            })
        }))
    }

    /// Takes a slot for a login from `ip`, or refuses with RESOURCE_EXHAUSTED (`TOO_MANY_ATTEMPTS`)
    /// and the time until the address's window ends. Without an address (or a limit) there is
    /// nothing to count.
    pub fn take(&self, ip: Option<IpAddr>) -> Result<Slot> {
        let (Some(inner), Some(ip)) = (&self.0, ip) else { return Ok(Slot { inner: None }) };
        let key = Key::from(ip);
        let now = Instant::now();
        if inner.windows.len() >= SWEEP_AT && inner.sweep_due(now) {
            inner.windows.retain(|_, w| now.duration_since(w.start) < inner.window);
        }
        let mut w = inner.windows.entry(key).or_insert(Window { start: now, used: 0 });
        if now.duration_since(w.start) >= inner.window {
            *w = Window { start: now, used: 0 };
        }
        if w.used >= inner.limit {
            let wait = inner.window.saturating_sub(now.duration_since(w.start));
            let mut e = Error::new(
                Kind::ResourceExhausted,
                Reason::TooManyAttempts,
                "too many failed logins from this address: wait before trying again",
            );
            e.retry_after_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
            return Err(e);
        }
        w.used += 1;
        let start = w.start;
        Ok(Slot { inner: Some((inner.clone(), key, start)) })
    }
}

impl Inner {
    /// Whether this caller sweeps now: at most once a second (a sweep walks every window; many
    /// addresses at once must not make every login pay for it).
    fn sweep_due(&self, now: Instant) -> bool {
        let Ok(mut last) = self.swept.try_lock() else { return false };
        if now.duration_since(*last) < Duration::from_secs(1) {
            return false;
        }
        *last = now;
        true
    }
}

impl Slot {
    /// The login succeeded: the slot is free again (if its window is still the current one).
    pub fn give_back(mut self) {
        if let Some((inner, key, start)) = self.inner.take()
            && let Some(mut w) = inner.windows.get_mut(&key)
            && w.start == start
        {
            w.used = w.used.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_before_and_given_back_on_success() {
        let l = AddressLimiter::new(3);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let a = l.take(Some(ip)).unwrap();
        let _b = l.take(Some(ip)).unwrap();
        let _c = l.take(Some(ip)).unwrap();
        let refused = l.take(Some(ip)).err().expect("a fourth login in flight is refused");
        assert_eq!(refused.reason, Reason::TooManyAttempts);
        assert!(refused.retry_after_ms > 0 && refused.retry_after_ms <= 60_000);
        a.give_back();
        let _d = l.take(Some(ip)).expect("a success frees its slot");
        assert!(l.take("192.0.2.8".parse().ok()).is_ok(), "other addresses have their own");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = AddressLimiter::new(1);
        let _a = l.take("2001:db8:1:2::1".parse().ok()).unwrap();
        assert!(l.take("2001:db8:1:2:ffff::9".parse().ok()).is_err(), "same /64");
        assert!(l.take("2001:db8:1:3::1".parse().ok()).is_ok(), "another /64");
        let _v4 = l.take("192.0.2.1".parse().ok()).unwrap();
        assert!(l.take("::ffff:192.0.2.1".parse().ok()).is_err());
    }

    #[test]
    fn no_limit_and_no_address_count_nothing() {
        let off = AddressLimiter::new(0);
        for _ in 0..100 {
            let _ = off.take("192.0.2.7".parse().ok()).unwrap();
        }
        let on = AddressLimiter::new(1);
        for _ in 0..100 {
            let _ = on.take(None).unwrap();
        }
    }
}
