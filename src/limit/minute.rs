//! The calls-per-minute window of one key: exact over a sliding 60 s, in 4 bytes per
//! admission.
//!
//! Exactness needs the time of each of the last `cpm` admissions (a call fits iff fewer than
//! `cpm` of them are younger than 60 s), so the window is a ring of at most `cpm` times. They
//! are kept as microseconds in a wrapping `u32` rather than `u64` nanoseconds: a 60 s window
//! needs 26 bits, and the ring halves (cpm = 6,000: 24 KB instead of 48 KB at full load).
//! Wrapping is safe because every entry is within 60 s of the newest one (older ones are
//! dropped when a newer one is added) and the whole ring is forgotten once the newest is 60 s
//! old, so an age read from the ring is always below 2 minutes, far inside the `i32` range
//! (35 minutes) it is interpreted in. A time slightly in the future (another shard's clock
//! read a moment later) reads as age 0, never as old.

use std::collections::VecDeque;

use super::window::SECOND;

/// The window in microseconds.
const MINUTE_US: i64 = 60_000_000;

#[derive(Debug, Default, Clone)]
pub struct Minute {
    /// Admission times (µs, wrapping), oldest first; at most `cpm` entries.
    times: VecDeque<u32>,
    /// The newest admission (ns, not wrapped): older than a minute, the whole ring is stale.
    newest: u64,
}

fn micros(now: u64) -> u32 {
    (now / 1_000) as u32
}

impl Minute {
    /// Age in µs of a ring entry (0 for one a little in the future).
    fn age(now: u64, t: u32) -> i64 {
        i64::from((micros(now).wrapping_sub(t) as i32).max(0))
    }

    fn all_stale(&self, now: u64) -> bool {
        now.saturating_sub(self.newest) >= 60 * SECOND
    }

    /// Admissions younger than 60 s, and the index of the first of them.
    fn live(&self, now: u64) -> (usize, usize) {
        if self.all_stale(now) {
            return (self.times.len(), 0);
        }
        let stale = self.times.iter().take_while(|t| Self::age(now, **t) >= MINUTE_US).count();
        (stale, self.times.len() - stale)
    }

    /// Would one more admission fit under `cpm`?
    pub fn fits(&self, now: u64, cpm: u32) -> bool {
        cpm > 0 && self.live(now).1 < cpm as usize
    }

    /// When one more admission fits again (ns), if it does not now.
    pub fn opens_at(&self, now: u64, cpm: u32) -> Option<u64> {
        if cpm == 0 {
            return None;
        }
        let (stale, live) = self.live(now);
        let leaving = live.checked_sub(cpm as usize)?;
        let t = *self.times.get(stale + leaving)?;
        let wait_us = (MINUTE_US - Self::age(now, t)).max(0) as u64;
        Some(now.saturating_add(wait_us * 1_000))
    }

    /// Records an admission; keeps the ring at `cpm` entries at most.
    pub fn commit(&mut self, now: u64, cpm: u32) {
        if self.all_stale(now) {
            self.times.clear();
        }
        while self.times.len() >= cpm.max(1) as usize
            || self.times.front().is_some_and(|t| Self::age(now, *t) >= MINUTE_US)
        {
            self.times.pop_front();
        }
        if self.times.len() == self.times.capacity() {
            // Grow by doubling, but never past `cpm`: a full window costs 4 x cpm bytes,
            // not the next power of two.
            let len = self.times.len();
            self.times.reserve_exact(len.max(4).min((cpm as usize).saturating_sub(len).max(1)));
        }
        self.times.push_back(micros(now));
        self.newest = self.newest.max(now);
    }

    /// Nothing younger than a minute.
    pub fn is_idle(&self, now: u64) -> bool {
        self.times.is_empty() || self.all_stale(now)
    }

    pub fn heap_bytes(&self) -> usize {
        self.times.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn admit(m: &mut Minute, now: u64, cpm: u32) -> bool {
        let ok = m.fits(now, cpm);
        if ok {
            m.commit(now, cpm);
        }
        ok
    }

    #[test]
    fn sixty_second_boundaries_are_exact() {
        let mut m = Minute::default();
        for i in 0..30 {
            assert!(admit(&mut m, i * 100 * MS, 30), "admission {i}");
        }
        assert!(!admit(&mut m, 3 * SECOND, 30));
        assert_eq!(m.opens_at(3 * SECOND, 30), Some(60 * SECOND), "when the first leaves");
        assert!(!admit(&mut m, 60 * SECOND - 1_000, 30), "1 µs before the first leaves");
        assert!(admit(&mut m, 60 * SECOND, 30), "the first left the window");
        assert!(!admit(&mut m, 60 * SECOND + 50 * MS, 30));
        assert!(admit(&mut m, 60 * SECOND + 100 * MS, 30));
    }

    #[test]
    fn a_steady_rate_under_cpm_is_never_refused() {
        let mut m = Minute::default();
        // 599 per minute, evenly spaced, for ten minutes, against cpm = 600.
        for i in 0..(599 * 10) {
            assert!(admit(&mut m, i * 60 * SECOND / 599, 600), "refused at {i}");
        }
        assert_eq!(m.heap_bytes(), 4 * 600, "a full window holds cpm entries of 4 bytes, no slack");
    }

    #[test]
    fn wrapping_and_long_idle_gaps_do_not_confuse_ages() {
        let mut m = Minute::default();
        // Just below the u32 µs wrap (71.6 min), then across it.
        let base = (u64::from(u32::MAX) - 1_000) * 1_000;
        assert!(admit(&mut m, base, 2));
        assert!(admit(&mut m, base + 2 * SECOND, 2));
        assert!(!admit(&mut m, base + 3 * SECOND, 2), "both still in the window across the wrap");
        assert!(admit(&mut m, base + 61 * SECOND, 2));
        // Two hours idle: the wrapped ages would lie; the ring is stale as a whole.
        let later = base + 2 * 3_600 * SECOND;
        assert!(m.is_idle(later));
        assert!(admit(&mut m, later, 2) && admit(&mut m, later, 2));
        assert!(!admit(&mut m, later + SECOND, 2));
    }

    #[test]
    fn a_time_slightly_in_the_past_is_in_the_window() {
        let mut m = Minute::default();
        assert!(admit(&mut m, 10 * SECOND, 1));
        // Another shard read its clock a moment earlier.
        assert!(!m.fits(10 * SECOND - 5_000, 1));
    }
}
