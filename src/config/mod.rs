//! Configuration: types, loading and validation (docs/design.md, Configuration).
//!
//! Inputs: one TOML file (default [`DEFAULT_CONFIG_PATH`]), the files its `include`
//! globs match (only `[mappings.*]` tables are allowed there), then environment
//! overrides `CREDVEND_<SECTION>__<KEY>` (e.g. `CREDVEND_SERVER__LISTEN='["127.0.0.1:9000"]'`,
//! `CREDVEND_REFRESH__COLD_WAIT=1s`). `CREDVEND_CONFIG` names the file and is not a key.
//! External ID files named by `external_id_file` are read during validation.
//!
//! Output: a [`Config`] in which every validation rule holds, or a [`ConfigError`]
//! listing every problem found, one `FILE: KEY: REASON` line each (the CLI exits 64).
//! Validation runs before anything binds or spawns, and on reload a config that fails it
//! is rejected whole.
//!
//! The public types below are the contract the rest of the crate codes against;
//! `raw` holds the serde shapes of the file, `load` the figment plumbing and problem
//! attribution, `validate` and `rules` the checks, `incremental` a reload that reads again
//! only the files that changed.

mod error;
mod incremental;
mod load;
mod permissions;
mod raw;
mod rules;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::aws_names::{PolicyArn, Region, RoleArn, SessionName, SourceIdentity};
use crate::secret::{ExternalId, TokenHash};

pub use error::{ConfigError, Problem};
pub(crate) use incremental::ConfigChanges;
#[cfg(test)]
pub(crate) use load::FileStat;
pub(crate) use load::LoadIndex;
pub use load::Sources;
#[cfg(any(test, feature = "test-util"))]
pub(crate) use load::seam::set_after_read;

/// Environment variable naming the config file (read by the CLI; never a config key).
pub const CONFIG_PATH_ENV: &str = load::CONFIG_PATH_VAR;

/// Default configuration file path.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/credvend/credvend.toml";

/// The mapping name rule (`[A-Za-z0-9_.-]`, 1–64 characters: names appear in URL paths
/// and metric labels), for commands that take a name before it is in a file.
pub fn check_mapping_name(name: &str) -> Result<(), String> {
    rules::mapping_name(name)
}

/// Validated, resolved configuration. Every validation rule holds
/// (docs/design.md, Configuration).
#[derive(Debug, Clone)]
pub struct Config {
    /// Every file read (main file first, then includes in order).
    pub files: Vec<PathBuf>,
    /// Directories the `include` globs look in: a file appearing there is a config
    /// change too (watched for hot reload).
    pub include_dirs: Vec<PathBuf>,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub sts: StsConfig,
    pub refresh: RefreshConfig,
    pub verify: VerifyConfig,
    pub reload: ReloadConfig,
    pub metrics: MetricsConfig,
    /// `[control]`: the control socket that mints job tokens (off by default).
    pub control: ControlConfig,
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
    /// Extra `Host` header values (host part, lower-case, without port) to accept.
    pub allowed_hosts: Vec<String>,
    /// Max concurrent connections on the credential listeners together (not per
    /// address); the admin listener has as many of its own. Default 1024.
    pub max_connections: usize,
    /// HTTP/1 header read timeout. Default 5 s.
    pub header_read_timeout: Duration,
    /// Grace period for in-flight requests at shutdown. Default 10 s.
    pub shutdown_grace: Duration,
    /// Extra `Host` values the admin listener accepts (as `allowed_hosts`). Default none.
    pub admin_allowed_hosts: Vec<String>,
    /// How long a response may wait for the client to take it before the connection is
    /// closed (a client that sends requests and never reads). Default 10 s.
    pub write_timeout: Duration,
}

/// `[log] format`; also the `--log-format` values (the same spellings).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
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
    pub region: Region,
    /// The primary region's STS endpoint override (e.g. "http://127.0.0.1:5000"), from
    /// `[sts.endpoint_urls]` or the deprecated `endpoint_url`; also used for mappings'
    /// own regions.
    pub endpoint_url: Option<String>,
    /// Regions tried, in order, when the primary (or a mapping's own region) fails
    /// (docs/design.md, Regional failover). Default none; never the primary, no
    /// duplicates, at most 8.
    pub fallback_regions: Vec<Region>,
    /// Endpoint overrides of fallback regions, by region name (the primary's is
    /// `endpoint_url`).
    pub endpoint_urls: BTreeMap<String, String>,
    /// Optional vendor service role to assume first (role chaining).
    pub source_role_arn: Option<RoleArn>,
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

/// `external_id_enforcement`; deserializes from its spelling ([`EnforcementMode::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum EnforcementMode {
    Require,
    Warn,
    Off,
}

#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Default Require.
    pub external_id_enforcement: EnforcementMode,
    /// Default 24 h.
    pub recheck_interval: Duration,
}

/// `[reload]`: how a changed configuration is picked up (docs/design.md, Reload).
#[derive(Debug, Clone)]
pub struct ReloadConfig {
    /// Watch the configuration files and include directories and reload on a change
    /// (about half a second after it). Default true. SIGHUP reloads either way. A
    /// reload applies a new value: `false` stops the watch, `true` starts it.
    pub watch: bool,
}

/// `[metrics]`: which mappings have series of their own on `/metrics` (docs/metrics.md,
/// "Which mappings have series"). A reload applies new values at the next scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Default [`PerMappingSeries::Active`].
    pub per_mapping: PerMappingSeries,
    /// How long a mapping keeps its series after it last served a credential or last
    /// failed. Default 1 h.
    pub active_window: Duration,
}

/// `[metrics] per_mapping`; deserializes from its spelling ([`PerMappingSeries::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum PerMappingSeries {
    /// Only mappings that matter now: served or failed within `active_window`, or
    /// failed, degraded or unsafe.
    Active,
    /// Every configured mapping (the output of earlier versions; ~1.7 KB per mapping).
    All,
    /// No series with a `mapping` label at all: the fleet totals only.
    None,
}

impl PerMappingSeries {
    /// The config-file spelling: `active`, `all` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            PerMappingSeries::Active => "active",
            PerMappingSeries::All => "all",
            PerMappingSeries::None => "none",
        }
    }
}

impl TryFrom<String> for PerMappingSeries {
    type Error = String;

    fn try_from(value: String) -> Result<PerMappingSeries, String> {
        [
            PerMappingSeries::Active,
            PerMappingSeries::All,
            PerMappingSeries::None,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == value)
        .ok_or_else(|| {
            format!("`{value}` is not a per_mapping mode; use \"active\", \"all\" or \"none\"")
        })
    }
}

impl Default for MetricsConfig {
    /// The documented defaults: `per_mapping = "active"`, `active_window = "1h"`.
    fn default() -> Self {
        Self {
            per_mapping: PerMappingSeries::Active,
            active_window: Duration::from_secs(3600),
        }
    }
}

/// `[control]`: the Unix socket on which job tokens are minted, listed and revoked
/// (docs/design.md, Job tokens). Restart-only: a reload that changes it warns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Absolute path of the socket; `None` (the default, also for an empty value): no
    /// control socket. Its parent
    /// directory exists and is writable by its owner only; the path is a socket or
    /// nothing (a stale socket is replaced at start).
    pub socket: Option<PathBuf>,
    /// Group the socket is chown'ed to (it is created mode 0660). Default: the group
    /// the daemon runs as.
    pub socket_group: Option<SocketGroup>,
    /// Longest `ttl_seconds` a token may be minted with. Default 12 h.
    pub max_ttl: Duration,
    /// Live job tokens at most. Default 10,000.
    pub max_tokens: usize,
}

impl Default for ControlConfig {
    /// No control socket; the documented bounds.
    fn default() -> Self {
        Self {
            socket: None,
            socket_group: None,
            max_ttl: Duration::from_secs(12 * 3600),
            max_tokens: 10_000,
        }
    }
}

/// `[control] socket_group`, resolved when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    /// As written (a group name or a numeric gid).
    pub name: String,
    pub gid: u32,
}

/// One mapping, resolved: every default applied, External ID loaded.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub name: String,
    pub role_arn: RoleArn,
    /// From `external_id` or the contents of `external_id_file` (trailing newline
    /// stripped). Optional: a mapping without one sends no ExternalId.
    pub external_id: Option<ExternalId>,
    /// Non-empty; no hash appears in two mappings.
    pub token_sha256: Vec<TokenHash>,
    /// Default `credvend-<name>` (truncated to 64 chars).
    pub session_name: SessionName,
    /// Mapping's own or `[refresh].session_duration`.
    pub session_duration: Duration,
    pub session_policy: Option<String>,
    pub policy_arns: Vec<PolicyArn>,
    pub tags: BTreeMap<String, String>,
    pub source_identity: Option<SourceIdentity>,
    /// Mapping's own or `[sts].region`.
    pub region: Region,
    pub prefetch: bool,
    /// Mapping's own or `[verify].external_id_enforcement`.
    pub external_id_enforcement: EnforcementMode,
}

impl Config {
    /// Loads `path`, its includes and `CREDVEND_*` overrides, and validates everything.
    ///
    /// All problems are collected and returned together. Non-fatal findings (short
    /// `min_remaining`, group/world-readable files, a mapping without External ID) are in
    /// [`Config::warnings`] for the caller to log.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::read(path).1
    }

    /// [`Config::load`], also returning what was read ([`Sources`]: the files, the
    /// include globs and the digest of the bytes parsed), valid or not. The reloader
    /// compares digests and watches the names.
    pub fn read(path: &Path) -> (Sources, Result<Config, ConfigError>) {
        let (mut sources, loaded) = load::load(path);
        let result = loaded.and_then(|loaded| Self::validate(path, loaded, &mut sources));
        (sources, result)
    }

    /// What changed since the valid read `index` was taken of, reading again only the
    /// files that changed ([`incremental`]; docs/design.md, Reload). `Err` says why only
    /// a full [`Config::read`] can tell (a changed main file or environment, a problem
    /// to report with every other).
    pub(crate) fn read_changes(
        path: &Path,
        index: &LoadIndex,
    ) -> (Sources, Result<ConfigChanges, &'static str>) {
        incremental::read_changes(path, index)
    }

    /// What [`Config::read`] would read now and the digest it would give, without
    /// parsing the mappings or validating anything: for telling whether the files
    /// changed. Differs from [`Config::read`]'s only for a main file that does not parse
    /// (then it reads as a change).
    pub fn read_sources(path: &Path) -> Sources {
        load::sources(path)
    }

    fn validate(
        path: &Path,
        loaded: load::Loaded,
        sources: &mut Sources,
    ) -> Result<Config, ConfigError> {
        let load::Loaded {
            mut report,
            files,
            include_dirs,
            facts,
            included,
        } = loaded;
        let config = validate::build(&mut report, files, include_dirs);
        if report.problems.is_empty()
            && let Some(config) = &config
        {
            sources.index = load::IndexSlot(
                incremental::index(&report, config, &facts, included, path).map(Arc::new),
            );
        }
        drop(facts);
        let warnings = report.finish()?;
        // `build` returns `None` only after reporting a problem, so `finish` has
        // already returned the error in that case.
        let mut config = config.ok_or_else(|| ConfigError {
            problems: vec![Problem {
                file: path.display().to_string(),
                key: String::new(),
                reason: "invalid configuration".to_owned(),
            }],
        })?;
        config.warnings = warnings;
        Ok(config)
    }

    /// This config without its per-mapping parts (the mappings, the list of files
    /// read, the warnings): what a running daemon keeps of it once the tables are
    /// built. At 100,000 mappings the mappings alone are ~100 MiB of heap that nothing
    /// reads again (docs/performance.md, "Memory and start-up at 100,000 mappings").
    pub fn into_settings(self) -> Config {
        Config {
            files: Vec::new(),
            mappings: BTreeMap::new(),
            warnings: Vec::new(),
            ..self
        }
    }

    /// Human-readable summary for `credvend check-config`: the listeners, then one line
    /// per mapping. Never shows an External ID, only its fingerprint.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let listen: Vec<String> = self.server.listen.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "listen {} (admin {}); {} mapping(s) from {} file(s)",
            listen.join(", "),
            self.server.admin_listen,
            self.mappings.len(),
            self.files.len()
        );
        for mapping in self.mappings.values() {
            let external_id = match &mapping.external_id {
                Some(id) => format!("sha256:{}", id.fingerprint()),
                None => "none".to_owned(),
            };
            let _ = writeln!(
                out,
                "mapping {} role={} region={} session={} prefetch={} enforcement={} \
                 tokens={} external_id={}",
                mapping.name,
                mapping.role_arn,
                mapping.region,
                humantime::format_duration(mapping.session_duration),
                mapping.prefetch,
                mapping.external_id_enforcement.as_str(),
                mapping.token_sha256.len(),
                external_id,
            );
        }
        out
    }
}

impl EnforcementMode {
    /// The config-file spelling: `require`, `warn` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementMode::Require => "require",
            EnforcementMode::Warn => "warn",
            EnforcementMode::Off => "off",
        }
    }
}

impl TryFrom<String> for EnforcementMode {
    type Error = String;

    fn try_from(value: String) -> Result<EnforcementMode, String> {
        [
            EnforcementMode::Require,
            EnforcementMode::Warn,
            EnforcementMode::Off,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == value)
        .ok_or_else(|| {
            format!("`{value}` is not an enforcement mode; use \"require\", \"warn\" or \"off\"")
        })
    }
}
