//! Which Redis the cluster store talks to: a fixed `redis://` URL, or a Redis Sentinel
//! deployment that names the current primary,
//! `redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`. With Sentinel the primary is
//! asked for again every time the store reconnects (after a timeout, a broken connection, or
//! a `READONLY` error from a demoted primary), so a failover is followed without a restart.

use parking_lot::{Mutex, RwLock};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};

const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// Whether `url` names a Sentinel deployment.
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with(SENTINEL_SCHEME)
}

/// The sentinels' addresses, the service name and the database of a Sentinel URL.
pub fn parse_sentinel_url(url: &str) -> Result<(Vec<String>, String, i64), String> {
    let rest = url.strip_prefix(SENTINEL_SCHEME).ok_or("not a redis+sentinel:// URL")?;
    let (hosts, path) = rest.split_once('/').ok_or("needs /SERVICE after the sentinels")?;
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let service = parts.next().ok_or("needs a service name")?.to_string();
    let db = match parts.next() {
        Some(d) => d.parse::<i64>().map_err(|_| format!("database {d:?} is not a number"))?,
        None => 0,
    };
    if parts.next().is_some() {
        return Err("too many path segments (SERVICE[/DB])".into());
    }
    let sentinels: Vec<String> = hosts.split(',').map(str::trim).map(String::from).collect();
    if sentinels.iter().any(|h| {
        h.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    }) {
        return Err("each sentinel must be HOST:PORT".into());
    }
    Ok((sentinels, service, db))
}

enum Where {
    /// A fixed URL: `current` is set once and never changes.
    Fixed,
    Sentinel {
        sentinel: Mutex<Sentinel>,
        service: String,
        node: SentinelNodeConnectionInfo,
    },
}

/// The store's Redis: the client of the primary as last resolved.
pub struct Primary {
    place: Where,
    current: RwLock<Option<redis::Client>>,
}

impl Primary {
    pub fn open(url: &str) -> Result<Self, String> {
        if !is_sentinel_url(url) {
            let client = redis::Client::open(url).map_err(|e| e.to_string())?;
            return Ok(Self { current: RwLock::new(Some(client)), place: Where::Fixed });
        }
        let (sentinels, service, db) = parse_sentinel_url(url)?;
        let urls: Vec<String> = sentinels.iter().map(|h| format!("redis://{h}/")).collect();
        let sentinel = Sentinel::build(urls).map_err(|e| e.to_string())?;
        let node = SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(redis::RedisConnectionInfo { db, ..Default::default() }),
        };
        Ok(Self {
            place: Where::Sentinel { sentinel: Mutex::new(sentinel), service, node },
            current: RwLock::new(None),
        })
    }

    /// The primary's client, if one has been resolved.
    pub fn client(&self) -> Option<redis::Client> {
        self.current.read().clone()
    }

    /// Asks the sentinels which server is the primary now (a fixed URL: nothing to ask).
    /// Blocking; called from the maintenance thread only.
    pub fn resolve(&self) -> Result<(), String> {
        let Where::Sentinel { sentinel, service, node } = &self.place else { return Ok(()) };
        let client = sentinel.lock().master_for(service, Some(node)).map_err(|e| e.to_string())?;
        let changed = self.current.read().as_ref().map(|c| c.get_connection_info().addr.to_string())
            != Some(client.get_connection_info().addr.to_string());
        if changed {
            tracing::info!(event = "cluster.primary", service = %service, primary = %client.get_connection_info().addr, "Sentinel names the primary");
        }
        *self.current.write() = Some(client);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let (hosts, service, db) =
            parse_sentinel_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/edge/2").unwrap();
        assert_eq!((hosts.len(), service.as_str(), db), (2, "edge", 2));
        assert_eq!(parse_sentinel_url("redis+sentinel://h:26379/edge").unwrap().2, 0);
        for bad in [
            "redis+sentinel://h:26379",
            "redis+sentinel://h/edge",
            "redis+sentinel://h:x/edge",
            "redis+sentinel://h:1/e/x",
        ] {
            assert!(parse_sentinel_url(bad).is_err(), "{bad}");
        }
    }
}
