//! systemd service notifications (`Type=notify`; docs/design.md, Operations) through the
//! `sd-notify` crate, pinned to 0.5.0 (0.4's `notify` took an extra `unset_env` flag).
//!
//! - [`ready`]: `READY=1` once every listener is bound and serving; systemd holds back
//!   units ordered after credvend until then.
//! - [`reloading`]: `RELOADING=1` plus `MONOTONIC_USEC` when a SIGHUP reload starts
//!   (the timestamp is what `Type=notify-reload` requires; plain `Type=notify` accepts
//!   it too), then [`ready`] when the reload is applied or rejected.
//! - [`stopping`]: `STOPPING=1` when shutdown starts, so `systemctl status` says so
//!   while in-flight requests drain.
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset (not under systemd, in tests,
//! in containers). A failure to notify is logged and otherwise ignored: it must never
//! stop the daemon from serving.

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Sends `READY=1`.
pub fn ready() {
    send("READY=1", &[NotifyState::Ready]);
}

/// Sends `RELOADING=1` with the current `CLOCK_MONOTONIC` time.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING=1", &[NotifyState::Reloading, now]),
        Err(_) => send("RELOADING=1", &[NotifyState::Reloading]),
    }
}

/// Sends `STOPPING=1`.
pub fn stopping() {
    send("STOPPING=1", &[NotifyState::Stopping]);
}

fn send(what: &'static str, states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(states) {
        Ok(()) => debug!(state = what, "Notified systemd"),
        Err(error) => warn!(state = what, %error, "Cannot notify systemd"),
    }
}
