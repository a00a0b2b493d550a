//! Configuration: the operator's TOML file (`file`), validated into the [`Config`] the proxy
//! runs on. Validation collects every error, each naming file, line and key, so `sluice check`
//! reports a broken file in one pass.

mod file;
pub mod locate;
pub mod summary;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::{AuthRequire, LogFormat, Mode, OnFailure, Pair, RecordFormat};
use ipnet::IpNet;
use locate::Seg;

use crate::peer::{Transport, parse_endpoint};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}: {}", self.file, line, self.key, self.message),
            None => write!(f, "{}: {}: {}", self.file, self.key, self.message),
        }
    }
}

/// Every problem found in a config file; nothing of it is applied.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// The host (and optional port) the proxy writes into its Via and Record-Route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    pub host: String,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// As written in the config, for logs and /status.
    pub uri: String,
    /// The host as written: the name a TLS gateway's certificate is checked against (SNI).
    pub host: String,
}

/// Certificates for SIP over TLS (paths; read at load, on reload and when the listeners
/// start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The chain and key sluice presents on tls:// listeners.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA certificates for verifying TLS gateways; `None`: the system's roots.
    pub ca: Option<PathBuf>,
}

/// A gateway written as a SIP URI (`sip:carrier.example.net`, `sips:...`, with an optional
/// port and `;transport=`), found through DNS per RFC 3263 and re-resolved when its
/// records' TTL ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsGateway {
    /// As written.
    pub uri: String,
    pub host: String,
    pub port: Option<u16>,
    /// `sips:`: TLS only.
    pub secure: bool,
    /// `;transport=` when given.
    pub transport: Option<Transport>,
}

/// One entry of a carrier's `gateways` list, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewaySource {
    /// `udp://` / `tcp://` / `tls://` HOST:PORT: resolved once, at load.
    Fixed(Gateway),
    /// A SIP URI: its targets come from DNS.
    Dns(DnsGateway),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carrier {
    pub name: String,
    /// The gateways as configured.
    pub sources: Vec<GatewaySource>,
    /// The gateways calls are sent to, in order: the fixed ones, and for each DNS one the
    /// targets it resolves to now (none before its first answer, or when it has none).
    pub gateways: Vec<Gateway>,
    pub limits: Pair,
    pub gateway_limits: Pair,
    /// Calls leave evenly spaced: one per `1/cps` s (carrier) and `1/gateway_cps` s (gateway).
    pub pacing: bool,
    pub mode: Mode,
}

/// Index into [`Config::carriers`].
pub type CarrierId = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub carriers: Vec<CarrierId>,
    pub limits: Pair,
}

/// Routes by longest Request-URI user prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    by_prefix: HashMap<String, usize>,
    /// Distinct prefix lengths, longest first: a lookup probes only these.
    lengths: Vec<usize>,
}

impl RouteTable {
    fn new(routes: Vec<Route>) -> Self {
        let by_prefix: HashMap<String, usize> =
            routes.iter().enumerate().map(|(i, r)| (r.prefix.clone(), i)).collect();
        let mut lengths: Vec<usize> =
            by_prefix.keys().map(String::len).collect::<HashSet<_>>().into_iter().collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        Self { routes, by_prefix, lengths }
    }

    /// The route with the longest prefix of `number` (a dialed number with '+' removed).
    pub fn lookup(&self, number: &[u8]) -> Option<(usize, &Route)> {
        let number = std::str::from_utf8(number).ok()?;
        for &len in &self.lengths {
            if let Some(prefix) = number.get(..len) {
                if let Some(&i) = self.by_prefix.get(prefix) {
                    return Some((i, &self.routes[i]));
                }
            }
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub name: String,
    /// The account this one is a sub-account of: its calls also count against the parent's
    /// limits (and so on up).
    pub parent: Option<usize>,
    /// Every ancestor, nearest first (validated: known names, no cycles).
    pub ancestors: Vec<usize>,
    pub mode: Mode,
    pub ips: Vec<IpNet>,
    pub users: Vec<String>,
    pub limits: Pair,
    pub per_ip: Pair,
    pub per_user: Pair,
    pub priority: i32,
    /// The customer's own ingress routes; `None` means the global table applies.
    pub routes: Option<RouteTable>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Did {
    pub number: String,
    pub limits: Pair,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    pub limits: Pair,
    pub mode: Mode,
    pub per_ip: Pair,
    pub per_user: Pair,
    pub max_call: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow {
    pub status: u16,
    pub cps_reason: String,
    pub channels_reason: String,
    pub retry_after: u32,
    pub redirect: Vec<String>,
    pub queue: Duration,
    pub queue_depth: usize,
    pub queue_channels: bool,
    /// Dialed numbers ('+' stripped) that bypass CPS and channel limits (still counted).
    pub emergency: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub state_file: Option<PathBuf>,
    pub window_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub redis: String,
    pub node: String,
    pub on_failure: OnFailure,
    pub nodes: u32,
    pub timeout: Duration,
    pub heartbeat: Duration,
}

/// Digest authentication by sluice itself (`[auth]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub realm: String,
    /// The htdigest file; read at load and on every reload.
    pub credentials_file: PathBuf,
    /// The file's users of `realm` and their HA1s.
    pub credentials: crate::auth::Credentials,
    pub require: AuthRequire,
    pub nonce_lifetime: Duration,
}

/// Per-source request-rate protection (`[flood]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flood {
    /// Requests per second from one IP above which it is blocked; 0 = off.
    pub rps: u32,
    pub block: Duration,
    pub trusted: Vec<IpNet>,
}

/// Upper bounds of the file's durations and counts: every value the proxy adds to a clock or
/// sizes memory with stays far from any overflow. `check` and `run` refuse larger values.
pub mod bounds {
    pub const GATEWAY_TIMEOUT_MS: u64 = 300_000;
    pub const DRAIN_SECONDS: u64 = 3_600;
    pub const MAX_CALL_SECONDS: u64 = 604_800;
    pub const RETRY_AFTER: u32 = 86_400;
    pub const QUEUE_MS: u64 = 60_000;
    pub const QUEUE_DEPTH: usize = 1_000_000;
    pub const WINDOW_DAYS: u32 = 366;
    pub const HEARTBEAT_MS: u64 = 600_000;
    pub const NODES: u32 = 1_000;
    pub const NONCE_SECONDS: u64 = 86_400;
    pub const BLOCK_SECONDS: u64 = 86_400;
    pub const RPS: u32 = 10_000_000;
    /// A CPS limit keeps one timestamp per admission in the last second (8 bytes each).
    pub const CPS: u32 = 1_000_000;
    /// A CPM limit keeps one per admission in the last minute (4 bytes each: 40 MB per key
    /// at this bound, reached only at that admission rate).
    pub const CPM: u32 = 10_000_000;
    /// Sub-accounts nest at most this deep (each level is one more key per admission).
    pub const CUSTOMER_DEPTH: usize = 16;
    pub const CHANNELS: u32 = 100_000_000;
    pub const TCP_PER_IP: u32 = 10_000;
    /// More SIP workers than this buys nothing (each is a thread and a socket per listener).
    pub const WORKERS: u32 = 256;
}

/// A validated configuration. Built only by [`Config::parse`]/[`Config::load`], so every
/// reference (carrier names in routes, listeners for gateway transports) is known to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: Option<PathBuf>,
    pub listen: Vec<Listener>,
    pub advertise: Advertise,
    pub admin: Option<SocketAddr>,
    pub allow_unknown: bool,
    pub gateway_timeout: Duration,
    pub drain: Duration,
    pub max_message_bytes: usize,
    /// TCP connections one source IP may hold open to sluice (inbound).
    pub max_tcp_per_ip: u32,
    /// SIP worker threads (`[server] workers`; 0 = one per CPU core). See
    /// [`Config::worker_threads`].
    pub workers: u32,
    pub tls: TlsFiles,
    /// Name servers for DNS gateways (`[server] dns`); empty: the system's.
    pub dns: Vec<SocketAddr>,
    /// Where the key of Path flow tokens is kept (`[server] flow_key_file`).
    pub flow_key_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub carriers: Vec<Carrier>,
    pub routes: RouteTable,
    pub limits: ServerLimits,
    pub customers: Vec<Customer>,
    pub dids: Vec<Did>,
    pub overflow: Overflow,
    pub usage: Usage,
    pub cluster: Option<Cluster>,
    pub auth: Option<Auth>,
    pub flood: Option<Flood>,
    /// The call records file and its format (`[records]`, added by sluice).
    pub records: Option<(PathBuf, RecordFormat)>,
    /// Bearer token the admin API requires on every path but GET /health; `None`: no token.
    pub admin_token: Option<String>,
}

/// Collects errors with their key paths while validating.
struct Errors<'s> {
    file: String,
    source: &'s str,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn push(&mut self, path: &[Seg], message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            line: locate::line_of(self.source, path),
            key: locate::render(path),
            message: message.into(),
        });
    }
}

impl Config {
    /// How many SIP worker threads (and UDP sockets per listener) to run: `workers`, or
    /// one per CPU core when it is 0.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n as usize,
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.display().to_string(),
                line: None,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        let mut config = Self::parse(&path.display().to_string(), &source)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Validates config text; `file` names it in errors.
    pub fn parse(file: &str, source: &str) -> Result<Self, ConfigErrors> {
        let raw: file::File = toml::from_str(source).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => {
                    let text = source.get(span.clone()).unwrap_or("").trim();
                    let key = if text.len() <= 40 && !text.contains('\n') {
                        text.to_string()
                    } else {
                        String::new()
                    };
                    (Some(locate::line_at(source, span.start)), key)
                }
                None => (None, String::new()),
            };
            ConfigErrors(vec![ConfigError {
                file: file.to_string(),
                line,
                key,
                message: e.message().to_string(),
            }])
        })?;
        let mut errors = Errors { file: file.to_string(), source, list: Vec::new() };
        let config = validate(raw, &mut errors);
        if errors.list.is_empty() { Ok(config) } else { Err(ConfigErrors(errors.list)) }
    }

    /// The Via sent-by / Record-Route host:port for a transport.
    pub fn sent_by(&self, transport: Transport) -> String {
        let port = self
            .advertise
            .port
            .or_else(|| self.listen.iter().find(|l| l.transport == transport).map(|l| l.addr.port()));
        match port {
            Some(p) => format!("{}:{}", self.advertise.host, p),
            None => self.advertise.host.clone(),
        }
    }

    /// Whose ingress routes a customer's calls follow: its own, else its nearest ancestor's
    /// that has some; `None` means the global `[[route]]` table.
    pub fn route_owner(&self, customer: usize) -> Option<usize> {
        let c = self.customers.get(customer)?;
        std::iter::once(customer)
            .chain(c.ancestors.iter().copied())
            .find(|&id| self.customers.get(id).is_some_and(|c| c.routes.is_some()))
    }

    /// A customer and its ancestors, the customer first.
    pub fn customer_chain(&self, customer: usize) -> impl Iterator<Item = &Customer> {
        let ancestors = self.customers.get(customer).map(|c| c.ancestors.as_slice()).unwrap_or_default();
        std::iter::once(customer).chain(ancestors.iter().copied()).filter_map(|id| self.customers.get(id))
    }

    pub fn carrier_by_name(&self, name: &str) -> Option<CarrierId> {
        self.carriers.iter().position(|c| c.name == name)
    }
}

use Seg::{Index, Key};

fn validate(raw: file::File, e: &mut Errors<'_>) -> Config {
    let mut listen = Vec::new();
    if raw.server.listen.is_empty() {
        e.push(&[Key("server"), Key("listen")], "at least one listen address is needed");
    }
    for (i, text) in raw.server.listen.iter().enumerate() {
        match parse_endpoint(text) {
            Ok((transport, addr)) => {
                if listen.contains(&Listener { transport, addr }) {
                    e.push(&[Key("server"), Key("listen"), Index(i)], format!("`{text}` is listed twice"));
                }
                listen.push(Listener { transport, addr });
            }
            Err(msg) => e.push(&[Key("server"), Key("listen"), Index(i)], msg),
        }
    }
    let advertise = match &raw.server.advertise {
        Some(text) => parse_advertise(text).unwrap_or_else(|msg| {
            e.push(&[Key("server"), Key("advertise")], msg);
            Advertise { host: String::new(), port: None }
        }),
        None => {
            let first = listen.first().map(|l| l.addr.ip());
            if first.is_some_and(|ip| ip.is_unspecified()) {
                e.push(&[Key("server"), Key("advertise")], "listening on an unspecified address (0.0.0.0 / ::) needs `advertise`: the address peers can reach");
            }
            Advertise { host: first.map(host_text).unwrap_or_default(), port: None }
        }
    };
    let admin = raw.server.admin.as_ref().and_then(|text| {
        text.parse::<SocketAddr>()
            .map_err(|_| e.push(&[Key("server"), Key("admin")], format!("`{text}` is not HOST:PORT")))
            .ok()
    });
    if !(100..=bounds::GATEWAY_TIMEOUT_MS).contains(&raw.server.gateway_timeout_ms) {
        e.push(
            &[Key("server"), Key("gateway_timeout_ms")],
            format!("must be between 100 and {}", bounds::GATEWAY_TIMEOUT_MS),
        );
    }
    at_most(e, &[Key("server"), Key("drain_seconds")], raw.server.drain_seconds, bounds::DRAIN_SECONDS);
    if !(1..=bounds::TCP_PER_IP).contains(&raw.server.max_tcp_per_ip) {
        e.push(
            &[Key("server"), Key("max_tcp_per_ip")],
            format!("must be between 1 and {}", bounds::TCP_PER_IP),
        );
    }
    at_most(e, &[Key("server"), Key("workers")], u64::from(raw.server.workers), u64::from(bounds::WORKERS));
    let tls = tls_files(&raw.server, &listen, e);
    let mut dns = Vec::new();
    for (i, text) in raw.server.dns.iter().enumerate() {
        match text.parse::<SocketAddr>() {
            Ok(a) => dns.push(a),
            Err(_) => e.push(&[Key("server"), Key("dns"), Index(i)], format!("`{text}` is not IP:PORT")),
        }
    }
    if !(1..=bounds::MAX_CALL_SECONDS).contains(&raw.limits.max_call_seconds) {
        e.push(
            &[Key("limits"), Key("max_call_seconds")],
            format!("must be between 1 and {} (7 days)", bounds::MAX_CALL_SECONDS),
        );
    }
    let server_shadow = raw.limits.mode == Mode::Shadow;
    let server_limits = pair(raw.limits.cps, raw.limits.cpm, raw.limits.channels, raw.limits.mode);
    check_pair(e, &[Key("limits")], server_limits);
    let global_per_ip = raw.limits.per_ip.map(|p| Pair { shadow: server_shadow, ..p });
    let global_per_user = raw.limits.per_user.map(|p| Pair { shadow: server_shadow, ..p });
    for (name, pair) in [("per_ip", raw.limits.per_ip), ("per_user", raw.limits.per_user)] {
        if let Some(p) = pair {
            check_pair(e, &[Key("limits"), Key(name)], p);
        }
    }
    let admin_token = (!raw.server.admin_token.is_empty()).then(|| raw.server.admin_token.clone());
    if admin_token.as_ref().is_some_and(|t| t.len() < 16 || t.bytes().any(|b| !b.is_ascii_graphic())) {
        e.push(&[Key("server"), Key("admin_token")], "must be at least 16 visible ASCII characters");
    }
    if !(1024..=1 << 20).contains(&raw.server.max_message_bytes) {
        e.push(&[Key("server"), Key("max_message_bytes")], "must be between 1024 and 1048576");
    }
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        e.push(&[Key("log"), Key("level")], format!("`{}` is not a tracing filter", raw.log.level));
    }

    let mut carriers = Vec::new();
    let mut names = HashSet::new();
    for (ci, c) in raw.carrier.iter().enumerate() {
        if c.name.is_empty() || !names.insert(c.name.clone()) {
            e.push(
                &[Key("carrier"), Index(ci), Key("name")],
                format!("carrier name `{}` is empty or used twice", c.name),
            );
        }
        if c.gateways.is_empty() {
            e.push(&[Key("carrier"), Index(ci), Key("gateways")], "a carrier needs at least one gateway");
        }
        let mut gateways = Vec::new();
        let mut sources = Vec::new();
        for (gi, text) in c.gateways.iter().enumerate() {
            let path = [Key("carrier"), Index(ci), Key("gateways"), Index(gi)];
            if text.starts_with("sip:") || text.starts_with("sips:") {
                match dns_gateway(text) {
                    Ok(g) => {
                        let wanted = match (g.secure, g.transport) {
                            (true, _) => Some(Transport::Tls),
                            (false, t) => t,
                        };
                        if let Some(t) = wanted.filter(|t| !listen.iter().any(|l| l.transport == *t)) {
                            e.push(&path, format!("no {} listener to reach `{text}`", t.scheme()));
                        }
                        sources.push(GatewaySource::Dns(g));
                    }
                    Err(msg) => e.push(&path, msg),
                }
                continue;
            }
            match parse_endpoint(text) {
                Ok((transport, addr)) => {
                    if !listen.iter().any(|l| l.transport == transport && l.addr.is_ipv4() == addr.is_ipv4())
                    {
                        e.push(
                            &path,
                            format!(
                                "no {} listener of the same IP family to reach `{text}`",
                                transport.scheme()
                            ),
                        );
                    }
                    let host = crate::peer::endpoint_host(text).to_string();
                    let gateway = Gateway { transport, addr, uri: text.clone(), host };
                    sources.push(GatewaySource::Fixed(gateway.clone()));
                    gateways.push(gateway);
                }
                Err(msg) => e.push(&path, msg),
            }
        }
        let limits = pair(c.cps, c.cpm, c.channels, c.mode);
        let gateway_limits = pair(c.gateway_cps, c.gateway_cpm, c.gateway_channels, c.mode);
        check_pair(e, &[Key("carrier"), Index(ci)], limits);
        check_pair(e, &[Key("carrier"), Index(ci)], gateway_limits);
        if c.pacing && c.cps.is_none() && c.gateway_cps.is_none() {
            e.push(
                &[Key("carrier"), Index(ci), Key("pacing")],
                "pacing needs `cps` or `gateway_cps` (the rate to space calls at)",
            );
        }
        carriers.push(Carrier {
            name: c.name.clone(),
            sources,
            gateways,
            limits,
            gateway_limits,
            pacing: c.pacing,
            mode: c.mode,
        });
    }

    let routes = route_table(&raw.route, &carriers, &[Key("route")], e);
    if raw.route.is_empty() && !raw.customer.iter().any(|c| !c.route.is_empty()) {
        e.push(&[Key("route")], "no [[route]]: no call could go anywhere");
    }

    let mut customers = Vec::new();
    let mut names = HashSet::new();
    let mut seen_ips: HashMap<IpNet, String> = HashMap::new();
    let mut seen_users: HashMap<String, String> = HashMap::new();
    for (ci, c) in raw.customer.iter().enumerate() {
        if c.name.is_empty() || !names.insert(c.name.clone()) {
            e.push(
                &[Key("customer"), Index(ci), Key("name")],
                format!("customer name `{}` is empty or used twice", c.name),
            );
        }
        for (ii, net) in c.ips.iter().enumerate() {
            if let Some(other) = seen_ips.insert(net.trunc(), c.name.clone()) {
                e.push(
                    &[Key("customer"), Index(ci), Key("ips"), Index(ii)],
                    format!("`{net}` is already customer `{other}`'s"),
                );
            }
        }
        for (ui, user) in c.users.iter().enumerate() {
            if let Some(other) = seen_users.insert(user.clone(), c.name.clone()) {
                e.push(
                    &[Key("customer"), Index(ci), Key("users"), Index(ui)],
                    format!("`{user}` is already customer `{other}`'s"),
                );
            }
        }
        let limits = pair(c.cps, c.cpm, c.channels, c.mode);
        check_pair(e, &[Key("customer"), Index(ci)], limits);
        for (name, pair) in [("per_ip", c.per_ip), ("per_user", c.per_user)] {
            if let Some(p) = pair {
                check_pair(e, &[Key("customer"), Index(ci), Key(name)], p);
            }
        }
        let own = [Key("customer"), Index(ci), Key("route")];
        let routes = (!c.route.is_empty()).then(|| route_table(&c.route, &carriers, &own, e));
        let shadow = c.mode == Mode::Shadow;
        customers.push(Customer {
            name: c.name.clone(),
            parent: None,
            ancestors: Vec::new(),
            mode: c.mode,
            ips: c.ips.iter().map(IpNet::trunc).collect(),
            users: c.users.clone(),
            limits,
            per_ip: c.per_ip.map(|p| Pair { shadow, ..p }).or(global_per_ip).unwrap_or_default(),
            per_user: c.per_user.map(|p| Pair { shadow, ..p }).or(global_per_user).unwrap_or_default(),
            priority: c.priority,
            routes,
        });
    }
    link_parents(&raw.customer, &mut customers, global_per_ip, global_per_user, e);

    let mut dids = Vec::new();
    let mut numbers = HashSet::new();
    for (di, d) in raw.did.iter().enumerate() {
        let number = d.number.strip_prefix('+').unwrap_or(&d.number).to_string();
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'#') {
            e.push(
                &[Key("did"), Index(di), Key("number")],
                format!("`{}` is not a dialable number", d.number),
            );
        }
        if !numbers.insert(number.clone()) {
            e.push(&[Key("did"), Index(di), Key("number")], format!("`{}` is listed twice", d.number));
        }
        let limits = pair(d.cps, d.cpm, d.channels, d.mode);
        check_pair(e, &[Key("did"), Index(di)], limits);
        dids.push(Did { number, limits });
    }

    let o = &raw.overflow;
    if ![503, 486, 480, 403].contains(&o.status) {
        e.push(&[Key("overflow"), Key("status")], "must be 503, 486, 480 or 403");
    }
    for (name, reason) in [("cps_reason", &o.cps_reason), ("channels_reason", &o.channels_reason)] {
        if reason.is_empty() || reason.bytes().any(|b| b.is_ascii_control()) {
            e.push(&[Key("overflow"), Key(name)], "must be a non-empty phrase without control characters");
        }
    }
    let mut redirect = Vec::with_capacity(o.redirect.len());
    for (i, contact) in o.redirect.iter().enumerate() {
        match redirect_contact(contact) {
            Some(c) => redirect.push(c),
            None => e.push(
                &[Key("overflow"), Key("redirect"), Index(i)],
                format!("`{contact}` is not a sip:, sips: or tel: URI or name-addr"),
            ),
        }
    }
    if o.queue_depth == 0 && o.queue_ms > 0 {
        e.push(&[Key("overflow"), Key("queue_depth")], "must be at least 1 when queue_ms is set");
    }
    at_most(e, &[Key("overflow"), Key("queue_ms")], o.queue_ms, bounds::QUEUE_MS);
    at_most(e, &[Key("overflow"), Key("queue_depth")], o.queue_depth as u64, bounds::QUEUE_DEPTH as u64);
    at_most(
        e,
        &[Key("overflow"), Key("retry_after")],
        u64::from(o.retry_after),
        u64::from(bounds::RETRY_AFTER),
    );
    let usage = match &raw.usage {
        Some(u) => {
            if !(1..=bounds::WINDOW_DAYS).contains(&u.window_days) {
                e.push(
                    &[Key("usage"), Key("window_days")],
                    format!("must be between 1 and {}", bounds::WINDOW_DAYS),
                );
            }
            Usage { state_file: u.state_file.clone(), window_days: u.window_days }
        }
        None => Usage { state_file: None, window_days: 30 },
    };
    let cluster = raw.cluster.as_ref().map(|c| {
        if crate::limit::primary::is_sentinel_url(&c.redis) {
            if let Err(why) = crate::limit::primary::parse_sentinel_url(&c.redis) {
                e.push(&[Key("cluster"), Key("redis")], format!("Sentinel URL: {why}"));
            }
        } else if !(c.redis.starts_with("redis://") || c.redis.starts_with("rediss://")) {
            e.push(
                &[Key("cluster"), Key("redis")],
                "must be a redis:// URL or redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB]",
            );
        }
        if !(1..=bounds::NODES).contains(&c.nodes) {
            e.push(&[Key("cluster"), Key("nodes")], format!("must be between 1 and {}", bounds::NODES));
        }
        let node = c.node.clone().unwrap_or_else(host_name);
        if node.is_empty() {
            e.push(&[Key("cluster"), Key("node")], "must not be empty");
        }
        if !(1..=5000).contains(&c.timeout_ms) {
            e.push(&[Key("cluster"), Key("timeout_ms")], "must be between 1 and 5000");
        }
        if !(50..=bounds::HEARTBEAT_MS).contains(&c.heartbeat_ms) {
            e.push(
                &[Key("cluster"), Key("heartbeat_ms")],
                format!("must be between 50 and {}", bounds::HEARTBEAT_MS),
            );
        }
        Cluster {
            redis: c.redis.clone(),
            node,
            on_failure: c.on_failure,
            nodes: c.nodes,
            timeout: Duration::from_millis(c.timeout_ms),
            heartbeat: Duration::from_millis(c.heartbeat_ms),
        }
    });

    let auth = raw.auth.as_ref().map(|a| auth_section(a, e));
    let flood = raw.flood.as_ref().map(|f| {
        at_most(e, &[Key("flood"), Key("rps")], u64::from(f.rps), u64::from(bounds::RPS));
        if !(1..=bounds::BLOCK_SECONDS).contains(&f.block_seconds) {
            e.push(
                &[Key("flood"), Key("block_seconds")],
                format!("must be between 1 and {}", bounds::BLOCK_SECONDS),
            );
        }
        Flood {
            rps: f.rps,
            block: Duration::from_secs(f.block_seconds),
            trusted: f.trusted.iter().map(IpNet::trunc).collect(),
        }
    });

    Config {
        path: None,
        listen,
        advertise,
        admin,
        allow_unknown: raw.server.allow_unknown,
        gateway_timeout: Duration::from_millis(raw.server.gateway_timeout_ms),
        drain: Duration::from_secs(raw.server.drain_seconds),
        max_message_bytes: raw.server.max_message_bytes,
        max_tcp_per_ip: raw.server.max_tcp_per_ip,
        workers: raw.server.workers,
        tls,
        dns,
        flow_key_file: raw.server.flow_key_file.clone(),
        log_format: raw.log.format,
        log_level: raw.log.level.clone(),
        carriers,
        routes,
        limits: ServerLimits {
            limits: server_limits,
            mode: raw.limits.mode,
            per_ip: global_per_ip.unwrap_or_default(),
            per_user: global_per_user.unwrap_or_default(),
            max_call: Duration::from_secs(raw.limits.max_call_seconds),
        },
        customers,
        dids,
        overflow: Overflow {
            status: o.status,
            cps_reason: o.cps_reason.clone(),
            channels_reason: o.channels_reason.clone(),
            retry_after: o.retry_after,
            redirect,
            queue: Duration::from_millis(o.queue_ms),
            queue_depth: o.queue_depth,
            queue_channels: o.queue_channels,
            emergency: o.emergency.iter().map(|n| n.strip_prefix('+').unwrap_or(n).to_string()).collect(),
        },
        usage,
        cluster,
        auth,
        flood,
        records: raw.records.as_ref().map(|r| (r.file.clone(), r.format)),
        admin_token,
    }
}

/// A 302 Contact as it goes on the wire: a name-addr (`"Alt" <sip:...>`) as written, a bare
/// URI in angle brackets, so its `;parameters` stay URI parameters (RFC 3261 §20.10).
fn redirect_contact(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() || text.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    if text.contains('<') {
        let na = crate::sip::name_addr::NameAddr::parse(text.as_bytes())?;
        crate::sip::uri::Uri::parse(text.as_bytes().get(na.uri.clone())?).ok()?;
        return Some(text.to_string());
    }
    if text.contains(['>', ',', ' ', '"']) {
        return None;
    }
    crate::sip::uri::Uri::parse(text.as_bytes()).ok()?;
    Some(format!("<{text}>"))
}

/// `value <= max`, else an error naming the bound.
fn at_most(e: &mut Errors<'_>, path: &[Seg], value: u64, max: u64) {
    if value > max {
        e.push(path, format!("must be at most {max}"));
    }
}

/// A table's `cps` / `channels` within the bounds the limiter is sized for.
fn check_pair(e: &mut Errors<'_>, base: &[Seg], pair: Pair) {
    let at = |key| {
        let mut p = base.to_vec();
        p.push(Key(key));
        p
    };
    if let Some(cps) = pair.cps {
        at_most(e, &at("cps"), u64::from(cps), u64::from(bounds::CPS));
    }
    if let Some(cpm) = pair.cpm {
        at_most(e, &at("cpm"), u64::from(cpm), u64::from(bounds::CPM));
    }
    if let Some(channels) = pair.channels {
        at_most(e, &at("channels"), u64::from(channels), u64::from(bounds::CHANNELS));
    }
}

/// `tls_cert` / `tls_key` / `tls_ca`: a tls:// listener needs the first two; every file
/// named must load (the error names the key's line).
fn tls_files(server: &file::Server, listen: &[Listener], e: &mut Errors<'_>) -> TlsFiles {
    let files =
        TlsFiles { cert: server.tls_cert.clone(), key: server.tls_key.clone(), ca: server.tls_ca.clone() };
    let listens_tls = listen.iter().any(|l| l.transport == Transport::Tls);
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            if let Err(why) = crate::transport::tls::server_config(cert, key) {
                let at = if why.is_about_key() { "tls_key" } else { "tls_cert" };
                e.push(&[Key("server"), Key(at)], why.to_string());
            }
        }
        (None, None) if !listens_tls => {}
        (None, _) => {
            e.push(&[Key("server"), Key("tls_cert")], "a tls:// listener needs tls_cert and tls_key")
        }
        (_, None) => e.push(&[Key("server"), Key("tls_key")], "a tls:// listener needs tls_cert and tls_key"),
    }
    if let Some(ca) = &files.ca {
        if let Err(why) = crate::transport::tls::client_config(Some(ca)) {
            e.push(&[Key("server"), Key("tls_ca")], why.to_string());
        }
    }
    files
}

/// `sip:HOST[:PORT][;transport=udp|tcp|tls]` or `sips:HOST[:PORT]` (other URI parameters are
/// ignored; a user part is not allowed: a gateway is a host).
fn dns_gateway(text: &str) -> Result<DnsGateway, String> {
    let (secure, rest) = match text.strip_prefix("sips:") {
        Some(r) => (true, r),
        None => (false, text.strip_prefix("sip:").unwrap_or(text)),
    };
    let mut parts = rest.split(';');
    let hostport = parts.next().unwrap_or_default();
    if hostport.is_empty() || hostport.contains('@') {
        return Err(format!("`{text}`: a gateway URI is sip:HOST[:PORT] or sips:HOST[:PORT]"));
    }
    let mut transport = None;
    for p in parts {
        if let Some(t) = p.strip_prefix("transport=") {
            transport = Some(match t.to_ascii_lowercase().as_str() {
                "udp" => Transport::Udp,
                "tcp" => Transport::Tcp,
                "tls" => Transport::Tls,
                other => return Err(format!("`{text}`: transport `{other}` is not udp, tcp or tls")),
            });
        }
    }
    if secure && transport.is_some_and(|t| t != Transport::Tls) {
        return Err(format!("`{text}`: a sips: gateway is reached over TLS only"));
    }
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']').ok_or_else(|| format!("`{text}`: unclosed IPv6 literal"))?;
            (h, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| format!("`{text}`: bad port"))?),
        None => None,
    };
    Ok(DnsGateway { uri: text.to_string(), host: host.to_ascii_lowercase(), port, secure, transport })
}

/// A table's limits as the planner applies them.
fn pair(cps: Option<u32>, cpm: Option<u32>, channels: Option<u32>, mode: Mode) -> Pair {
    Pair { cps, cpm, channels, shadow: mode == Mode::Shadow }
}

/// Resolves `parent` names into each customer's ancestor chain. An unknown parent, a cycle
/// or a chain deeper than [`bounds::CUSTOMER_DEPTH`] is an error at that customer's
/// `parent` line. A sub-account that sets no `per_ip` / `per_user` of its own takes its
/// nearest ancestor's before the `[limits]` default.
fn link_parents(
    raw: &[file::Customer],
    customers: &mut [Customer],
    global_per_ip: Option<Pair>,
    global_per_user: Option<Pair>,
    e: &mut Errors<'_>,
) {
    let index: HashMap<&str, usize> = raw.iter().enumerate().map(|(i, c)| (c.name.as_str(), i)).collect();
    for (ci, c) in raw.iter().enumerate() {
        let Some(parent) = &c.parent else { continue };
        let at = [Key("customer"), Index(ci), Key("parent")];
        match index.get(parent.as_str()) {
            Some(&p) if p == ci => e.push(&at, "a customer cannot be its own parent"),
            Some(&p) => customers[ci].parent = Some(p),
            None => e.push(&at, format!("no [[customer]] named `{parent}`")),
        }
    }
    for ci in 0..customers.len() {
        let mut chain = Vec::new();
        let mut next = customers[ci].parent;
        while let Some(p) = next {
            if p == ci || chain.contains(&p) {
                let at = [Key("customer"), Index(ci), Key("parent")];
                e.push(&at, format!("parent chain of `{}` loops back on itself", customers[ci].name));
                chain.clear();
                break;
            }
            if chain.len() == bounds::CUSTOMER_DEPTH {
                let at = [Key("customer"), Index(ci), Key("parent")];
                e.push(&at, format!("sub-accounts nest at most {} deep", bounds::CUSTOMER_DEPTH));
                chain.clear();
                break;
            }
            chain.push(p);
            next = customers[p].parent;
        }
        let inherited =
            |own: Option<Pair>, get: fn(&file::Customer) -> Option<Pair>, global: Option<Pair>| {
                own.or_else(|| {
                    chain.iter().find_map(|&a| {
                        get(&raw[a]).map(|p| Pair { shadow: customers[a].mode == Mode::Shadow, ..p })
                    })
                })
                .or(global)
                .unwrap_or_default()
            };
        let shadow = customers[ci].mode == Mode::Shadow;
        let own_ip = raw[ci].per_ip.map(|p| Pair { shadow, ..p });
        let own_user = raw[ci].per_user.map(|p| Pair { shadow, ..p });
        let per_ip = inherited(own_ip, |c| c.per_ip, global_per_ip);
        let per_user = inherited(own_user, |c| c.per_user, global_per_user);
        let c = &mut customers[ci];
        c.per_ip = per_ip;
        c.per_user = per_user;
        c.ancestors = chain;
    }
}

/// `[auth]`: the realm, the credentials file (read now; a reload reads it again) and the
/// nonce lifetime.
fn auth_section(a: &file::Auth, e: &mut Errors<'_>) -> Auth {
    if a.realm.is_empty() || a.realm.bytes().any(|b| b == b'"' || b == b'\\' || b.is_ascii_control()) {
        e.push(
            &[Key("auth"), Key("realm")],
            "must be non-empty, without quotes, backslashes or control characters",
        );
    }
    if !(1..=bounds::NONCE_SECONDS).contains(&a.nonce_seconds) {
        e.push(
            &[Key("auth"), Key("nonce_seconds")],
            format!("must be between 1 and {}", bounds::NONCE_SECONDS),
        );
    }
    let credentials = match std::fs::read_to_string(&a.credentials) {
        Ok(text) => match crate::auth::credentials::parse(&text, &a.realm) {
            Ok(map) => map,
            Err(line) => {
                e.push(
                    &[Key("auth"), Key("credentials")],
                    format!(
                        "{}:{line}: not `user:realm:HA1` with a 32 or 64 hex digit HA1",
                        a.credentials.display()
                    ),
                );
                crate::auth::Credentials::default()
            }
        },
        Err(err) => {
            e.push(
                &[Key("auth"), Key("credentials")],
                format!("cannot read {}: {err}", a.credentials.display()),
            );
            crate::auth::Credentials::default()
        }
    };
    Auth {
        realm: a.realm.clone(),
        credentials_file: a.credentials.clone(),
        credentials,
        require: a.require,
        nonce_lifetime: Duration::from_secs(a.nonce_seconds),
    }
}

fn route_table(raw: &[file::Route], carriers: &[Carrier], base: &[Seg], e: &mut Errors<'_>) -> RouteTable {
    let mut routes = Vec::new();
    let mut prefixes = HashSet::new();
    for (ri, r) in raw.iter().enumerate() {
        let at = |key| {
            let mut p = base.to_vec();
            p.push(Index(ri));
            p.push(Key(key));
            p
        };
        let prefix = r.prefix.strip_prefix('+').unwrap_or(&r.prefix).to_string();
        if !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'#') {
            e.push(&at("prefix"), format!("`{}` is not a number prefix", r.prefix));
        }
        if !prefixes.insert(prefix.clone()) {
            e.push(&at("prefix"), format!("prefix `{}` is used twice", r.prefix));
        }
        if r.carriers.is_empty() {
            e.push(&at("carriers"), "a route needs at least one carrier");
        }
        let mut ids = Vec::new();
        for (i, name) in r.carriers.iter().enumerate() {
            match carriers.iter().position(|c| &c.name == name) {
                Some(id) => ids.push(id),
                None => {
                    let mut p = at("carriers");
                    p.push(Index(i));
                    e.push(&p, format!("no [[carrier]] named `{name}`"));
                }
            }
        }
        let limits = pair(r.cps, r.cpm, r.channels, r.mode);
        let mut table = base.to_vec();
        table.push(Index(ri));
        check_pair(e, &table, limits);
        routes.push(Route { prefix, carriers: ids, limits });
    }
    RouteTable::new(routes)
}

fn parse_advertise(text: &str) -> Result<Advertise, String> {
    if text.is_empty() || text.contains(['<', '>', ';', ' ', '@']) {
        return Err(format!("`{text}` is not HOST or HOST:PORT"));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Advertise { host: host_text(addr.ip()), port: Some(addr.port()) });
    }
    if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(Advertise { host: host_text(ip), port: None });
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse::<u16>().map_err(|_| format!("`{text}`: bad port"))?;
            Ok(Advertise { host: host.to_string(), port: Some(port) })
        }
        None => Ok(Advertise { host: text.to_string(), port: None }),
    }
}

/// An IP as written in a SIP host: IPv6 in brackets.
pub fn host_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The machine's host name (default node id).
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "sluice".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../config/sluice.toml");

    #[test]
    fn shipped_example_is_valid() {
        let c = Config::parse("config/sluice.toml", SHIPPED).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.carriers[0].gateways[0].addr, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(c.sent_by(Transport::Udp), "127.0.0.1:5060");
    }

    #[test]
    fn contract_example_is_valid() {
        // The contract's credentials path is an example; the fixture's file stands in for it.
        let creds = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/credentials");
        let text =
            include_str!("../../tests/fixtures/contract.toml").replace("/etc/sluice/credentials", creds);
        let c = Config::parse("contract.toml", &text).unwrap();
        assert_eq!(c.auth.as_ref().map(|a| a.credentials.len()), Some(1));
        assert_eq!(c.flood.as_ref().map(|f| f.rps), Some(0));
        assert_eq!(c.admin_token, None);
        assert_eq!(c.customers[1].per_ip.cps, Some(10));
        assert_eq!(c.customers[1].per_ip.channels, None);
        assert_eq!(c.limits.per_ip, Pair { cps: Some(20), channels: Some(200), ..Pair::default() });
        assert_eq!(c.cluster.as_ref().map(|c| c.nodes), Some(2));
        let (reseller, acme) = (&c.customers[0], &c.customers[1]);
        assert_eq!(
            (reseller.name.as_str(), acme.parent, acme.ancestors.as_slice()),
            ("reseller", Some(0), &[0][..])
        );
        assert_eq!((acme.limits.cpm, acme.mode), (Some(1200), Mode::Enforce));
        assert_eq!(acme.per_ip.cps, Some(10));
        assert_eq!(acme.routes.as_ref().map(|r| r.routes[0].limits.cps), Some(Some(5)));
        assert!(!c.carriers[0].pacing);
    }

    #[test]
    fn errors_name_line_and_key() {
        let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:5070\", \"sctp://x:1\"]\n\n[[route]]\nprefix = \"1\"\ncarriers = [\"a\", \"nope\"]\n";
        let errs = Config::parse("t.toml", text).unwrap_err().0;
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].key, "carrier[0].gateways[1]");
        assert_eq!(errs[0].line, Some(6));
        assert_eq!(errs[1].key, "route[0].carriers[1]");
        assert_eq!(errs[1].line, Some(10));
        assert!(
            errs[1].to_string().starts_with("t.toml:10: route[0].carriers[1]: no [[carrier]] named `nope`")
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_line() {
        let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\nlistne = 1\n";
        let errs = Config::parse("t.toml", text).unwrap_err().0;
        assert_eq!(errs[0].line, Some(3));
        assert!(errs[0].message.contains("unknown field"), "{}", errs[0].message);
    }

    #[test]
    fn longest_prefix_wins() {
        let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[carrier]]\nname = \"b\"\ngateways = [\"udp://127.0.0.1:5071\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n[[route]]\nprefix = \"+44\"\ncarriers = [\"b\"]\n[[route]]\nprefix = \"4420\"\ncarriers = [\"a\", \"b\"]\n";
        let c = Config::parse("t.toml", text).unwrap();
        assert_eq!(c.routes.lookup(b"4412").unwrap().1.carriers, vec![1]);
        assert_eq!(c.routes.lookup(b"44201").unwrap().1.carriers, vec![0, 1]);
        assert_eq!(c.routes.lookup(b"1555").unwrap().1.prefix, "");
        assert_eq!(c.routes.lookup(b"4").unwrap().1.prefix, "");
    }

    #[test]
    fn durations_no_clock_can_hold_are_refused() {
        let base = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\ngateway_timeout_ms = 9223372036854775807\ndrain_seconds = 9223372036854775807\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n[limits]\nmax_call_seconds = 9223372036854775807\ncps = 4000000000\n[overflow]\nqueue_ms = 9223372036854775807\nretry_after = 4000000000\n";
        let errs = Config::parse("t.toml", base).unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "server.gateway_timeout_ms",
            "server.drain_seconds",
            "limits.max_call_seconds",
            "limits.cps",
            "overflow.queue_ms",
            "overflow.retry_after",
        ] {
            assert!(keys.contains(&key), "{key} not refused: {errs:?}");
        }
        assert!(errs.iter().all(|e| e.line.is_some()), "every error names its line: {errs:?}");
    }

    #[test]
    fn redirect_contacts_are_uris_in_angle_brackets() {
        let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n[overflow]\nredirect = [\"sip:alt.example.net;transport=tcp\", \"\\\"Alt\\\" <sip:b.example.net>;q=0.5\"]\n";
        let c = Config::parse("t.toml", text).unwrap();
        assert_eq!(
            c.overflow.redirect,
            vec!["<sip:alt.example.net;transport=tcp>", "\"Alt\" <sip:b.example.net>;q=0.5"]
        );
        let bad = text.replace("sip:alt.example.net;transport=tcp", "http://x");
        assert_eq!(Config::parse("t.toml", &bad).unwrap_err().0[0].key, "overflow.redirect[0]");
    }

    #[test]
    fn wildcard_listen_needs_advertise() {
        let text = "[server]\nlisten = [\"udp://0.0.0.0:5060\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n";
        let errs = Config::parse("t.toml", text).unwrap_err().0;
        assert_eq!(errs[0].key, "server.advertise");
        let ok = text.replace("[server]\n", "[server]\nadvertise = \"sip.example.net:5060\"\n");
        let c = Config::parse("t.toml", &ok).unwrap();
        assert_eq!(c.sent_by(Transport::Udp), "sip.example.net:5060");
    }

    #[test]
    fn parents_must_exist_and_never_loop() {
        let base = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n";
        let chain = format!(
            "{base}[[customer]]\nname = \"x\"\nparent = \"y\"\n[[customer]]\nname = \"y\"\nparent = \"z\"\nper_ip = {{ cps = 3 }}\n[[customer]]\nname = \"z\"\nmode = \"shadow\"\n"
        );
        let c = Config::parse("t.toml", &chain).unwrap();
        assert_eq!(c.customers[0].ancestors, vec![1, 2], "nearest first");
        assert_eq!(c.customers[0].per_ip.cps, Some(3), "a sub-account without per_ip takes its parent's");
        assert!(c.customers[2].limits.shadow && !c.customers[0].limits.shadow);

        let looped = chain.replace("name = \"z\"\n", "name = \"z\"\nparent = \"x\"\n");
        let errs = Config::parse("t.toml", &looped).unwrap_err().0;
        assert!(errs.iter().all(|e| e.message.contains("loops back")), "{errs:?}");
        assert_eq!(errs[0].key, "customer[0].parent");
        assert_eq!(errs[0].line, Some(11));

        let unknown = chain.replace("parent = \"z\"", "parent = \"nobody\"");
        let errs = Config::parse("t.toml", &unknown).unwrap_err().0;
        assert_eq!((errs[0].key.as_str(), errs[0].line), ("customer[1].parent", Some(14)));
        assert!(errs[0].message.contains("no [[customer]] named `nobody`"));

        let own = chain.replace("parent = \"y\"", "parent = \"x\"");
        assert!(Config::parse("t.toml", &own).unwrap_err().0[0].message.contains("its own parent"));
    }

    #[test]
    fn pacing_needs_a_rate_and_modes_are_checked() {
        let base = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:5070\"]\npacing = true\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n";
        let errs = Config::parse("t.toml", base).unwrap_err().0;
        assert_eq!((errs[0].key.as_str(), errs[0].line), ("carrier[0].pacing", Some(6)));
        let paced = base.replace("pacing = true", "pacing = true\ncps = 10\ncpm = 300\nmode = \"shadow\"");
        let c = Config::parse("t.toml", &paced).unwrap();
        assert!(c.carriers[0].pacing && c.carriers[0].limits.shadow && c.carriers[0].gateway_limits.shadow);
        assert_eq!(c.carriers[0].limits.cpm, Some(300));
        let bad = paced.replace("\"shadow\"", "\"dry-run\"");
        assert!(Config::parse("t.toml", &bad).is_err());
        let huge = paced.replace("cpm = 300", "cpm = 4000000000");
        assert_eq!(Config::parse("t.toml", &huge).unwrap_err().0[0].key, "carrier[0].cpm");
    }

    #[test]
    fn a_sub_account_routes_like_its_nearest_ancestor_with_routes() {
        let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n\
            [[customer]]\nname = \"top\"\n  [[customer.route]]\n  prefix = \"44\"\n  carriers = [\"a\"]\n\
            [[customer]]\nname = \"mid\"\nparent = \"top\"\n[[customer]]\nname = \"leaf\"\nparent = \"mid\"\n[[customer]]\nname = \"alone\"\n";
        let c = Config::parse("t.toml", text).unwrap();
        assert_eq!(c.route_owner(2), Some(0), "leaf -> mid (none) -> top");
        assert_eq!(c.route_owner(0), Some(0));
        assert_eq!(c.route_owner(3), None, "the global table");
        let chain: Vec<&str> = c.customer_chain(2).map(|c| c.name.as_str()).collect();
        assert_eq!(chain, ["leaf", "mid", "top"]);
    }
}
