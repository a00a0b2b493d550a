//! Hot reload (SIGHUP and `POST /reload`): the config file is read again and, if valid,
//! replaces the running one atomically for new calls. Calls in progress keep their channel
//! reservations (held by key), so they are released correctly even if their customer or
//! carrier was renamed or removed. Listener changes need a restart; the answer says so.

use std::sync::Arc;

use crate::config::Config;
use crate::transport::Shared;

/// Re-reads the config file. `Ok`: a summary of what changed; `Err`: every error, nothing
/// changed.
pub fn reload(shared: &Shared) -> Result<Vec<String>, Vec<String>> {
    let current = shared.config();
    let Some(path) = current.path.clone() else {
        return Err(vec!["the running configuration was not loaded from a file".into()]);
    };
    let mut next =
        Config::load(&path).map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let mut summary = Vec::new();
    let wanted: Vec<_> = next.listen.iter().map(|l| (l.transport, l.addr)).collect();
    let running: Vec<_> = current.listen.iter().map(|l| (l.transport, l.addr)).collect();
    if wanted != running
        && !wanted.iter().all(|w| {
            running
                .iter()
                .any(|r| r.0 == w.0 && r.1.ip() == w.1.ip() && (w.1.port() == 0 || r.1.port() == w.1.port()))
        })
    {
        summary.push("listen changed: restart sluice to apply it (the old listeners stay)".to_string());
    }
    if next.admin != current.admin {
        summary.push("admin changed: restart sluice to apply it".to_string());
    }
    if next.max_message_bytes != current.max_message_bytes {
        summary.push("max_message_bytes changed: restart sluice to apply it".to_string());
    }
    if next.usage != current.usage {
        summary.push("[usage] changed: restart sluice to apply it".to_string());
    }
    if next.records != current.records {
        summary
            .push("[records] changed: restart sluice to apply it (the file is reopened by name)".to_string());
    }
    // The sockets stay as bound: keep their real addresses (port 0 resolved).
    next.listen.clone_from(&current.listen);
    summary.push(format!(
        "applied: {} carriers, {} routes, {} customers, {} DIDs",
        next.carriers.len(),
        next.routes.routes.len(),
        next.customers.len(),
        next.dids.len()
    ));
    shared.swap_config(Arc::new(next));
    tracing::info!(event = "config.reloaded", path = %path.display(), changes = ?summary, "configuration reloaded");
    Ok(summary)
}
