//! Configuration: types, loading and validation.
//!
//! OWNER NOTE: the types below are the contract the rest of the crate codes against.
//! Loading/validation is implemented below them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::{ExternalId, TokenHash};

/// Default configuration file path.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/credvend/credvend.toml";

/// Validated, resolved configuration. Every invariant of DESIGN.md §4 holds.
#[derive(Debug, Clone)]
pub struct Config {
    /// The main file this configuration was loaded from.
    pub path: PathBuf,
    /// Every file read (main file first, then includes in order).
    pub files: Vec<PathBuf>,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub sts: StsConfig,
    pub refresh: RefreshConfig,
    pub verify: VerifyConfig,
    /// Mappings by name, resolved (External ID read from its file, defaults applied).
    pub mappings: BTreeMap<String, Mapping>,
    /// Non-fatal findings (e.g. min_remaining under 15 min, world-readable files), one
    /// line each, already formatted as `file: key: reason`.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Credential endpoint listen addresses. Default `127.0.0.1:8901`, `[::1]:8901`.
    pub listen: Vec<SocketAddr>,
    /// Admin listener (/metrics /healthz /readyz /status). Default `127.0.0.1:8902`.
    pub admin_listen: SocketAddr,
    /// Permit non-loopback listen addresses. Default false.
    pub allow_non_loopback: bool,
    /// Extra `Host` header values (host part, lower-case, without port) to accept.
    pub allowed_hosts: Vec<String>,
    /// Max concurrent connections per listener set. Default 1024.
    pub max_connections: usize,
    /// HTTP/1 header read timeout. Default 5 s.
    pub header_read_timeout: Duration,
    /// Grace period for in-flight requests at shutdown. Default 10 s.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Default "info"; an EnvFilter directive string.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct StsConfig {
    /// Default "us-east-1".
    pub region: String,
    /// Optional STS endpoint override (e.g. "http://127.0.0.1:5000").
    pub endpoint_url: Option<String>,
    /// Optional vendor service role to assume first (role chaining).
    pub source_role_arn: Option<String>,
    /// Global STS token bucket rate. Default 20.
    pub max_requests_per_second: u32,
    /// Bound on one STS call (connect + response). Default 5 s.
    pub call_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RefreshConfig {
    /// Default 1 h.
    pub session_duration: Duration,
    /// Default 35 min.
    pub refresh_before: Duration,
    /// Default 20 min.
    pub min_remaining: Duration,
    /// Default 800 ms.
    pub cold_wait: Duration,
    /// Default 6 h.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    Require,
    Warn,
    Off,
}

#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Default Require.
    pub external_id_enforcement: Enforcement,
    /// Default 24 h.
    pub recheck_interval: Duration,
}

/// One mapping, resolved: every default applied, External ID loaded.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub name: String,
    pub role_arn: String,
    /// From `external_id` or the contents of `external_id_file` (trailing newline
    /// stripped). Optional: a mapping without one sends no ExternalId.
    pub external_id: Option<ExternalId>,
    /// Non-empty; no hash appears in two mappings.
    pub token_sha256: Vec<TokenHash>,
    /// Default `credvend-<name>` (truncated to 64 chars).
    pub session_name: String,
    /// Mapping's own or `[refresh].session_duration`.
    pub session_duration: Duration,
    pub session_policy: Option<String>,
    pub policy_arns: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub source_identity: Option<String>,
    /// Mapping's own or `[sts].region`.
    pub region: String,
    pub prefetch: bool,
    /// Mapping's own or `[verify].external_id_enforcement`.
    pub external_id_enforcement: Enforcement,
}
