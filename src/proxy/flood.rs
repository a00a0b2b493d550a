//! Flood protection (`[flood]`): messages per second per source IP. A source above `rps` in
//! one second is dropped unanswered for `block_seconds` (answering a flood amplifies it).
//! Configured gateways and `trusted` networks are never blocked.
//!
//! Memory is bounded whatever the attacker does: the per-second counts hold at most
//! [`MAX_COUNTED`] sources (further new sources in that second pass uncounted: each sent
//! fewer messages than it takes to be noticed anyway) and the block list at most
//! [`MAX_BLOCKED`]. Keys are 16 bytes (IPv4 mapped into IPv6), values 4.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

use crate::config::Config;

/// Sources counted in one second at most.
pub const MAX_COUNTED: usize = 1 << 20;
/// Sources blocked at once at most.
pub const MAX_BLOCKED: usize = 1 << 20;

type Key = [u8; 16];
type Map<V> = HashMap<Key, V, ahash::RandomState>;

/// What to do with one message from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Dropped: the source is blocked.
    Drop,
    /// Dropped, and this message is the one that crossed the limit (log the episode once).
    Blocked,
}

pub struct Flood {
    rps: u32,
    block_secs: u32,
    trusted: Vec<IpNet>,
    gateways: HashSet<IpAddr>,
    epoch: Instant,
    /// The second `counts` is about (seconds since `epoch`).
    second: u64,
    counts: Map<u32>,
    /// Source -> the second its block ends.
    blocked: Map<u32>,
    /// Entries each table may hold (this guard's part of the node's bounds).
    cap: usize,
}

fn key(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Flood {
    /// The guard for a config, or `None` when `[flood]` is absent or `rps = 0`.
    pub fn new(config: &Config, epoch: Instant) -> Option<Self> {
        Self::part(config, epoch, 1)
    }

    /// One of `parts` guards that split the sources between them (by address): each holds
    /// its part of [`MAX_COUNTED`] / [`MAX_BLOCKED`], so together they stay in the bound.
    pub fn part(config: &Config, epoch: Instant, parts: usize) -> Option<Self> {
        let f = config.flood.as_ref().filter(|f| f.rps > 0)?;
        Some(Self {
            rps: f.rps,
            block_secs: u32::try_from(f.block.as_secs()).unwrap_or(u32::MAX),
            trusted: f.trusted.clone(),
            gateways: config.carriers.iter().flat_map(|c| c.gateways.iter().map(|g| g.addr.ip())).collect(),
            epoch,
            second: 0,
            counts: Map::default(),
            blocked: Map::default(),
            cap: MAX_COUNTED.min(MAX_BLOCKED) / parts.max(1),
        })
    }

    /// Counts one message from `ip` at `now` and says whether it may be processed.
    pub fn check(&mut self, now: Instant, ip: IpAddr) -> Verdict {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        if second != self.second {
            self.next_second(second);
        }
        let k = key(ip);
        if let Some(&until) = self.blocked.get(&k) {
            if second < u64::from(until) {
                return Verdict::Drop;
            }
            self.blocked.remove(&k);
        }
        let counted = self.counts.len();
        let count = match self.counts.get_mut(&k) {
            Some(c) => {
                *c = c.saturating_add(1);
                *c
            }
            None if counted < self.cap => {
                self.counts.insert(k, 1);
                1
            }
            None => return Verdict::Pass,
        };
        if count <= self.rps || self.exempt(ip) {
            return Verdict::Pass;
        }
        self.counts.remove(&k);
        if self.blocked.len() >= self.cap {
            return Verdict::Drop;
        }
        let until = second.saturating_add(u64::from(self.block_secs));
        self.blocked.insert(k, u32::try_from(until).unwrap_or(u32::MAX));
        Verdict::Blocked
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.gateways.contains(&ip) || self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// A new second: counts start over; blocks that ended are forgotten.
    fn next_second(&mut self, second: u64) {
        self.second = second;
        self.counts.clear();
        if self.counts.capacity() > 4096 {
            self.counts.shrink_to(4096);
        }
        if !self.blocked.is_empty() {
            self.blocked.retain(|_, until| u64::from(*until) > second);
        }
    }

    /// Sources blocked now.
    pub fn blocked(&self) -> usize {
        self.blocked.len()
    }

    /// How long a block lasts.
    pub fn block_time(&self) -> Duration {
        Duration::from_secs(u64::from(self.block_secs))
    }

    /// Approximate bytes held: both tables' buckets (key, value, control byte).
    pub fn heap_bytes(&self) -> usize {
        let per = std::mem::size_of::<(Key, u32)>() + 1;
        (self.counts.capacity() + self.blocked.capacity()) * per
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(t0: Instant) -> Flood {
        let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.2:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n[flood]\nrps = 10\nblock_seconds = 60\ntrusted = [\"10.0.0.0/8\"]\n";
        Flood::new(&Config::parse("t.toml", text).unwrap(), t0).unwrap()
    }

    #[test]
    fn over_the_rate_is_blocked_for_the_block_time() {
        let t0 = Instant::now();
        let mut f = guard(t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(f.check(t0, ip), Verdict::Pass);
        }
        assert_eq!(f.check(t0, ip), Verdict::Blocked, "the 11th in one second");
        assert_eq!(f.check(t0, ip), Verdict::Drop);
        assert_eq!(f.check(t0 + Duration::from_secs(59), ip), Verdict::Drop);
        assert_eq!(f.check(t0, "192.0.2.2".parse().unwrap()), Verdict::Pass, "others unaffected");
        assert_eq!(f.check(t0 + Duration::from_secs(61), ip), Verdict::Pass, "block over");
        assert_eq!(f.blocked(), 0);
    }

    #[test]
    fn gateways_and_trusted_are_never_blocked() {
        let t0 = Instant::now();
        let mut f = guard(t0);
        for ip in ["127.0.0.2", "10.1.2.3", "::ffff:10.1.2.3"] {
            let ip: IpAddr = ip.parse().unwrap();
            for _ in 0..100 {
                assert_eq!(f.check(t0, ip), Verdict::Pass, "{ip}");
            }
        }
    }

    #[test]
    fn a_steady_rate_under_the_limit_passes() {
        let t0 = Instant::now();
        let mut f = guard(t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..1000u64 {
            assert_eq!(f.check(t0 + Duration::from_millis(i * 101), ip), Verdict::Pass);
        }
    }

    #[test]
    fn memory_is_bounded_under_spoofed_sources() {
        let t0 = Instant::now();
        let mut f = guard(t0);
        f.rps = 1;
        // Each spoofed source sends two in one second: all get blocked, up to the bound.
        for i in 0..(MAX_BLOCKED as u32 + 1000) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            f.check(t0, ip);
            f.check(t0, ip);
        }
        assert_eq!(f.blocked(), MAX_BLOCKED);
        assert!(f.counts.len() <= MAX_COUNTED);
    }
}
