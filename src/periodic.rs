//! The one way background work repeats until shutdown:
//!
//! ```ignore
//! let mut ticks = Ticks::now(Duration::from_secs(60), &stop);
//! while ticks.next().await {
//!     // one round of work
//! }
//! ```
//!
//! Ticks come every `period` from the start of the previous one; a round that overruns delays
//! the next tick instead of bunching the missed ones. `next` answers `false` as soon as `stop` is
//! cancelled, also while waiting.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

pub struct Ticks<'a> {
    interval: Interval,
    stop: &'a CancellationToken,
}

impl<'a> Ticks<'a> {
    /// The first tick at once.
    pub fn now(period: Duration, stop: &'a CancellationToken) -> Self {
        Self::starting(Instant::now(), period, stop)
    }

    /// The first tick after one period.
    pub fn after(period: Duration, stop: &'a CancellationToken) -> Self {
        Self::starting(Instant::now() + period, period, stop)
    }

    fn starting(start: Instant, period: Duration, stop: &'a CancellationToken) -> Self {
        let mut interval = interval_at(start, period.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticks { interval, stop }
    }

    /// Waits for the next tick: `false` once stopped.
    pub async fn next(&mut self) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_until_stopped() {
        let stop = CancellationToken::new();
        let mut ticks = Ticks::now(Duration::from_millis(1), &stop);
        for _ in 0..3 {
            assert!(ticks.next().await);
        }
        // A stop ends a wait that would otherwise last an hour.
        let waiting = {
            let stop = stop.clone();
            tokio::spawn(async move { Ticks::after(Duration::from_secs(3600), &stop).next().await })
        };
        stop.cancel();
        assert!(!waiting.await.unwrap());
        assert!(!ticks.next().await, "no tick after the stop");
    }
}
