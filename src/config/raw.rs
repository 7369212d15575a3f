//! Raw serde shapes of the configuration file (docs/design.md, Configuration), before
//! validation.
//!
//! Every field is optional here: defaults and "required" checks belong to validation,
//! so that a missing `role_arn` is one more collected problem rather than a serde error
//! that hides everything after it. Durations stay strings until validation parses them
//! with `humantime`, for the same reason. Single AWS names (role ARNs, session names,
//! source identities, regions) and enforcement modes decode straight into their
//! validated types: a bad one is a decode problem at its key, worded by the type
//! ([`crate::aws_names`]); lists keep their strings so that each bad entry is reported. `deny_unknown_fields` everywhere: a typo
//! (`refesh_before`) must fail loudly, not silently fall back to a default.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::{EnforcementMode, PerMappingSeries};
use crate::aws_names::{Region, RoleArn, SessionName, SourceIdentity};

/// Keys allowed at the top level of the main file.
pub(super) const TOP_LEVEL_KEYS: &[&str] = &[
    "include", "server", "log", "sts", "refresh", "verify", "reload", "metrics", "control",
    "mappings",
];

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<OneOrMany>,
    pub admin_listen: Option<String>,
    pub allow_non_loopback: Option<bool>,
    pub allowed_hosts: Option<OneOrMany>,
    pub max_connections: Option<u64>,
    pub header_read_timeout: Option<DurationStr>,
    pub shutdown_grace: Option<DurationStr>,
    pub admin_allow_non_loopback: Option<bool>,
    pub admin_allowed_hosts: Option<OneOrMany>,
    pub write_timeout: Option<DurationStr>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

/// `[sts]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSts {
    pub region: Option<Region>,
    /// Deprecated: the primary's entry of `endpoint_urls`.
    pub endpoint_url: Option<String>,
    pub fallback_regions: Option<OneOrMany>,
    pub endpoint_urls: Option<BTreeMap<String, String>>,
    pub source_role_arn: Option<RoleArn>,
    pub max_requests_per_second: Option<u64>,
    pub call_timeout: Option<DurationStr>,
}

/// `[refresh]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRefresh {
    pub session_duration: Option<DurationStr>,
    pub refresh_before: Option<DurationStr>,
    pub min_remaining: Option<DurationStr>,
    pub cold_wait: Option<DurationStr>,
    pub idle_timeout: Option<DurationStr>,
}

/// `[verify]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerify {
    pub external_id_enforcement: Option<EnforcementMode>,
    pub recheck_interval: Option<DurationStr>,
}

/// `[reload]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReload {
    pub watch: Option<bool>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub per_mapping: Option<PerMappingSeries>,
    pub active_window: Option<DurationStr>,
}

/// `[control]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub socket: Option<String>,
    pub socket_group: Option<String>,
    pub max_ttl: Option<DurationStr>,
    pub max_tokens: Option<u64>,
}

/// `[mappings.NAME]`
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMapping {
    pub role_arn: Option<RoleArn>,
    /// Secret: never printed (no `Debug` on this type for that reason).
    pub external_id: Option<String>,
    pub external_id_file: Option<String>,
    pub token_sha256: Option<OneOrMany>,
    pub session_name: Option<SessionName>,
    pub session_duration: Option<DurationStr>,
    pub session_policy: Option<String>,
    pub policy_arns: Option<OneOrMany>,
    pub tags: Option<BTreeMap<String, String>>,
    pub source_identity: Option<SourceIdentity>,
    pub region: Option<Region>,
    pub prefetch: Option<bool>,
    pub external_id_enforcement: Option<EnforcementMode>,
}

/// A human-readable duration string (`"35m"`), parsed during validation so that a bad
/// one is reported with its key alongside every other problem.
#[derive(Debug, Clone)]
pub(super) struct DurationStr(pub String);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Shown in "invalid type" errors: a bare `cold_wait = 5` should tell the
                // operator that a unit is required, not merely that a string was expected.
                f.write_str("a duration string with a unit, such as \"35m\", \"1h\" or \"800ms\"")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<DurationStr, E> {
                Ok(DurationStr(value.to_owned()))
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// A list of strings, or a single string meaning a one-element list. The single form
/// exists for environment overrides (`CREDVEND_SERVER__LISTEN=127.0.0.1:9000`), where
/// writing TOML array syntax is easy to get wrong.
#[derive(Debug, Clone, Default)]
pub(super) struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![value.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}
