//! Billing-grade usage: for the server, each customer and each carrier, the peak admitted CPS
//! of every minute, and the 95th percentile of those per-minute peaks over a window (default
//! 30 days) — the figure carriers bill on. Only admitted calls count.
//!
//! Minutes are wall-clock minutes (so a restart lines up with the saved history); a minute
//! with no admission is a minute with peak 0. The report covers the closed minutes plus the
//! current one once it has traffic. The
//! history is saved atomically (temp file + rename) and survives restarts; a missing or
//! corrupt file starts a fresh history and says why.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::time::Instant;

/// One scope's figures over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    pub scope: String,
    pub name: String,
    pub p95: u32,
    pub max: u32,
    pub minutes: usize,
}

/// Why a saved history could not be used (the tracker then starts afresh).
#[derive(Debug, Error)]
pub enum UsageError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a usage state file: {source}")]
    Corrupt { path: String, source: serde_json::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Series {
    /// Closed minutes: (unix minute, peak admitted calls in any one second of it).
    history: VecDeque<(u64, u32)>,
    /// The open minute and its peak so far.
    minute: u64,
    peak: u32,
    /// The open second and its admissions.
    second: u64,
    count: u32,
}

impl Series {
    /// Closes every minute before `minute` (minutes with no admission peak at 0).
    fn roll_to(&mut self, minute: u64, keep: usize) {
        if self.minute == 0 {
            self.minute = minute;
            return;
        }
        if minute <= self.minute {
            return;
        }
        self.history.push_back((self.minute, self.peak));
        let gap = (minute - self.minute - 1).min(keep as u64);
        for m in (minute - gap)..minute {
            self.history.push_back((m, 0));
        }
        while self.history.len() > keep {
            self.history.pop_front();
        }
        self.minute = minute;
        self.peak = 0;
    }

    fn record(&mut self, unix_ms: u64, keep: usize) {
        self.roll_to(unix_ms / 60_000, keep);
        let second = unix_ms / 1000;
        if second != self.second {
            self.second = second;
            self.count = 0;
        }
        self.count += 1;
        self.peak = self.peak.max(self.count);
    }

    fn row(&self, scope: &str, name: &str) -> UsageRow {
        let mut peaks: Vec<u32> = self.history.iter().map(|(_, p)| *p).collect();
        if self.peak > 0 {
            peaks.push(self.peak); // the open minute, once it has traffic
        }
        peaks.sort_unstable();
        UsageRow {
            scope: scope.to_string(),
            name: name.to_string(),
            p95: percentile_95(&peaks),
            max: peaks.last().copied().unwrap_or(0),
            minutes: peaks.len(),
        }
    }
}

/// Nearest-rank 95th percentile of sorted values (0 when empty).
pub fn percentile_95(sorted: &[u32]) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * 95).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    series: Vec<(String, String, Series)>,
}

/// The per-minute peaks of every scope. `now` is converted to wall-clock time through an
/// anchor taken at creation, so tests drive it with a synthetic clock.
#[derive(Debug)]
pub struct UsageTracker {
    keep_minutes: usize,
    anchor: (Instant, u64),
    /// By scope, then name: looked up with the caller's `&str`s, so recording a call (on
    /// the SIP path, under this tracker's lock) allocates nothing.
    series: HashMap<String, HashMap<String, Series>>,
}

impl UsageTracker {
    /// `anchor`: an instant and the Unix time in milliseconds it corresponds to.
    pub fn new(window_days: u32, anchor: (Instant, u64)) -> Self {
        Self { keep_minutes: window_days as usize * 1440, anchor, series: HashMap::new() }
    }

    /// Anchored at the current wall-clock time.
    pub fn now_anchored(window_days: u32) -> Self {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::new(window_days, (Instant::now(), unix_ms))
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.anchor.1 + now.saturating_duration_since(self.anchor.0).as_millis() as u64
    }

    /// One admitted call counted for each `(scope, name)`.
    pub fn record(&mut self, now: Instant, keys: &[(&str, &str)]) {
        let ms = self.unix_ms(now);
        let keep = self.keep_minutes;
        for (scope, name) in keys {
            let names = match self.series.get_mut(*scope) {
                Some(names) => names,
                None => self.series.entry((*scope).to_string()).or_default(),
            };
            match names.get_mut(*name) {
                Some(s) => s.record(ms, keep),
                None => names.entry((*name).to_string()).or_default().record(ms, keep),
            }
        }
    }

    fn all(&self) -> impl Iterator<Item = (&str, &str, &Series)> {
        self.series
            .iter()
            .flat_map(|(scope, names)| names.iter().map(move |(name, s)| (scope.as_str(), name.as_str(), s)))
    }

    /// Closes finished minutes of every scope (idle scopes get their zero minutes).
    pub fn roll(&mut self, now: Instant) {
        let minute = self.unix_ms(now) / 60_000;
        for s in self.series.values_mut().flat_map(HashMap::values_mut) {
            s.roll_to(minute, self.keep_minutes);
        }
    }

    /// p95, max and minutes recorded per scope, server first, then by scope and name.
    pub fn report(&self) -> Vec<UsageRow> {
        let mut rows: Vec<UsageRow> = self.all().map(|(scope, name, s)| s.row(scope, name)).collect();
        rows.sort_by(|a, b| {
            (a.scope != "server", &a.scope, &a.name).cmp(&(b.scope != "server", &b.scope, &b.name))
        });
        rows
    }

    /// Writes the history atomically: a temp file next to `path`, then a rename.
    pub fn save(&self, path: &Path) -> Result<(), UsageError> {
        let state = StateFile {
            version: 1,
            series: self
                .all()
                .map(|(scope, name, s)| (scope.to_string(), name.to_string(), s.clone()))
                .collect(),
        };
        let err = |source| UsageError::Write { path: path.display().to_string(), source };
        let text = serde_json::to_vec(&state).map_err(|e| err(std::io::Error::other(e)))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&text).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Loads a saved history into this tracker. A missing file is not an error (`Ok(false)`).
    pub fn load(&mut self, path: &Path) -> Result<bool, UsageError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(UsageError::Read { path: path.display().to_string(), source }),
        };
        let state: StateFile = serde_json::from_slice(&text)
            .map_err(|source| UsageError::Corrupt { path: path.display().to_string(), source })?;
        for (scope, name, mut s) in state.series {
            while s.history.len() > self.keep_minutes {
                s.history.pop_front();
            }
            self.series.entry(scope).or_default().insert(name, s);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0_MS: u64 = 1_800_000_000_000; // a whole minute

    #[test]
    fn p95_of_a_known_pattern() {
        let t0 = Instant::now();
        let mut u = UsageTracker::new(30, (t0, T0_MS));
        // 100 minutes: minute i has a one-second burst of i+1 calls (peaks 1..=100).
        for m in 0..100u64 {
            for _ in 0..=m {
                u.record(t0 + Duration::from_secs(m * 60 + 10), &[("server", ""), ("carrier", "pbx")]);
            }
        }
        u.roll(t0 + Duration::from_secs(100 * 60));
        let rows = u.report();
        assert_eq!(
            rows[0],
            UsageRow { scope: "server".into(), name: "".into(), p95: 95, max: 100, minutes: 100 }
        );
        assert_eq!(rows[1].scope, "carrier");
        assert_eq!(rows[1].p95, 95);
    }

    #[test]
    fn peak_is_per_second_and_idle_minutes_count_as_zero() {
        let t0 = Instant::now();
        let mut u = UsageTracker::new(30, (t0, T0_MS));
        // 3 calls in second 0, 2 in second 1: the minute's peak is 3.
        for ms in [0, 100, 900, 1000, 1500] {
            u.record(t0 + Duration::from_millis(ms), &[("server", "")]);
        }
        u.roll(t0 + Duration::from_secs(10 * 60)); // then nine idle minutes
        let row = &u.report()[0];
        assert_eq!((row.max, row.minutes, row.p95), (3, 10, 3));
    }

    #[test]
    fn window_keeps_the_last_days_only() {
        let t0 = Instant::now();
        let mut u = UsageTracker::new(1, (t0, T0_MS));
        u.record(t0, &[("server", "")]);
        u.roll(t0 + Duration::from_secs(3 * 86_400));
        assert_eq!(u.report()[0].minutes, 1440);
        assert_eq!(u.report()[0].max, 0, "the busy minute left the window");
    }

    #[test]
    fn save_load_round_trip_and_corrupt_file() {
        let dir = std::env::temp_dir().join(format!("sluice-usage-{}", std::process::id()));
        let path = dir.join("usage.json");
        let t0 = Instant::now();
        let mut u = UsageTracker::new(30, (t0, T0_MS));
        for _ in 0..7 {
            u.record(t0, &[("server", ""), ("customer", "acme")]);
        }
        u.roll(t0 + Duration::from_secs(60));
        u.save(&path).unwrap();
        let mut again = UsageTracker::new(30, (t0, T0_MS));
        assert!(again.load(&path).unwrap());
        assert_eq!(again.report(), u.report());
        std::fs::write(&path, b"{ not json").unwrap();
        let mut fresh = UsageTracker::new(30, (t0, T0_MS));
        assert!(matches!(fresh.load(&path), Err(UsageError::Corrupt { .. })));
        assert!(fresh.report().is_empty());
        assert!(!fresh.load(&dir.join("missing.json")).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
