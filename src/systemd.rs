//! systemd integration (`Type=notify`, contrib/systemd/sluice.service): READY once every
//! listener is bound, RELOADING/READY around a SIGHUP reload, STOPPING when draining starts,
//! and the watchdog. Without `NOTIFY_SOCKET` (not started by systemd) all of it does nothing.
//!
//! The watchdog ping is not a timer alone: before each one, every shard's lock is taken
//! once (counting active calls), so a deadlocked or stuck core stops the pings and systemd
//! restarts the process.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::transport::Shared;

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(event = "systemd.notify_failed", error = %e, "could not notify systemd");
    }
}

/// The listeners are bound and the core runs.
pub fn ready(calls: usize) {
    let status = format!("serving; {calls} calls up");
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload is starting (READY follows when it is done).
pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

/// Draining: new calls are refused, the process exits when the calls are done.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// How often to ping, when systemd asked for a watchdog (`WatchdogSec=`): half its
/// interval.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec)
        .then(|| Duration::from_micros(usec / 2))
        .filter(|d| !d.is_zero())
}

/// Pings the watchdog while the core answers, until shutdown.
pub async fn watchdog(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Takes every shard's lock once: a stuck shard stops the pings.
        let calls = shared.node.active_calls();
        let status = format!("serving; {calls} calls up");
        notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
    }
}
