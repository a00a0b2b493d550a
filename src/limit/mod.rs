//! Capacity limiting: which limits apply to a new call ([`plan`]), and the store that checks
//! and reserves them all or nothing ([`Store`], in memory: [`memory::MemoryStore`]).
//!
//! Semantics (docs/limits.md): CPS is an exact sliding one-second window per key, channels a
//! count of calls admitted and not yet ended. A call must fit under every applicable limit;
//! a refused call takes nothing from any scope.

pub mod customers;
pub mod memory;
pub mod minute;
pub mod plan;
pub mod primary;
pub mod queue;
pub mod redis;
pub mod window;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;

pub use window::{Caps, Refusal};

/// Where a limit comes from (the contract's scopes). The declaration order is the order in
/// which a call's demands are listed and locked (see [`memory::MemoryStore`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Server,
    Customer,
    Ip,
    User,
    Route,
    Did,
    Carrier,
    Gateway,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Customer => "customer",
            Self::Ip => "ip",
            Self::User => "user",
            Self::Route => "route",
            Self::Carrier => "carrier",
            Self::Gateway => "gateway",
            Self::Did => "did",
        }
    }

    /// Scopes tied to where a call goes: a refusal there means "try the next carrier or
    /// gateway", not "refuse the call".
    pub fn is_egress(self) -> bool {
        matches!(self, Self::Carrier | Self::Gateway)
    }
}

/// The name within a scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyName {
    None,
    Ip(IpAddr),
    Text(Arc<str>),
}

/// One counter in the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitKey {
    pub scope: Scope,
    pub name: KeyName,
}

impl LimitKey {
    pub fn server() -> Self {
        Self { scope: Scope::Server, name: KeyName::None }
    }

    pub fn text(scope: Scope, name: &Arc<str>) -> Self {
        Self { scope, name: KeyName::Text(name.clone()) }
    }

    pub fn ip(ip: IpAddr) -> Self {
        Self { scope: Scope::Ip, name: KeyName::Ip(ip) }
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            KeyName::None => f.write_str(self.scope.as_str()),
            KeyName::Ip(ip) => write!(f, "{}:{ip}", self.scope.as_str()),
            KeyName::Text(t) => write!(f, "{}:{t}", self.scope.as_str()),
        }
    }
}

impl KeyName {
    /// The name as shown in logs, metrics and /status ("" for the server).
    pub fn label(&self) -> String {
        match self {
            Self::None => String::new(),
            Self::Ip(ip) => ip.to_string(),
            Self::Text(t) => t.to_string(),
        }
    }
}

/// One limit a call must fit under. A demand with no limits is still counted (channels and
/// admissions per second), for /status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    pub key: LimitKey,
    pub cps: Option<u32>,
    /// Calls per minute (sliding 60 s), with `cps` (both apply).
    pub cpm: Option<u32>,
    pub channels: Option<u32>,
    /// Carrier pacing: at most one admission per `1/cps` s.
    pub paced: bool,
    /// A limit in shadow mode: checked and counted, but a call over it is admitted (and the
    /// reservation names it in [`Reservation::would_reject`]).
    pub shadow: bool,
}

impl Demand {
    /// A key counted with no limit of its own.
    pub fn counted(key: LimitKey) -> Self {
        Self { key, ..Self::default() }
    }

    /// The limits as the key's counter applies them.
    pub fn caps(&self) -> Caps {
        Caps { cps: self.cps, cpm: self.cpm, channels: self.channels, paced: self.paced }
    }

    /// The same key with nothing enforced (a shared store's local mirror).
    pub fn unlimited(&self) -> Self {
        Self::counted(self.key.clone())
    }
}

impl Default for LimitKey {
    fn default() -> Self {
        Self::server()
    }
}

/// Channels held by an admitted call. Move-only: the one way to give it back is
/// [`Store::release`], which consumes it, so it cannot be released twice; dropping one that
/// still holds keys is a leak, caught by a debug assertion (and logged in release builds).
#[must_use = "a reservation holds channels until it is passed to Store::release"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    /// The keys counted in this node's memory (all of them for the in-memory store; this
    /// node's mirror of a shared reservation in cluster mode).
    keys: Vec<LimitKey>,
    /// The shared store's handle for the reservation (cluster mode), released idempotently.
    token: Option<String>,
    /// Shadow limits this call went over (it was admitted; they are logged and counted).
    would_reject: Vec<Rejection>,
}

impl Reservation {
    /// Made only by stores, for what they have just counted.
    pub(crate) fn new(keys: Vec<LimitKey>, token: Option<String>) -> Self {
        Self { keys, token, would_reject: Vec::new() }
    }

    /// The shadow limits the call went over when it was admitted.
    pub fn would_reject(&self) -> &[Rejection] {
        &self.would_reject
    }

    pub(crate) fn set_would_reject(&mut self, hits: Vec<Rejection>) {
        self.would_reject = hits;
    }

    pub fn keys(&self) -> &[LimitKey] {
        &self.keys
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub(crate) fn set_token(&mut self, token: String) {
        self.token = Some(token);
    }

    /// Empties the reservation into what a store must give back; only stores call this,
    /// inside `release`.
    pub(crate) fn take(mut self) -> (Vec<LimitKey>, Option<String>) {
        (std::mem::take(&mut self.keys), self.token.take())
    }

    /// Splits off the carrier/gateway keys (a failover moves them to another gateway).
    pub(crate) fn split_egress(&mut self) -> Self {
        let (egress, keep): (Vec<_>, Vec<_>) = self.keys.drain(..).partition(|k| k.scope.is_egress());
        self.keys = keep;
        Self::new(egress, None)
    }

    /// Takes over the keys of another reservation of the same call (the failover's new
    /// egress keys).
    pub(crate) fn absorb(&mut self, mut other: Self) {
        self.keys.append(&mut other.keys);
        debug_assert!(other.token.is_none(), "a shared reservation cannot be merged");
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.keys.is_empty() && self.token.is_none() {
            return;
        }
        if cfg!(debug_assertions) && !std::thread::panicking() {
            panic!("reservation dropped without release: {:?}", self.keys);
        }
        tracing::error!(event = "limits.leak", keys = ?self.keys, "reservation dropped without release");
    }
}

/// The limit that turned a call away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub key: LimitKey,
    pub kind: Refusal,
}

/// Check-and-reserve across every applicable limit, and release. In memory today; a shared
/// (Redis) store for a cluster implements the same two operations.
pub trait Store: Send + Sync {
    /// Admits a call under all `demands` or none. `count_cps = false` for a call already
    /// counted (an INVITE re-sent with credentials after 401/407): it takes channels only.
    fn admit(&self, now: Instant, demands: &[Demand], count_cps: bool) -> Result<Reservation, Rejection>;

    /// Admits without asking the shared store, as its `on_failure` says: for a call it did
    /// not answer in time (the SIP path never waits on it twice). A store that is not shared
    /// admits as always.
    fn admit_unshared(
        &self,
        now: Instant,
        demands: &[Demand],
        count_cps: bool,
    ) -> Result<Reservation, Rejection> {
        self.admit(now, demands, count_cps)
    }

    /// Returns the channels of a reservation (consumed: a reservation is released once).
    fn release(&self, now: Instant, reservation: Reservation);

    /// False while a shared store cannot be reached (limits then follow `on_failure`).
    fn healthy(&self) -> bool {
        true
    }

    /// True when admissions should not be made on the SIP path: the core parks the INVITE
    /// and asks through [`crate::proxy::Action::Admit`]; the answer comes back later.
    fn asynchronous(&self) -> bool {
        false
    }

    /// When a call this store refused under `demand`'s rate limits (CPS, CPM, pacing) would
    /// fit again, if it can say (a shared store cannot without a round trip: `None`, and the
    /// caller polls).
    fn opens_at(&self, now: Instant, demand: &Demand) -> Option<Instant> {
        let _ = (now, demand);
        None
    }

    /// Whether part of a reservation (the carrier/gateway keys) can be moved on failover.
    /// A shared store keeps the original egress accounting for the call instead.
    fn moves_egress(&self) -> bool {
        true
    }
}
