//! Rate limiting for log lines a caller can cause (bad input, refused calls, gateways that
//! do not answer the requests a caller made), so a flood costs a few lines a second, not a
//! disk. What is not logged is still counted in [`crate::stats::Stats`], and a line per
//! second says how many lines were held back.

use std::cell::Cell;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct RateLog {
    /// Names the budget in the `log.suppressed` line.
    kind: &'static str,
    per_second: u32,
    window: Cell<Option<Instant>>,
    used: Cell<u32>,
}

impl RateLog {
    pub(crate) fn new(kind: &'static str, per_second: u32) -> Self {
        Self { kind, per_second, window: Cell::new(None), used: Cell::new(0) }
    }

    /// True when one more line may be logged in the current second. Takes `&self`, so it
    /// can be asked from read-only paths too.
    pub(crate) fn allow(&self, now: Instant) -> bool {
        match self.window.get() {
            Some(start) if now.saturating_duration_since(start) < std::time::Duration::from_secs(1) => {}
            _ => {
                let held_back = self.used.get().saturating_sub(self.per_second);
                if held_back > 0 {
                    tracing::warn!(
                        event = "log.suppressed",
                        kind = self.kind,
                        lines = held_back,
                        "log lines held back in the last second (still counted in metrics)"
                    );
                }
                self.window.set(Some(now));
                self.used.set(0);
            }
        }
        self.used.set(self.used.get().saturating_add(1));
        self.used.get() <= self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_per_second() {
        let t0 = Instant::now();
        let r = RateLog::new("test", 2);
        assert!(r.allow(t0));
        assert!(r.allow(t0));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + std::time::Duration::from_millis(1001)));
    }
}
