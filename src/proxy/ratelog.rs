//! Rate limiting for warnings about bad input, so a flood of garbage costs a few log lines a
//! second, not a disk. What is not logged is still counted in [`crate::stats::Stats`].

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct RateLog {
    per_second: u32,
    window: Option<Instant>,
    used: u32,
}

impl RateLog {
    pub(crate) fn new(per_second: u32) -> Self {
        Self { per_second, window: None, used: 0 }
    }

    /// True when one more line may be logged in the current second.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        match self.window {
            Some(start) if now.duration_since(start) < std::time::Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.used = 0;
            }
        }
        self.used = self.used.saturating_add(1);
        self.used <= self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_per_second() {
        let t0 = Instant::now();
        let mut r = RateLog::new(2);
        assert!(r.allow(t0));
        assert!(r.allow(t0));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + std::time::Duration::from_millis(1001)));
    }
}
