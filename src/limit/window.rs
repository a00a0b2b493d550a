//! The counters behind one limit key: an exact sliding one-second window for CPS and a
//! channel count. Pure: time comes in as nanoseconds from the store's epoch.

use std::collections::VecDeque;

/// One second in the window's unit.
pub const SECOND: u64 = 1_000_000_000;

/// Admissions and channels of one key.
///
/// CPS is exact: the window keeps the times of the last `cps` admissions, so a new one is
/// allowed iff fewer than `cps` admissions fall in the half-open second `(now - 1 s, now]`.
/// No one-second interval ever holds more than `cps`, and a steady rate below `cps` is never
/// refused (a fixed window aligned to clock seconds would let `2 x cps` through across a
/// boundary). Memory is `8 x cps` bytes at most.
#[derive(Debug, Default, Clone)]
pub struct Counter {
    /// Admission times (ns), oldest first; at most `cps` entries are kept.
    times: VecDeque<u64>,
    /// Calls admitted and not yet released.
    pub channels: u32,
    /// Admissions in the current and the previous whole second (for /status and metrics).
    second: u64,
    this_second: u32,
    last_second: u32,
    /// Last time this key was touched (for idle eviction).
    pub last_used: u64,
}

/// Why a key refuses a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Cps,
    Channels,
}

impl Counter {
    /// Would one more call fit under `cps` / `channels` at `now`? Changes nothing.
    pub fn check(
        &self,
        now: u64,
        cps: Option<u32>,
        channels: Option<u32>,
        count_cps: bool,
    ) -> Result<(), Refusal> {
        if let Some(max) = channels {
            if self.channels >= max {
                return Err(Refusal::Channels);
            }
        }
        if let (Some(max), true) = (cps, count_cps) {
            if max == 0 {
                return Err(Refusal::Cps);
            }
            // Entries are oldest first and pruned on commit: count the stale head, not the window.
            let stale = self.times.iter().take_while(|t| now.saturating_sub(**t) >= SECOND).count();
            let in_window = self.times.len() - stale;
            if in_window >= max as usize {
                return Err(Refusal::Cps);
            }
        }
        Ok(())
    }

    /// When a call refused by this key's `cps` would fit again (ns): the moment the oldest
    /// admission still in the window leaves it. `None` when it fits now or has no CPS limit.
    pub fn cps_opens_at(&self, now: u64, cps: Option<u32>) -> Option<u64> {
        let max = cps.filter(|m| *m > 0)? as usize;
        let stale = self.times.iter().take_while(|t| now.saturating_sub(**t) >= SECOND).count();
        let leaving = (self.times.len() - stale).checked_sub(max)?;
        self.times.get(stale + leaving).map(|t| t.saturating_add(SECOND))
    }

    /// Records an admission checked with [`Counter::check`] under the same limits.
    pub fn commit(&mut self, now: u64, cps: Option<u32>, count_cps: bool) {
        self.channels += 1;
        self.last_used = now;
        if !count_cps {
            return;
        }
        self.roll(now);
        self.this_second += 1;
        if let Some(max) = cps {
            // Keep only what can still matter: the last `cps` admissions within one second.
            while self.times.len() >= max.max(1) as usize
                || self.times.front().is_some_and(|t| now.saturating_sub(*t) >= SECOND)
            {
                self.times.pop_front();
            }
            self.times.push_back(now);
        }
    }

    /// Frees one channel; never below zero.
    pub fn release(&mut self, now: u64) {
        self.channels = self.channels.saturating_sub(1);
        self.last_used = now;
    }

    /// Admissions in the last full second.
    pub fn cps_last_second(&self, now: u64) -> u32 {
        let current = now / SECOND;
        if current == self.second + 1 {
            self.this_second
        } else if current == self.second {
            self.last_second
        } else {
            0
        }
    }

    /// Nothing in use and nothing in the window: the key can be forgotten.
    pub fn is_idle(&self, now: u64) -> bool {
        self.channels == 0
            && self.times.back().is_none_or(|t| now.saturating_sub(*t) >= SECOND)
            && now.saturating_sub(self.last_used) >= SECOND
    }

    /// Heap bytes held by the window.
    pub fn heap_bytes(&self) -> usize {
        self.times.capacity() * std::mem::size_of::<u64>()
    }

    fn roll(&mut self, now: u64) {
        let current = now / SECOND;
        if current != self.second {
            self.last_second = if current == self.second + 1 { self.this_second } else { 0 };
            self.this_second = 0;
            self.second = current;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn admit(c: &mut Counter, now: u64, cps: u32) -> bool {
        let ok = c.check(now, Some(cps), None, true).is_ok();
        if ok {
            c.commit(now, Some(cps), true);
            c.release(now);
        }
        ok
    }

    #[test]
    fn burst_at_0_9_blocks_until_1_9() {
        let mut c = Counter::default();
        for _ in 0..5 {
            assert!(admit(&mut c, 900 * MS, 5));
        }
        assert!(!admit(&mut c, 900 * MS, 5), "sixth in the same instant");
        assert!(!admit(&mut c, 1_000 * MS, 5), "a fixed window would allow this at t=1.0");
        assert!(!admit(&mut c, 1_899 * MS, 5));
        assert!(admit(&mut c, 1_900 * MS, 5), "exactly one second after the burst");
    }

    #[test]
    fn exact_boundaries() {
        let mut c = Counter::default();
        assert!(admit(&mut c, 0, 2));
        assert!(admit(&mut c, 500 * MS, 2));
        assert!(!admit(&mut c, 999 * MS, 2));
        assert!(admit(&mut c, SECOND, 2), "the first admission left the window");
        assert!(!admit(&mut c, SECOND + 499 * MS, 2));
        assert!(admit(&mut c, SECOND + 500 * MS, 2));
    }

    #[test]
    fn steady_rate_below_limit_never_refused() {
        let mut c = Counter::default();
        // 19 per second, evenly spaced, for a minute, against cps = 20.
        for i in 0..(19 * 60) {
            assert!(admit(&mut c, i * SECOND / 19, 20), "refused at admission {i}");
        }
    }

    #[test]
    fn channels_and_zero_limits() {
        let mut c = Counter::default();
        assert_eq!(c.check(0, None, Some(0), true), Err(Refusal::Channels));
        assert_eq!(c.check(0, Some(0), None, true), Err(Refusal::Cps));
        c.commit(0, None, true);
        assert_eq!(c.check(0, None, Some(1), true), Err(Refusal::Channels));
        c.release(1);
        c.release(2);
        assert_eq!(c.channels, 0, "never below zero");
        assert_eq!(c.check(3, None, Some(1), true), Ok(()));
    }

    #[test]
    fn uncounted_admission_takes_no_cps_slot() {
        let mut c = Counter::default();
        c.commit(0, Some(1), true);
        assert_eq!(c.check(1, Some(1), None, true), Err(Refusal::Cps));
        assert_eq!(c.check(1, Some(1), None, false), Ok(()), "a re-INVITE after 401/407 is the same call");
    }

    #[test]
    fn idle_and_last_second() {
        let mut c = Counter::default();
        c.commit(100 * MS, Some(10), true);
        c.commit(200 * MS, Some(10), true);
        assert_eq!(c.cps_last_second(1_100 * MS), 2);
        assert_eq!(c.cps_last_second(2_100 * MS), 0);
        assert!(!c.is_idle(1_500 * MS), "channels still held");
        c.release(1_500 * MS);
        c.release(1_500 * MS);
        assert!(!c.is_idle(2_000 * MS));
        assert!(c.is_idle(2_600 * MS));
    }
}
