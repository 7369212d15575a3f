//! `GET /status` on the admin listener: what an operator needs to see at a glance —
//! per mapping its state, expiry, time left, last error, External ID enforcement result
//! and last refresh — plus the daemon's version, config generation, start time, the
//! last reload's time, result and problems, and what is known of credvend's own AWS
//! identity (`base_identity`: its ARN, never a key).
//!
//! Nothing secret is in here: no keys, tokens or External IDs. AccessKeyIds are not
//! secrets (they appear in CloudTrail and the audit log) and help correlate. A reload's
//! problems are the ones logged: file, key and reason, and reasons never quote a value
//! that could be an External ID (src/config/error.rs).

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::config::Problem;
use crate::creds::FailureReason;
use crate::model::MappingStatus;

/// At most this many of a rejected reload's problems are listed (`problem_count` says how
/// many there were; the log has every one).
pub const MAX_LISTED_PROBLEMS: usize = 20;

/// How a reload that went ahead ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    Rejected,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Rejected => "rejected",
        }
    }
}

/// The last reload that went ahead (a SIGHUP, or a file event that changed what credvend
/// reads), as `/status` shows it under `last_reload`.
#[derive(Debug, Clone)]
pub struct LastReload {
    /// When it ended (the daemon's clock).
    pub at: SystemTime,
    /// `signal` or `file_change`.
    pub trigger: &'static str,
    pub result: ReloadResult,
    /// The configuration generation in force after it.
    pub generation: u64,
    /// Why it was rejected; empty when applied.
    pub problems: Vec<Problem>,
}

/// What credvend knows of its own AWS identity (the base credentials, after chaining
/// through `sts.source_role_arn`), from `sts:GetCallerIdentity` at start-up and again
/// every [`BASE_IDENTITY_RECHECK`](crate::daemon::BASE_IDENTITY_RECHECK) until it is
/// found. `/status` shows it under `base_identity`; `/readyz` is 503 while it is
/// [`BaseIdentity::Unavailable`]: nothing can be vended without it.
#[derive(Debug, Clone, Default)]
pub enum BaseIdentity {
    /// Not checked yet, or the last check was inconclusive (STS unreachable, a
    /// timeout: `last_error` says which); no verdict on the credentials themselves.
    #[default]
    Unchecked,
    /// GetCallerIdentity succeeded.
    Ok { arn: String, checked_at: SystemTime },
    /// No base credentials, or STS rejected them; `last_error` says which.
    Unavailable,
}

/// [`BaseIdentity`] with the last failed check, if any.
#[derive(Debug, Clone, Default)]
pub struct BaseIdentityStatus {
    pub state: BaseIdentity,
    /// Reason, AWS or local code and time of the last failed check. Never a message:
    /// the log has the SDK's words.
    pub last_error: Option<(FailureReason, String, SystemTime)>,
}

impl BaseIdentityStatus {
    /// Why `/readyz` is 503 because of the base identity, if it is.
    pub fn unready_reason(&self) -> Option<&'static str> {
        match (&self.state, &self.last_error) {
            (BaseIdentity::Unavailable, Some((FailureReason::ExpiredBaseCredentials, _, _))) => {
                Some("base AWS credentials rejected by STS")
            }
            (BaseIdentity::Unavailable, _) => Some("no base AWS credentials"),
            _ => None,
        }
    }
}

fn base_identity(status: &BaseIdentityStatus) -> Value {
    let last_error = status.last_error.as_ref().map(|(reason, code, at)| {
        json!({
            "reason": reason.as_str(),
            "code": code,
            "problem": reason.base_identity_problem(),
            "at": time(Some(*at)),
        })
    });
    let (state, arn, checked_at) = match &status.state {
        BaseIdentity::Unchecked => ("unchecked", None, status.last_error.as_ref().map(|e| e.2)),
        BaseIdentity::Ok { arn, checked_at } => ("ok", Some(arn.clone()), Some(*checked_at)),
        BaseIdentity::Unavailable => ("unavailable", None, status.last_error.as_ref().map(|e| e.2)),
    };
    json!({
        "state": state,
        "arn": arn,
        "checked_at": time(checked_at),
        "last_error": last_error,
    })
}

fn last_reload(reload: Option<&LastReload>) -> Value {
    let Some(reload) = reload else {
        return Value::Null;
    };
    let problems: Vec<Value> = reload
        .problems
        .iter()
        .take(MAX_LISTED_PROBLEMS)
        .map(|p| json!({ "file": p.file, "key": p.key, "reason": p.reason }))
        .collect();
    json!({
        "at": time(Some(reload.at)),
        "trigger": reload.trigger,
        "result": reload.result.as_str(),
        "config_generation": reload.generation,
        "problem_count": reload.problems.len(),
        "problems": problems,
    })
}

fn time(at: Option<SystemTime>) -> Value {
    at.map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_seconds(t).to_string())
    })
}

/// Adds to `document` how many live job tokens each mapping has (`job_tokens`, 0 for
/// none) and in all (top-level `job_tokens`): counts only, never an id or a token.
pub fn add_job_tokens(document: &mut Value, counts: &std::collections::HashMap<String, usize>) {
    let total: usize = counts.values().sum();
    if let Some(mappings) = document.get_mut("mappings").and_then(Value::as_object_mut) {
        for (name, mapping) in mappings.iter_mut() {
            if let Some(mapping) = mapping.as_object_mut() {
                mapping.insert(
                    "job_tokens".into(),
                    json!(counts.get(name).copied().unwrap_or(0)),
                );
            }
        }
    }
    if let Some(top) = document.as_object_mut() {
        top.insert("job_tokens".into(), json!(total));
    }
}

/// Adds `sts_regions` to a `/status` document: each STS region's circuit breaker
/// (docs/design.md, Regional failover), the primary first, then the fallbacks
/// in order, then mappings' own regions. An error kind, never a message: nothing in it
/// is a secret or names a customer.
pub fn add_sts_regions(document: &mut Value, regions: &[crate::creds::regions::RegionHealth]) {
    let regions: Vec<Value> = regions
        .iter()
        .map(|r| {
            json!({
                "region": r.region,
                "role": r.role.as_str(),
                "state": r.state.as_str(),
                "consecutive_failures": r.consecutive_failures,
                "last_error": r.last_error.map(FailureReason::as_str),
                "next_probe_in_seconds": r.next_probe_in.map(|d| d.as_secs()),
            })
        })
        .collect();
    if let Some(top) = document.as_object_mut() {
        top.insert("sts_regions".into(), Value::Array(regions));
    }
}

/// The `/status` document.
pub fn document(
    statuses: &[MappingStatus],
    now: SystemTime,
    generation: u64,
    started_at: SystemTime,
    reload: Option<&LastReload>,
    identity: &BaseIdentityStatus,
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
        "last_reload": last_reload(reload),
        "base_identity": base_identity(identity),
        "mappings": mappings,
    })
}
