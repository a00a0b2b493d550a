//! The TOML file as written by operators (`../shared/contract.toml`), before validation.
//! Every struct denies unknown keys: a typo is an error, never a silently ignored setting.

use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    pub(crate) server: Server,
    #[serde(default)]
    pub(crate) log: Log,
    #[serde(default)]
    pub(crate) carrier: Vec<Carrier>,
    #[serde(default)]
    pub(crate) route: Vec<Route>,
    #[serde(default)]
    pub(crate) limits: Limits,
    #[serde(default)]
    pub(crate) customer: Vec<Customer>,
    #[serde(default)]
    pub(crate) did: Vec<Did>,
    #[serde(default)]
    pub(crate) overflow: Overflow,
    pub(crate) usage: Option<Usage>,
    pub(crate) cluster: Option<Cluster>,
    pub(crate) auth: Option<Auth>,
    pub(crate) flood: Option<Flood>,
    pub(crate) records: Option<Records>,
}

/// Added: the call records file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Records {
    pub(crate) file: PathBuf,
    #[serde(default)]
    pub(crate) format: RecordFormat,
}

/// One JSON object per line, or CSV with a header line.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    #[default]
    Jsonl,
    Csv,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Server {
    pub(crate) listen: Vec<String>,
    pub(crate) advertise: Option<String>,
    pub(crate) admin: Option<String>,
    #[serde(default)]
    pub(crate) admin_token: String,
    #[serde(default = "yes")]
    pub(crate) allow_unknown: bool,
    #[serde(default = "default_gateway_timeout_ms")]
    pub(crate) gateway_timeout_ms: u64,
    #[serde(default = "default_drain_seconds")]
    pub(crate) drain_seconds: u64,
    /// Added to the contract: TCP connections one source IP may hold open to sluice.
    #[serde(default = "default_max_tcp_per_ip")]
    pub(crate) max_tcp_per_ip: u32,
    /// Added to the contract: the largest datagram or stream message accepted.
    #[serde(default = "default_max_message_bytes")]
    pub(crate) max_message_bytes: usize,
    /// Threads that process SIP messages (one shard each); 0 = one per CPU core.
    #[serde(default)]
    pub(crate) workers: u32,
    /// PEM certificate chain and key for tls:// listeners.
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    /// Added: PEM CA certificates that TLS gateways' certificates must chain to (absent:
    /// the system's roots).
    pub(crate) tls_ca: Option<PathBuf>,
    /// Added: the file keeping the key of Path flow tokens (made if missing), so phones'
    /// registrations survive a restart; absent: a key per process.
    pub(crate) flow_key_file: Option<PathBuf>,
    /// Added: name servers for DNS gateways (HOST:PORT); absent: /etc/resolv.conf.
    #[serde(default)]
    pub(crate) dns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Log {
    #[serde(default)]
    pub(crate) format: LogFormat,
    #[serde(default = "default_level")]
    pub(crate) level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self { format: LogFormat::default(), level: default_level() }
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Carrier {
    pub(crate) name: String,
    pub(crate) gateways: Vec<String>,
    pub(crate) cps: Option<u32>,
    pub(crate) cpm: Option<u32>,
    pub(crate) channels: Option<u32>,
    pub(crate) gateway_cps: Option<u32>,
    pub(crate) gateway_cpm: Option<u32>,
    pub(crate) gateway_channels: Option<u32>,
    #[serde(default)]
    pub(crate) pacing: bool,
    #[serde(default)]
    pub(crate) mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Route {
    pub(crate) prefix: String,
    pub(crate) carriers: Vec<String>,
    pub(crate) cps: Option<u32>,
    pub(crate) cpm: Option<u32>,
    pub(crate) channels: Option<u32>,
    #[serde(default)]
    pub(crate) mode: Mode,
}

/// The limits of one table (or of `per_ip` / `per_user`).
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    pub cps: Option<u32>,
    pub cpm: Option<u32>,
    pub channels: Option<u32>,
    /// Set by validation from the mode of the table the limits come from (never written
    /// inside the limits themselves).
    #[serde(skip)]
    pub shadow: bool,
}

/// Whether a table's limits refuse calls (`enforce`) or only report the calls they would
/// have refused (`shadow`: a dry run on live traffic).
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limits {
    pub(crate) cps: Option<u32>,
    pub(crate) cpm: Option<u32>,
    pub(crate) channels: Option<u32>,
    #[serde(default)]
    pub(crate) mode: Mode,
    pub(crate) per_ip: Option<Pair>,
    pub(crate) per_user: Option<Pair>,
    #[serde(default = "default_max_call_seconds")]
    pub(crate) max_call_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cps: None,
            cpm: None,
            channels: None,
            mode: Mode::Enforce,
            per_ip: None,
            per_user: None,
            max_call_seconds: default_max_call_seconds(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Customer {
    pub(crate) name: String,
    pub(crate) parent: Option<String>,
    #[serde(default)]
    pub(crate) mode: Mode,
    #[serde(default)]
    pub(crate) ips: Vec<IpNet>,
    #[serde(default)]
    pub(crate) users: Vec<String>,
    pub(crate) cps: Option<u32>,
    pub(crate) cpm: Option<u32>,
    pub(crate) channels: Option<u32>,
    pub(crate) per_ip: Option<Pair>,
    pub(crate) per_user: Option<Pair>,
    #[serde(default)]
    pub(crate) priority: i32,
    #[serde(default)]
    pub(crate) route: Vec<Route>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Did {
    pub(crate) number: String,
    pub(crate) cps: Option<u32>,
    pub(crate) cpm: Option<u32>,
    pub(crate) channels: Option<u32>,
    #[serde(default)]
    pub(crate) mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Overflow {
    #[serde(default = "default_status")]
    pub(crate) status: u16,
    #[serde(default = "default_cps_reason")]
    pub(crate) cps_reason: String,
    #[serde(default = "default_channels_reason")]
    pub(crate) channels_reason: String,
    #[serde(default = "default_retry_after")]
    pub(crate) retry_after: u32,
    #[serde(default)]
    pub(crate) redirect: Vec<String>,
    #[serde(default)]
    pub(crate) queue_ms: u64,
    #[serde(default = "default_queue_depth")]
    pub(crate) queue_depth: usize,
    /// Added to the contract: calls over a channels limit may also wait (off by default).
    #[serde(default)]
    pub(crate) queue_channels: bool,
    /// Added to the contract: numbers never queued or refused by CPS/channel limits.
    #[serde(default = "default_emergency")]
    pub(crate) emergency: Vec<String>,
}

impl Default for Overflow {
    fn default() -> Self {
        Self {
            status: default_status(),
            cps_reason: default_cps_reason(),
            channels_reason: default_channels_reason(),
            retry_after: default_retry_after(),
            redirect: Vec::new(),
            queue_ms: 0,
            queue_depth: default_queue_depth(),
            queue_channels: false,
            emergency: default_emergency(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Usage {
    pub(crate) state_file: Option<PathBuf>,
    #[serde(default = "default_window_days")]
    pub(crate) window_days: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cluster {
    pub(crate) redis: String,
    pub(crate) node: Option<String>,
    #[serde(default)]
    pub(crate) on_failure: OnFailure,
    #[serde(default = "default_nodes")]
    pub(crate) nodes: u32,
    /// Added: timeout of every Redis call (a SIP request is never held longer).
    #[serde(default = "default_redis_timeout_ms")]
    pub(crate) timeout_ms: u64,
    /// Added: heartbeat period; a node missing three is dead and its channels are freed.
    #[serde(default = "default_heartbeat_ms")]
    pub(crate) heartbeat_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Auth {
    pub(crate) realm: String,
    pub(crate) credentials: PathBuf,
    #[serde(default)]
    pub(crate) require: AuthRequire,
    #[serde(default = "default_nonce_seconds")]
    pub(crate) nonce_seconds: u64,
}

/// Which sources must authenticate to sluice itself (`[auth] require`).
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthRequire {
    /// Sources whose address matches no customer.
    #[default]
    Unknown,
    All,
    /// Nobody; credentials for sluice's realm are verified when present.
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Flood {
    #[serde(default)]
    pub(crate) rps: u32,
    #[serde(default = "default_block_seconds")]
    pub(crate) block_seconds: u64,
    #[serde(default)]
    pub(crate) trusted: Vec<IpNet>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    #[default]
    Local,
    Reject,
    Allow,
}

fn yes() -> bool {
    true
}
fn default_gateway_timeout_ms() -> u64 {
    32_000
}
fn default_drain_seconds() -> u64 {
    30
}
fn default_max_tcp_per_ip() -> u32 {
    64
}
fn default_max_message_bytes() -> usize {
    65_536
}
fn default_level() -> String {
    "info".into()
}
fn default_max_call_seconds() -> u64 {
    43_200
}
fn default_status() -> u16 {
    503
}
fn default_cps_reason() -> String {
    "CPS Limit reached".into()
}
fn default_channels_reason() -> String {
    "Channel Limit reached".into()
}
fn default_retry_after() -> u32 {
    1
}
fn default_queue_depth() -> usize {
    1000
}
fn default_emergency() -> Vec<String> {
    vec!["911".into(), "112".into(), "999".into()]
}
fn default_window_days() -> u32 {
    30
}
fn default_redis_timeout_ms() -> u64 {
    50
}
fn default_heartbeat_ms() -> u64 {
    10_000
}
fn default_nonce_seconds() -> u64 {
    300
}
fn default_block_seconds() -> u64 {
    60
}
fn default_nodes() -> u32 {
    1
}
