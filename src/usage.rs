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
    /// The latest minute merged and its peak (closed into `history` when a later one comes).
    minute: u64,
    peak: u32,
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

    /// Merges `minute`'s peak (minutes arrive in order; an earlier one is too late to count).
    fn add_peak(&mut self, minute: u64, peak: u32, keep: usize) {
        self.roll_to(minute, keep);
        if minute == self.minute {
            self.peak = self.peak.max(peak);
        }
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
///
/// Calls are counted by [`Recorder`]s, one per shard of the core, each behind its own lock,
/// so admissions on different shards never meet on one; a minute's per-second counts of
/// every recorder are summed (the peak is of the sums) when the minute is merged here: at a
/// roll once it has closed, and at a report for the minute still open.
#[derive(Debug)]
pub struct UsageTracker {
    keep_minutes: usize,
    anchor: (Instant, u64),
    /// By scope, then name: looked up with `&str`s, so merging allocates only for new keys.
    series: Map<String, Map<String, Series>>,
    recorders: Vec<Recorder>,
}

/// aHash, keyed per process: every admitted call looks up each of its scopes here, and
/// per-IP and per-user names are the caller's to choose.
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Admissions one shard of the core counted and the tracker has not merged yet: per
/// minute, key and second of the minute.
type Counts = Map<u64, MinuteCounts>;

/// One minute's admissions per scope, name and second.
type MinuteCounts = Map<String, Map<String, [u32; 60]>>;

/// Where one shard of the core counts its admitted calls (a clone shares the counts).
#[derive(Debug, Clone)]
pub struct Recorder {
    anchor: (Instant, u64),
    counts: std::sync::Arc<parking_lot::Mutex<Counts>>,
}

impl Recorder {
    /// One admitted call counted for each `(scope, name)`. Allocates only for a key's first
    /// call in a minute.
    pub fn record(&self, now: Instant, keys: &[(&str, &str)]) {
        let ms =
            self.anchor.1.saturating_add(now.saturating_duration_since(self.anchor.0).as_millis() as u64);
        let (minute, second) = (ms / 60_000, (ms / 1000 % 60) as usize);
        let mut counts = self.counts.lock();
        let minute = counts.entry(minute).or_default();
        for (scope, name) in keys {
            let names = match minute.get_mut(*scope) {
                Some(names) => names,
                None => minute.entry((*scope).to_string()).or_default(),
            };
            let seconds = match names.get_mut(*name) {
                Some(seconds) => seconds,
                None => names.entry((*name).to_string()).or_insert([0; 60]),
            };
            if let Some(c) = seconds.get_mut(second) {
                *c = c.saturating_add(1);
            }
        }
    }
}

impl UsageTracker {
    /// `anchor`: an instant and the Unix time in milliseconds it corresponds to.
    pub fn new(window_days: u32, anchor: (Instant, u64)) -> Self {
        Self {
            keep_minutes: window_days as usize * 1440,
            anchor,
            series: Map::default(),
            recorders: Vec::new(),
        }
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

    /// A new recorder whose counts this tracker merges (one per shard of the core).
    pub fn recorder(&mut self) -> Recorder {
        let r = Recorder { anchor: self.anchor, counts: Default::default() };
        self.recorders.push(r.clone());
        r
    }

    /// One admitted call counted for each `(scope, name)`, through the tracker's first
    /// recorder (tests and tools; the core's shards use their own).
    pub fn record(&mut self, now: Instant, keys: &[(&str, &str)]) {
        let r = match self.recorders.first() {
            Some(r) => r.clone(),
            None => self.recorder(),
        };
        r.record(now, keys);
    }

    /// Sums the recorders' counts of the minutes before `before` (taken out of them), or of
    /// minute `before` itself (left in them) when `peek`.
    fn gather(&self, before: u64, peek: bool) -> Counts {
        let mut all = Counts::default();
        for r in &self.recorders {
            let mut counts = r.counts.lock();
            let minutes: Vec<u64> =
                counts.keys().copied().filter(|m| if peek { *m == before } else { *m < before }).collect();
            for m in minutes {
                let taken = if peek { counts.get(&m).cloned() } else { counts.remove(&m) };
                for (scope, names) in taken.unwrap_or_default() {
                    for (name, seconds) in names {
                        let sum = all
                            .entry(m)
                            .or_default()
                            .entry(scope.clone())
                            .or_default()
                            .entry(name)
                            .or_insert([0; 60]);
                        for (a, b) in sum.iter_mut().zip(seconds) {
                            *a = a.saturating_add(b);
                        }
                    }
                }
            }
        }
        all
    }

    /// Merges what the recorders counted: the closed minutes (taken out of them) and the
    /// open minute's peak so far (left in them: merging takes the larger peak, so merging
    /// it again when it closes counts nothing twice); then closes finished minutes of every
    /// scope (idle scopes get their zero minutes).
    pub fn roll(&mut self, now: Instant) {
        let minute = self.unix_ms(now) / 60_000;
        let closed = self.gather(minute, false);
        let open = self.gather(minute, true);
        let mut minutes: Vec<(u64, &MinuteCounts)> =
            closed.iter().chain(open.iter()).map(|(m, keys)| (*m, keys)).collect();
        minutes.sort_unstable_by_key(|(m, _)| *m);
        let keep = self.keep_minutes;
        for (m, keys) in minutes {
            for (scope, names) in keys {
                for (name, seconds) in names {
                    let peak = seconds.iter().copied().max().unwrap_or(0);
                    let by_name = match self.series.get_mut(scope.as_str()) {
                        Some(n) => n,
                        None => self.series.entry(scope.clone()).or_default(),
                    };
                    let series = match by_name.get_mut(name.as_str()) {
                        Some(s) => s,
                        None => by_name.entry(name.clone()).or_default(),
                    };
                    series.add_peak(m, peak, keep);
                }
            }
        }
        for s in self.series.values_mut().flat_map(Map::values_mut) {
            s.roll_to(minute, keep);
        }
    }

    fn all(&self) -> impl Iterator<Item = (&str, &str, &Series)> {
        self.series
            .iter()
            .flat_map(|(scope, names)| names.iter().map(move |(name, s)| (scope.as_str(), name.as_str(), s)))
    }

    /// p95, max and minutes recorded per scope, server first, then by scope and name, as of
    /// the last [`UsageTracker::roll`].
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
    fn shards_count_apart_and_their_seconds_add_up() {
        let t0 = Instant::now();
        let mut u = UsageTracker::new(30, (t0, T0_MS));
        let (a, b) = (u.recorder(), u.recorder());
        let at = |ms| t0 + Duration::from_millis(ms);
        // Second 0: 2 on one shard, 3 on the other (peak 5, not 3). Second 1: 4 on one.
        for ms in [0, 10] {
            a.record(at(ms), &[("server", "")]);
        }
        for ms in [20, 30, 40] {
            b.record(at(ms), &[("server", "")]);
        }
        for ms in [1000, 1001, 1002, 1003] {
            a.record(at(ms), &[("server", "")]);
        }
        // The open minute, reported twice and then closed, counts once.
        u.roll(at(30_000));
        assert_eq!((u.report()[0].max, u.report()[0].minutes), (5, 1));
        u.roll(at(31_000));
        b.record(at(32_000), &[("server", ""), ("customer", "acme")]);
        u.roll(at(61_000));
        let rows = u.report();
        assert_eq!((rows[0].scope.as_str(), rows[0].max, rows[0].minutes), ("server", 5, 1), "{rows:?}");
        assert_eq!((rows[1].scope.as_str(), rows[1].name.as_str(), rows[1].max), ("customer", "acme", 1));
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
