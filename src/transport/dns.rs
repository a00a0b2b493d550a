//! DNS gateways (RFC 3263): a gateway written as `sip:carrier.example.net` (or `sips:`,
//! with an optional port or `;transport=`) is found through NAPTR, then SRV, then A/AAAA,
//! tried by SRV priority and weight, and resolved again when its records' TTL ends.
//!
//! Resolution never happens on the SIP path. This module owns the configuration as the
//! file says it and the answers DNS gave; whenever either changes it hands the core an
//! *expanded* configuration in which each DNS gateway is replaced by the targets it
//! resolves to now (one gateway entry per target, so per-gateway limits and /status see
//! each), through the same swap as a reload. A name that does not resolve expands to no
//! gateway: the route fails over to its next carrier. A name server that does not answer
//! keeps the last answer until it does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::Shared;
use crate::config::{Config, DnsGateway, Gateway, GatewaySource, Listener};
use crate::peer::Transport;

/// An answer is used at least this long (a TTL of 0 would have sluice query in a loop)...
const MIN_TTL: Duration = Duration::from_secs(1);
/// ...and at most this long.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// A name with no records is asked again after this long.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// A name server that did not answer is asked again after this long.
const RETRY: Duration = Duration::from_secs(5);
/// The first resolution at start waits at most this long before calls are served.
const START_WAIT: Duration = Duration::from_secs(5);
/// At most this many targets per gateway name (and SRV records looked at): a zone is the
/// carrier's to write, and a huge answer must not become a huge gateway list.
const MAX_TARGETS: usize = 16;

/// What DNS said about one gateway URI.
#[derive(Debug, Clone)]
struct Answer {
    targets: Vec<Gateway>,
    /// When to ask again.
    next: Instant,
}

struct State {
    /// The configuration as the file says it (DNS gateways unexpanded).
    file: Arc<Config>,
    answers: HashMap<String, Answer>,
}

/// Why a name gave no targets.
#[derive(Debug)]
enum Failure {
    /// NXDOMAIN, or no usable records: no gateway.
    NoTargets(String),
    /// The name servers did not answer: keep what was known.
    Unreachable(String),
}

pub struct Dns {
    resolver: TokioResolver,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

impl Dns {
    /// A resolver asking `[server] dns`, or the system's name servers.
    pub fn new(config: Arc<Config>) -> Self {
        let provider = TokioConnectionProvider::default();
        let mut builder = if config.dns.is_empty() {
            TokioResolver::builder(provider.clone()).unwrap_or_else(|e| {
                tracing::warn!(event = "dns.no_system_config", error = %e, "no usable /etc/resolv.conf: DNS gateways will not resolve");
                TokioResolver::builder_with_config(ResolverConfig::new(), provider)
            })
        } else {
            let mut rc = ResolverConfig::new();
            for addr in &config.dns {
                rc.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
                rc.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(rc, provider)
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        opts.use_hosts_file = ResolveHosts::Never;
        Self {
            resolver: builder.build(),
            state: Mutex::new(State { file: config, answers: HashMap::new() }),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Resolves every DNS gateway once (waiting at most a few seconds) and returns the
    /// expanded configuration to start with.
    pub async fn start(&self) -> Arc<Config> {
        let _ = tokio::time::timeout(START_WAIT, self.resolve_due(true)).await;
        self.expanded()
    }

    /// A new configuration from the file (reload): expanded with what is known; names not
    /// seen before are resolved at once by [`Dns::run`].
    pub fn apply(&self, file: Arc<Config>) -> Arc<Config> {
        self.state.lock().file = file;
        self.changed.notify_one();
        self.expanded()
    }

    /// The file's configuration with each DNS gateway replaced by its current targets.
    pub fn expanded(&self) -> Arc<Config> {
        let state = self.state.lock();
        if !state.file.carriers.iter().any(|c| c.sources.iter().any(|s| matches!(s, GatewaySource::Dns(_)))) {
            return state.file.clone();
        }
        let mut config = (*state.file).clone();
        for carrier in &mut config.carriers {
            carrier.gateways = carrier
                .sources
                .iter()
                .flat_map(|s| match s {
                    GatewaySource::Fixed(g) => vec![g.clone()],
                    GatewaySource::Dns(d) => {
                        state.answers.get(&d.uri).map(|a| a.targets.clone()).unwrap_or_default()
                    }
                })
                .collect();
        }
        Arc::new(config)
    }

    /// Re-resolves names as their answers expire and hands every change to the core.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        loop {
            let next = self.state.lock().answers.values().map(|a| a.next).min();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = sleep => {}
            }
            if self.resolve_due(false).await {
                shared.node.reload(self.expanded());
            }
        }
    }

    /// Resolves the DNS gateways whose answer is due (or unknown). True if any changed.
    async fn resolve_due(&self, all: bool) -> bool {
        let (due, listeners): (Vec<DnsGateway>, Vec<Listener>) = {
            let state = self.state.lock();
            let now = Instant::now();
            let mut due: Vec<DnsGateway> = Vec::new();
            for c in &state.file.carriers {
                for s in &c.sources {
                    if let GatewaySource::Dns(d) = s {
                        let stale = state.answers.get(&d.uri).is_none_or(|a| a.next <= now);
                        if (all || stale) && !due.iter().any(|x| x.uri == d.uri) {
                            due.push(d.clone());
                        }
                    }
                }
            }
            (due, state.file.listen.clone())
        };
        let mut changed = false;
        for g in due {
            let result = self.resolve(&g, &listeners).await;
            let now = Instant::now();
            let mut state = self.state.lock();
            let old = state.answers.get(&g.uri).map(|a| a.targets.clone());
            let answer = match result {
                Ok((targets, ttl)) => Answer { targets, next: now + ttl.clamp(MIN_TTL, MAX_TTL) },
                Err(Failure::NoTargets(why)) => {
                    if old.as_ref().is_none_or(|o| !o.is_empty()) {
                        tracing::warn!(event = "dns.no_targets", gateway = %g.uri, error = %why, "gateway name gives no target: its carrier is skipped");
                    }
                    Answer { targets: Vec::new(), next: now + NEGATIVE_TTL }
                }
                Err(Failure::Unreachable(why)) => {
                    tracing::warn!(event = "dns.unreachable", gateway = %g.uri, error = %why, "name servers did not answer: keeping the last answer");
                    Answer { targets: old.clone().unwrap_or_default(), next: now + RETRY }
                }
            };
            if old.as_ref() != Some(&answer.targets) {
                let targets: Vec<&str> = answer.targets.iter().map(|t| t.uri.as_str()).collect();
                tracing::info!(event = "dns.resolved", gateway = %g.uri, targets = ?targets, "gateway targets changed");
                changed = true;
            }
            state.answers.insert(g.uri.clone(), answer);
        }
        changed
    }

    /// RFC 3263 §4: the targets of one gateway URI, in the order to try them, and how long
    /// the answer holds.
    async fn resolve(
        &self,
        g: &DnsGateway,
        listeners: &[Listener],
    ) -> Result<(Vec<Gateway>, Duration), Failure> {
        let usable =
            |t: Transport| (!g.secure || t == Transport::Tls) && listeners.iter().any(|l| l.transport == t);
        let default_transport = if g.secure { Transport::Tls } else { g.transport.unwrap_or(Transport::Udp) };
        // An IP address, or an explicit port: no NAPTR/SRV (§4.1, §4.2).
        if let Ok(ip) = g.host.parse::<IpAddr>() {
            let port = g.port.unwrap_or_else(|| default_port(default_transport));
            return Ok((
                target(g, default_transport, SocketAddr::new(ip, port), listeners).into_iter().collect(),
                MAX_TTL,
            ));
        }
        if let Some(port) = g.port {
            let (ips, ttl) = self.addresses(&g.host).await?;
            let targets = ips
                .into_iter()
                .filter_map(|ip| target(g, default_transport, SocketAddr::new(ip, port), listeners))
                .collect();
            return Ok((targets, ttl));
        }
        // Which SRV names to ask, in order: the transport given, else NAPTR, else each
        // transport sluice can use.
        let services: Vec<(Transport, String)> = match g.transport {
            Some(t) => vec![(t, srv_name(t, &g.host))],
            None => match self.naptr(&g.host).await? {
                Some(list) if !list.is_empty() => list,
                _ => [Transport::Udp, Transport::Tcp, Transport::Tls]
                    .into_iter()
                    .map(|t| (t, srv_name(t, &g.host)))
                    .collect(),
            },
        };
        let mut ttl = MAX_TTL;
        for (transport, name) in services.into_iter().filter(|(t, _)| usable(*t)) {
            let srv = match self.resolver.srv_lookup(name.as_str()).await {
                Ok(srv) => srv,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => continue,
                Err(e) => return Err(Failure::Unreachable(e.to_string())),
            };
            ttl = ttl.min(until(srv.as_lookup().valid_until()));
            let mut records: Vec<(u16, u16, u16, String)> = srv
                .iter()
                .map(|r| {
                    (
                        r.priority(),
                        r.weight(),
                        r.port(),
                        r.target().to_utf8().trim_end_matches('.').to_string(),
                    )
                })
                .filter(|r| !r.3.is_empty())
                .collect();
            order_srv(&mut records);
            records.truncate(MAX_TARGETS);
            let mut targets = Vec::new();
            for (_, _, port, host) in records {
                if targets.len() >= MAX_TARGETS {
                    break;
                }
                match self.addresses(&host).await {
                    Ok((ips, t)) => {
                        ttl = ttl.min(t);
                        targets.extend(
                            ips.into_iter()
                                .filter_map(|ip| target(g, transport, SocketAddr::new(ip, port), listeners)),
                        );
                    }
                    Err(Failure::NoTargets(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if !targets.is_empty() {
                targets.truncate(MAX_TARGETS);
                return Ok((targets, ttl));
            }
        }
        // No SRV at all (§4.2): the name's own addresses, default transport and port.
        if !usable(default_transport) {
            return Err(Failure::NoTargets(format!("no listener for {}", default_transport.scheme())));
        }
        let (ips, t) = self.addresses(&g.host).await?;
        let port = default_port(default_transport);
        let targets: Vec<Gateway> = ips
            .into_iter()
            .filter_map(|ip| target(g, default_transport, SocketAddr::new(ip, port), listeners))
            .collect();
        Ok((targets, ttl.min(t)))
    }

    /// NAPTR records for SIP (§4.1), as (transport, SRV name) in order; `None` when the name
    /// has none.
    async fn naptr(&self, host: &str) -> Result<Option<Vec<(Transport, String)>>, Failure> {
        let lookup = match self.resolver.lookup(host, RecordType::NAPTR).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() => return Ok(None),
            Err(e) if e.is_nx_domain() => return Err(Failure::NoTargets(format!("{host}: no such domain"))),
            Err(e) => return Err(Failure::Unreachable(e.to_string())),
        };
        let mut found: Vec<(u16, u16, Transport, String)> = lookup
            .iter()
            .filter_map(|r| match r {
                RData::NAPTR(n) if n.flags().eq_ignore_ascii_case(b"s") => {
                    let transport = match n.services().to_ascii_uppercase().as_slice() {
                        b"SIP+D2U" => Transport::Udp,
                        b"SIP+D2T" => Transport::Tcp,
                        b"SIPS+D2T" => Transport::Tls,
                        _ => return None,
                    };
                    let name = n.replacement().to_utf8();
                    Some((n.order(), n.preference(), transport, name))
                }
                _ => None,
            })
            .collect();
        found.sort_by_key(|f| (f.0, f.1));
        Ok(Some(found.into_iter().map(|f| (f.2, f.3)).collect()))
    }

    /// A and AAAA of a name, and how long they hold.
    async fn addresses(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), Failure> {
        match self.resolver.lookup_ip(host).await {
            Ok(l) => Ok((l.iter().take(MAX_TARGETS).collect(), until(l.valid_until()))),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Err(Failure::NoTargets(format!("{host}: no address")))
            }
            Err(e) => Err(Failure::Unreachable(e.to_string())),
        }
    }
}

fn until(valid_until: std::time::Instant) -> Duration {
    valid_until.saturating_duration_since(std::time::Instant::now())
}

fn default_port(t: Transport) -> u16 {
    if t == Transport::Tls { 5061 } else { 5060 }
}

fn srv_name(t: Transport, host: &str) -> String {
    match t {
        Transport::Udp => format!("_sip._udp.{host}."),
        Transport::Tcp => format!("_sip._tcp.{host}."),
        Transport::Tls => format!("_sips._tcp.{host}."),
    }
}

/// One resolved target, if sluice has a listener of its transport and address family. Its
/// certificate (TLS) must carry the gateway's domain, not the SRV target (RFC 5922 §4.2).
fn target(g: &DnsGateway, transport: Transport, addr: SocketAddr, listeners: &[Listener]) -> Option<Gateway> {
    listeners.iter().any(|l| l.transport == transport && l.addr.is_ipv4() == addr.is_ipv4()).then(|| {
        Gateway {
            transport,
            addr,
            uri: format!("{} -> {}://{addr}", g.uri, transport.scheme()),
            host: g.host.clone(),
        }
    })
}

/// RFC 2782: by priority, and within one priority a weighted random order (a weight-0
/// target last, unless it is the only kind).
fn order_srv(records: &mut [(u16, u16, u16, String)]) {
    records.sort_by_key(|r| r.0);
    let mut seed = [0u8; 8];
    let _ = getrandom::getrandom(&mut seed);
    let mut x = u64::from_le_bytes(seed) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut start = 0;
    while start < records.len() {
        let prio = records[start].0;
        let end = start + records[start..].iter().take_while(|r| r.0 == prio).count();
        for i in start..end {
            let total: u64 = records[i..end].iter().map(|r| u64::from(r.1) + 1).sum();
            let mut pick = next() % total.max(1);
            let mut chosen = i;
            for (j, r) in records[i..end].iter().enumerate() {
                let w = u64::from(r.1) + 1;
                if pick < w {
                    chosen = i + j;
                    break;
                }
                pick -= w;
            }
            records.swap(i, chosen);
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_order_is_by_priority_first() {
        for _ in 0..50 {
            let mut r = vec![
                (20, 0, 5060, "c".to_string()),
                (10, 50, 5060, "a".to_string()),
                (10, 50, 5060, "b".to_string()),
                (30, 0, 5060, "d".to_string()),
            ];
            order_srv(&mut r);
            let prios: Vec<u16> = r.iter().map(|x| x.0).collect();
            assert_eq!(prios, vec![10, 10, 20, 30]);
            assert_eq!((r[2].3.as_str(), r[3].3.as_str()), ("c", "d"));
        }
    }
}
