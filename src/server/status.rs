//! `GET /status` on the admin listener: what an operator needs to see at a glance —
//! per mapping its state, expiry, time left, last error, External ID enforcement result
//! and last refresh — plus the daemon's version, config generation and start time.
//!
//! Nothing secret is in here: no keys, tokens or External IDs. AccessKeyIds are not
//! secrets (they appear in CloudTrail and the audit log) and help correlate.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::creds::FailureReason;
use crate::model::MappingStatus;

fn time(at: Option<SystemTime>) -> Value {
    at.map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_seconds(t).to_string())
    })
}

/// The `/status` document.
pub fn document(
    statuses: &[MappingStatus],
    now: SystemTime,
    generation: u64,
    started_at: SystemTime,
) -> Value {
    let mappings: serde_json::Map<String, Value> = statuses
        .iter()
        .map(|s| {
            let remaining = s
                .expires_at
                .and_then(|e| e.duration_since(now).ok())
                .map(|d| d.as_secs());
            let last_error = s.last_error.as_ref().map(|(error, at)| {
                json!({
                    "reason": error.reason().map_or("trust_policy_unsafe", FailureReason::as_str),
                    "code": error.code(),
                    "at": time(Some(*at)),
                })
            });
            (
                s.name.clone(),
                json!({
                    "state": s.state.as_str(),
                    "expires_at": time(s.expires_at),
                    "seconds_remaining": remaining,
                    "access_key_id": s.access_key_id,
                    "last_refresh": time(s.last_success),
                    "next_refresh": time(s.next_refresh),
                    "retry_at": time(s.retry_at),
                    "last_error": last_error,
                    "prefetch": s.prefetch,
                    "external_id_enforcement": {
                        "mode": s.enforcement_mode.as_str(),
                        "result": s.enforcement.as_str(),
                        "checked_at": time(s.enforcement_checked_at),
                    },
                }),
            )
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config_generation": generation,
        "started_at": time(Some(started_at)),
        "now": time(Some(now)),
        "mappings": mappings,
    })
}
