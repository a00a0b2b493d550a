//! The counters behind one limit key: an exact sliding one-second window for CPS and a
//! channel count. Pure: time comes in as nanoseconds from the store's epoch.

use std::collections::VecDeque;

use super::minute::Minute;

/// One second in the window's unit.
pub const SECOND: u64 = 1_000_000_000;

/// What a key enforces on one call: the limits of the table that set them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub cps: Option<u32>,
    pub cpm: Option<u32>,
    pub channels: Option<u32>,
    /// Pacing: besides `cps` in any second, at most one admission per `1/cps` s.
    pub paced: bool,
}

/// Admissions and channels of one key.
///
/// CPS is exact: the window keeps the times of the last `cps` admissions, so a new one is
/// allowed iff fewer than `cps` admissions fall in the half-open second `(now - 1 s, now]`.
/// No one-second interval ever holds more than `cps`, and a steady rate below `cps` is never
/// refused (a fixed window aligned to clock seconds would let `2 x cps` through across a
/// boundary). Memory is `8 x cps` bytes at most; a CPM limit adds `4 x cpm` ([`Minute`]).
#[derive(Debug, Default, Clone)]
pub struct Counter {
    /// Admission times (ns), oldest first; at most `cps` entries are kept.
    times: VecDeque<u64>,
    /// The sliding minute, made when a CPM limit first applies.
    minute: Option<Box<Minute>>,
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
    Cpm,
    Channels,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cps => "cps",
            Self::Cpm => "cpm",
            Self::Channels => "channels",
        }
    }

    /// A limit on admissions over time (the call can wait for it), not on calls up.
    pub fn is_rate(self) -> bool {
        matches!(self, Self::Cps | Self::Cpm)
    }
}

/// The gap pacing keeps between two admissions at `cps` (rounded up: never faster).
fn pace(cps: u32) -> u64 {
    SECOND.div_ceil(u64::from(cps.max(1)))
}

impl Counter {
    /// Would one more call fit under `caps` at `now`? Changes nothing.
    pub fn check(&self, now: u64, caps: &Caps, count_cps: bool) -> Result<(), Refusal> {
        if let Some(max) = caps.channels {
            if self.channels >= max {
                return Err(Refusal::Channels);
            }
        }
        if !count_cps {
            return Ok(());
        }
        if let Some(max) = caps.cps {
            if max == 0 {
                return Err(Refusal::Cps);
            }
            // Entries are oldest first and pruned on commit: count the stale head, not the window.
            let stale = self.times.iter().take_while(|t| now.saturating_sub(**t) >= SECOND).count();
            let in_window = self.times.len() - stale;
            if in_window >= max as usize {
                return Err(Refusal::Cps);
            }
            if caps.paced && self.times.back().is_some_and(|t| now.saturating_sub(*t) < pace(max)) {
                return Err(Refusal::Cps);
            }
        }
        if let Some(max) = caps.cpm {
            if !self.minute.as_ref().map_or(max > 0, |m| m.fits(now, max)) {
                return Err(Refusal::Cpm);
            }
        }
        Ok(())
    }

    /// When a call refused by this key's rate limits would fit again (ns): the moment the
    /// oldest admission that must leave a window has left it (and the pacing gap is over).
    /// `None` when it fits now or no rate limit can open (a limit of 0).
    pub fn opens_at(&self, now: u64, caps: &Caps) -> Option<u64> {
        let mut at: Option<u64> = None;
        let mut later = |t: u64| at = Some(at.map_or(t, |a| a.max(t)));
        if let Some(max) = caps.cps.filter(|m| *m > 0) {
            let stale = self.times.iter().take_while(|t| now.saturating_sub(**t) >= SECOND).count();
            if let Some(leaving) = (self.times.len() - stale).checked_sub(max as usize) {
                if let Some(t) = self.times.get(stale + leaving) {
                    later(t.saturating_add(SECOND));
                }
            }
            if caps.paced {
                if let Some(t) = self.times.back().map(|t| t.saturating_add(pace(max))).filter(|t| *t > now) {
                    later(t);
                }
            }
        }
        if let (Some(max), Some(m)) = (caps.cpm, self.minute.as_ref()) {
            if let Some(t) = m.opens_at(now, max) {
                later(t);
            }
        }
        at
    }

    /// Records an admission checked with [`Counter::check`] under the same limits (or
    /// over them, for a shadow limit: the windows still keep only what can matter).
    pub fn commit(&mut self, now: u64, caps: &Caps, count_cps: bool) {
        self.channels += 1;
        self.last_used = now;
        if !count_cps {
            return;
        }
        self.roll(now);
        self.this_second += 1;
        if let Some(max) = caps.cps {
            // Keep only what can still matter: the last `cps` admissions within one second.
            while self.times.len() >= max.max(1) as usize
                || self.times.front().is_some_and(|t| now.saturating_sub(*t) >= SECOND)
            {
                self.times.pop_front();
            }
            self.times.push_back(now);
        }
        if let Some(max) = caps.cpm {
            self.minute.get_or_insert_with(Box::default).commit(now, max);
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
            && self.minute.as_ref().is_none_or(|m| m.is_idle(now))
            && now.saturating_sub(self.last_used) >= SECOND
    }

    /// Heap bytes held by the window.
    pub fn heap_bytes(&self) -> usize {
        self.times.capacity() * std::mem::size_of::<u64>()
            + self.minute.as_ref().map_or(0, |m| std::mem::size_of::<Minute>() + m.heap_bytes())
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

    fn cps(n: u32) -> Caps {
        Caps { cps: Some(n), ..Caps::default() }
    }

    fn channels(n: u32) -> Caps {
        Caps { channels: Some(n), ..Caps::default() }
    }

    fn admit(c: &mut Counter, now: u64, n: u32) -> bool {
        let ok = c.check(now, &cps(n), true).is_ok();
        if ok {
            c.commit(now, &cps(n), true);
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
        assert_eq!(c.check(0, &channels(0), true), Err(Refusal::Channels));
        assert_eq!(c.check(0, &cps(0), true), Err(Refusal::Cps));
        c.commit(0, &Caps::default(), true);
        assert_eq!(c.check(0, &channels(1), true), Err(Refusal::Channels));
        c.release(1);
        c.release(2);
        assert_eq!(c.channels, 0, "never below zero");
        assert_eq!(c.check(3, &channels(1), true), Ok(()));
    }

    #[test]
    fn uncounted_admission_takes_no_cps_slot() {
        let mut c = Counter::default();
        c.commit(0, &cps(1), true);
        assert_eq!(c.check(1, &cps(1), true), Err(Refusal::Cps));
        assert_eq!(c.check(1, &cps(1), false), Ok(()), "a re-INVITE after 401/407 is the same call");
    }

    #[test]
    fn idle_and_last_second() {
        let mut c = Counter::default();
        c.commit(100 * MS, &cps(10), true);
        c.commit(200 * MS, &cps(10), true);
        assert_eq!(c.cps_last_second(1_100 * MS), 2);
        assert_eq!(c.cps_last_second(2_100 * MS), 0);
        assert!(!c.is_idle(1_500 * MS), "channels still held");
        c.release(1_500 * MS);
        c.release(1_500 * MS);
        assert!(!c.is_idle(2_000 * MS));
        assert!(c.is_idle(2_600 * MS));
    }

    #[test]
    fn pacing_spaces_admissions_and_says_when_the_next_fits() {
        let mut c = Counter::default();
        let paced = Caps { cps: Some(10), paced: true, ..Caps::default() };
        assert_eq!(c.check(0, &paced, true), Ok(()));
        c.commit(0, &paced, true);
        assert_eq!(c.check(99 * MS, &paced, true), Err(Refusal::Cps), "100 ms apart at cps 10");
        assert_eq!(c.opens_at(10 * MS, &paced), Some(100 * MS));
        assert_eq!(c.check(100 * MS, &paced, true), Ok(()));
        assert_eq!(c.check(99 * MS, &cps(10), true), Ok(()), "unpaced, the window alone decides");
    }

    #[test]
    fn cpm_and_cps_apply_together() {
        let mut c = Counter::default();
        let both = Caps { cps: Some(2), cpm: Some(3), ..Caps::default() };
        for t in [0, 10 * MS] {
            c.check(t, &both, true).unwrap();
            c.commit(t, &both, true);
        }
        assert_eq!(c.check(20 * MS, &both, true), Err(Refusal::Cps));
        c.check(SECOND, &both, true).unwrap();
        c.commit(SECOND, &both, true);
        assert_eq!(c.check(3 * SECOND, &both, true), Err(Refusal::Cpm));
        assert_eq!(c.opens_at(3 * SECOND, &both), Some(60 * SECOND));
        assert!(!c.is_idle(30 * SECOND), "the minute still holds admissions");
        c.release(0);
        c.release(0);
        c.release(0);
        assert!(c.is_idle(61 * SECOND + SECOND));
    }
}
