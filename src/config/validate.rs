//! Validation: raw sections → resolved [`Config`], every rule of
//! docs/design.md, Configuration and Security model.
//!
//! Runs on the merged figment held by [`Report`]. Each section and each mapping is
//! decoded on its own, so a broken one does not hide problems in the others, and every
//! rule adds to the report instead of returning. Defaults are applied here (they are the
//! ones documented on the public types). Nothing here binds or spawns.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use humantime::format_duration;

use super::load::Report;
use super::raw::{
    DurationStr, OneOrMany, RawControl, RawLog, RawMapping, RawMetrics, RawRefresh, RawReload,
    RawServer, RawSts, RawVerify, TOP_LEVEL_KEYS,
};
use super::rules;
use super::{
    Config, ControlConfig, EnforcementMode, LogConfig, LogFormat, Mapping, MetricsConfig,
    RefreshConfig, ReloadConfig, ServerConfig, SocketGroup, StsConfig, VerifyConfig,
};
use crate::aws_names::{PolicyArn, Region, SessionName};
use crate::secret::{ExternalId, TokenHash};

/// STS's bounds on `DurationSeconds`.
const MIN_SESSION: Duration = Duration::from_secs(900);
const MAX_SESSION: Duration = Duration::from_secs(43_200);
/// Role chaining caps a session at one hour whatever the role allows.
const MAX_CHAINED_SESSION: Duration = Duration::from_secs(3_600);
/// Below this, botocore and the Java SDK refetch on every call
/// (docs/design.md, Credential lifecycle).
const SDK_REFRESH_WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_COLD_WAIT: Duration = Duration::from_secs(10);
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Each enforcement check costs two STS calls per mapping: bound how often it runs.
const MIN_RECHECK: Duration = Duration::from_secs(60);
/// STS limits.
const MAX_TAGS: usize = 50;
const MAX_POLICY_ARNS: usize = 10;

/// Builds the validated configuration, or leaves problems in `report`.
pub(super) fn build(
    report: &mut Report,
    files: Vec<PathBuf>,
    include_dirs: Vec<PathBuf>,
) -> Option<Config> {
    check_top_level(report);

    let server = server(report);
    let log = log(report);
    let sts = sts(report);
    let refresh = refresh(report, sts.as_ref().map(|s| s.source_role_arn.is_some()));
    let verify = verify(report);
    let reload = reload(report);
    let metrics = metrics(report);
    let control = control(report);
    let mappings = mappings(report, sts.as_ref(), refresh.as_ref(), verify.as_ref());

    Some(Config {
        files,
        include_dirs,
        server: server?,
        log: log?,
        sts: sts?,
        refresh: refresh?.config,
        verify: verify?,
        reload: reload?,
        metrics: metrics?,
        control: control?,
        mappings: mappings?,
        warnings: Vec::new(),
    })
}

fn check_top_level(report: &mut Report) {
    let Some(root) = report.lookup(&[]).and_then(|v| v.as_dict()) else {
        return;
    };
    let unknown: Vec<String> = root
        .keys()
        .filter(|k| !TOP_LEVEL_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        report.problem(
            &[&key],
            format!(
                "unknown key; expected one of: {}",
                TOP_LEVEL_KEYS.join(", ")
            ),
        );
    }
}

/// Parses an optional duration at `path`, defaulting when absent.
fn duration(
    report: &mut Report,
    path: &[&str],
    raw: &Option<DurationStr>,
    default: Duration,
) -> Option<Duration> {
    let Some(DurationStr(text)) = raw else {
        return Some(default);
    };
    match humantime::parse_duration(text) {
        Ok(d) => Some(d),
        Err(e) => {
            report.problem(
                path,
                format!(
                    "`{text}` is not a duration ({e}); write e.g. \"35m\", \"1h\" or \"800ms\""
                ),
            );
            None
        }
    }
}

/// What a non-loopback address would expose, and the switch that permits it.
struct Exposure {
    /// The `[server]` key that permits non-loopback addresses.
    switch: &'static str,
    /// What other hosts could reach, for the message.
    what: &'static str,
    /// An example of a deliberate non-loopback address.
    example: &'static str,
}

const CREDENTIALS_EXPOSURE: Exposure = Exposure {
    switch: "allow_non_loopback",
    what: "credentials would be reachable from other hosts",
    example: "e.g. 169.254.170.23 for a node agent",
};

const ADMIN_EXPOSURE: Exposure = Exposure {
    switch: "admin_allow_non_loopback",
    what: "/status and /metrics would be reachable from other hosts",
    example: "e.g. 0.0.0.0:8902 for kubelet probes and Prometheus in a pod",
};

fn socket_addr(
    report: &mut Report,
    path: &[&str],
    text: &str,
    allow_non_loopback: bool,
    exposure: &Exposure,
) -> Option<SocketAddr> {
    let addr: SocketAddr = match text.parse() {
        Ok(addr) => addr,
        Err(_) => {
            report.problem(
                path,
                format!("`{text}` is not an IP:PORT address (e.g. 127.0.0.1:8901 or [::1]:8901)"),
            );
            return None;
        }
    };
    if !allow_non_loopback && !addr.ip().to_canonical().is_loopback() {
        report.problem(
            path,
            format!(
                "{addr} is not a loopback address; {}. Set server.{} = true to bind it \
                 deliberately ({})",
                exposure.what, exposure.switch, exposure.example
            ),
        );
        return None;
    }
    Some(addr)
}

fn server(report: &mut Report) -> Option<ServerConfig> {
    let (raw, _) = report.decode::<RawServer>(&["server"])?;
    let allow_non_loopback = raw.allow_non_loopback.unwrap_or(false);
    // Its own switch: exposing the admin listener (for probes and scraping) must not
    // also permit a credential listener off loopback, nor the other way round.
    let admin_allow_non_loopback = raw.admin_allow_non_loopback.unwrap_or(false);
    let mut ok = true;

    let listen_text = raw
        .listen
        .map(|l| l.0)
        .unwrap_or_else(|| vec!["127.0.0.1:8901".to_owned(), "[::1]:8901".to_owned()]);
    if listen_text.is_empty() {
        report.problem(
            &["server", "listen"],
            "at least one listen address is required",
        );
        ok = false;
    }
    let mut listen = Vec::new();
    for text in &listen_text {
        match socket_addr(
            report,
            &["server", "listen"],
            text,
            allow_non_loopback,
            &CREDENTIALS_EXPOSURE,
        ) {
            Some(addr) if listen.contains(&addr) => {
                report.problem(&["server", "listen"], format!("{addr} is listed twice"));
                ok = false;
            }
            Some(addr) => listen.push(addr),
            None => ok = false,
        }
    }
    let admin_text = raw.admin_listen.as_deref().unwrap_or("127.0.0.1:8902");
    let admin_listen = socket_addr(
        report,
        &["server", "admin_listen"],
        admin_text,
        admin_allow_non_loopback,
        &ADMIN_EXPOSURE,
    );
    if let Some(admin) = admin_listen
        && listen.contains(&admin)
    {
        report.problem(
            &["server", "admin_listen"],
            format!(
                "{admin} is also a credential listen address; the admin listener needs its own"
            ),
        );
        ok = false;
    }

    let [allowed_hosts, admin_allowed_hosts] = [
        ("allowed_hosts", raw.allowed_hosts),
        ("admin_allowed_hosts", raw.admin_allowed_hosts),
    ]
    .map(|(key, raw_hosts)| {
        let mut hosts = Vec::new();
        for host in raw_hosts.map(|h| h.0).unwrap_or_default() {
            // Host headers compare case-insensitively; store the canonical lower-case form.
            let host = host.to_ascii_lowercase();
            match rules::allowed_host(&host) {
                Ok(()) => hosts.push(host),
                Err(reason) => {
                    report.problem(&["server", key], reason);
                    ok = false;
                }
            }
        }
        hosts
    });

    let max_connections = raw.max_connections.unwrap_or(1024);
    if max_connections == 0 {
        report.problem(&["server", "max_connections"], "must be at least 1");
        ok = false;
    }
    let header_read_timeout = duration(
        report,
        &["server", "header_read_timeout"],
        &raw.header_read_timeout,
        Duration::from_secs(5),
    );
    if header_read_timeout == Some(Duration::ZERO) {
        report.problem(
            &["server", "header_read_timeout"],
            "must be longer than 0: slow clients must be cut off",
        );
        ok = false;
    }
    let shutdown_grace = duration(
        report,
        &["server", "shutdown_grace"],
        &raw.shutdown_grace,
        Duration::from_secs(10),
    );
    let write_timeout = duration(
        report,
        &["server", "write_timeout"],
        &raw.write_timeout,
        Duration::from_secs(10),
    );
    if write_timeout == Some(Duration::ZERO) {
        report.problem(
            &["server", "write_timeout"],
            "must be longer than 0: clients that stop reading must be cut off",
        );
        ok = false;
    }

    if !ok {
        return None;
    }
    Some(ServerConfig {
        listen,
        admin_listen: admin_listen?,
        allowed_hosts,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        header_read_timeout: header_read_timeout?,
        shutdown_grace: shutdown_grace?,
        admin_allowed_hosts,
        write_timeout: write_timeout?,
    })
}

fn log(report: &mut Report) -> Option<LogConfig> {
    let (raw, _) = report.decode::<RawLog>(&["log"])?;
    let level = raw.level.unwrap_or_else(|| "info".to_owned());
    let level_ok = match rules::log_level(&level) {
        Ok(()) => true,
        Err(reason) => {
            report.problem(&["log", "level"], reason);
            false
        }
    };
    let format = match raw.format.as_deref() {
        None | Some("plain") => Some(LogFormat::Plain),
        Some("json") => Some(LogFormat::Json),
        Some(other) => {
            report.problem(
                &["log", "format"],
                format!("`{other}` is not a log format; use \"plain\" or \"json\""),
            );
            None
        }
    };
    level_ok.then_some(LogConfig {
        level,
        format: format?,
    })
}

fn sts(report: &mut Report) -> Option<StsConfig> {
    let (mut raw, broken) = report.decode::<RawSts>(&["sts"])?;
    // A bad region or source role was reported by `decode`; mappings inherit both, so
    // their checks that depend on these wait for a valid [sts].
    let mut ok = !broken.contains("region") && !broken.contains("source_role_arn");
    let region = raw
        .region
        .take()
        .or_else(|| Region::try_from("us-east-1".to_owned()).ok());
    if let Some(url) = &raw.endpoint_url
        && let Err(reason) = rules::endpoint_url(url)
    {
        report.problem(&["sts", "endpoint_url"], reason);
        ok = false;
    }
    let regions = region.as_ref().and_then(|primary| {
        sts_regions(
            report,
            primary,
            raw.fallback_regions.take(),
            raw.endpoint_urls.take(),
            raw.endpoint_url.is_some(),
        )
        .or_else(|| {
            ok = false;
            None
        })
    });
    let max_requests_per_second = raw.max_requests_per_second.unwrap_or(20);
    let max_requests_per_second = match u32::try_from(max_requests_per_second) {
        Ok(n) if n >= 1 => Some(n),
        _ => {
            report.problem(
                &["sts", "max_requests_per_second"],
                format!(
                    "must be between 1 and {}, not {max_requests_per_second}",
                    u32::MAX
                ),
            );
            None
        }
    };
    let call_timeout = duration(
        report,
        &["sts", "call_timeout"],
        &raw.call_timeout,
        Duration::from_secs(5),
    );
    if let Some(t) = call_timeout
        && (t.is_zero() || t > MAX_CALL_TIMEOUT)
    {
        report.problem(
            &["sts", "call_timeout"],
            format!(
                "{} must be more than 0 and at most 1m: a hung STS call must not hold a \
                 mapping's single flight for long",
                format_duration(t)
            ),
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    let (fallback_regions, mut endpoint_urls) = regions?;
    let primary = region?;
    let endpoint_url = endpoint_urls.remove(&*primary).or(raw.endpoint_url);
    Some(StsConfig {
        region: primary,
        endpoint_url,
        fallback_regions,
        endpoint_urls,
        source_role_arn: raw.source_role_arn,
        max_requests_per_second: max_requests_per_second?,
        call_timeout: call_timeout?,
    })
}

/// Most fallback regions: each is one more STS call (and budget token) a failing call
/// may make, and one more `region` label value.
const MAX_FALLBACK_REGIONS: usize = 8;

/// `[sts] fallback_regions` and `[sts.endpoint_urls]` (with the deprecated
/// `endpoint_url`), checked against the primary: the fallback regions in order and every
/// region's endpoint override (the primary's included), or `None` after reporting.
fn sts_regions(
    report: &mut Report,
    primary: &Region,
    fallback_regions: Option<OneOrMany>,
    endpoint_urls: Option<BTreeMap<String, String>>,
    deprecated_url: bool,
) -> Option<(Vec<Region>, BTreeMap<String, String>)> {
    let problems = report.problems.len();
    let mut fallbacks: Vec<Region> = Vec::new();
    let entries = fallback_regions.map(|r| r.0).unwrap_or_default();
    for entry in entries {
        let key = ["sts", "fallback_regions"];
        match Region::try_from(entry.clone()) {
            Err(reason) => report.problem(&key, format!("`{entry}`: {reason}")),
            Ok(region) if region == *primary => report.problem(
                &key,
                format!("`{entry}` is the primary region (sts.region); list only other regions"),
            ),
            Ok(region) if fallbacks.contains(&region) => {
                report.problem(&key, format!("`{entry}` is listed twice"))
            }
            Ok(region) => fallbacks.push(region),
        }
    }
    if fallbacks.len() > MAX_FALLBACK_REGIONS {
        report.problem(
            &["sts", "fallback_regions"],
            format!(
                "{} regions; at most {MAX_FALLBACK_REGIONS}: each is one more STS call a failing \
                 call may make",
                fallbacks.len()
            ),
        );
    }
    let mut urls = BTreeMap::new();
    for (name, url) in endpoint_urls.unwrap_or_default() {
        let key = ["sts", "endpoint_urls", name.as_str()];
        if let Err(reason) = Region::try_from(name.clone()) {
            report.problem(&key, format!("`{name}`: {reason}"));
            continue;
        }
        if *name != **primary && !fallbacks.iter().any(|r| **r == *name) {
            report.problem(
                &key,
                format!(
                    "`{name}` is neither the primary region (sts.region = \"{primary}\") nor one \
                     of sts.fallback_regions"
                ),
            );
            continue;
        }
        if let Err(reason) = rules::endpoint_url(&url) {
            report.problem(&key, reason);
            continue;
        }
        urls.insert(name, url);
    }
    if deprecated_url {
        if urls.contains_key(&**primary) {
            report.problem(
                &["sts", "endpoint_url"],
                format!(
                    "both sts.endpoint_url and sts.endpoint_urls.{primary} set the primary \
                     region's endpoint; keep only sts.endpoint_urls.{primary}"
                ),
            );
        } else {
            report.warn(
                &["sts", "endpoint_url"],
                format!(
                    "deprecated: write the primary region's endpoint as \
                     [sts.endpoint_urls] {primary} = \"…\" (in the environment: \
                     CREDVEND_STS__ENDPOINT_URLS__{primary}); it still works, as the primary's"
                ),
            );
        }
    }
    (report.problems.len() == problems).then_some((fallbacks, urls))
}

/// The refresh section plus what mappings need to check their own session durations.
struct Refresh {
    config: RefreshConfig,
    /// Whether `session_duration` passed its own checks (so mappings inheriting it do
    /// not repeat its problems).
    session_ok: bool,
}

fn refresh(report: &mut Report, chaining: Option<bool>) -> Option<Refresh> {
    let (raw, _) = report.decode::<RawRefresh>(&["refresh"])?;
    let session_duration = duration(
        report,
        &["refresh", "session_duration"],
        &raw.session_duration,
        Duration::from_secs(3600),
    );
    let refresh_before = duration(
        report,
        &["refresh", "refresh_before"],
        &raw.refresh_before,
        Duration::from_secs(35 * 60),
    );
    let min_remaining = duration(
        report,
        &["refresh", "min_remaining"],
        &raw.min_remaining,
        Duration::from_secs(20 * 60),
    );
    let cold_wait = duration(
        report,
        &["refresh", "cold_wait"],
        &raw.cold_wait,
        Duration::from_millis(800),
    );
    let idle_timeout = duration(
        report,
        &["refresh", "idle_timeout"],
        &raw.idle_timeout,
        Duration::from_secs(6 * 3600),
    );
    let mut ok = true;

    if let (Some(min), Some(before)) = (min_remaining, refresh_before) {
        if min >= before {
            report.problem(
                &["refresh", "min_remaining"],
                format!(
                    "min_remaining {} must be shorter than refresh_before {}: credentials \
                     would stop being servable before their refresh is even due",
                    format_duration(min),
                    format_duration(before)
                ),
            );
            ok = false;
        }
        if min < SDK_REFRESH_WINDOW {
            report.warn(
                &["refresh", "min_remaining"],
                format!(
                    "min_remaining {} is under 15m: botocore and the Java SDK refetch on \
                     every API call when fewer than 15 minutes are left",
                    format_duration(min)
                ),
            );
        }
    }
    if let Some(wait) = cold_wait
        && (wait.is_zero() || wait > MAX_COLD_WAIT)
    {
        report.problem(
            &["refresh", "cold_wait"],
            format!(
                "{} must be more than 0 and at most 10s: SDKs time out reading credentials \
                 after 1–2 s",
                format_duration(wait)
            ),
        );
        ok = false;
    }
    if idle_timeout == Some(Duration::ZERO) {
        report.problem(&["refresh", "idle_timeout"], "must be longer than 0");
        ok = false;
    }

    let session_ok = match (session_duration, chaining) {
        (Some(session), Some(chaining)) => check_session_duration(
            report,
            &["refresh", "session_duration"],
            session,
            refresh_before,
            chaining,
        ),
        _ => false,
    };
    ok &= session_ok || session_duration.is_none() || chaining.is_none();

    if !ok {
        return None;
    }
    Some(Refresh {
        config: RefreshConfig {
            session_duration: session_duration?,
            refresh_before: refresh_before?,
            min_remaining: min_remaining?,
            cold_wait: cold_wait?,
            idle_timeout: idle_timeout?,
        },
        session_ok,
    })
}

/// STS bounds, the role-chaining cap and the lifetime arithmetic
/// (docs/design.md, Credential lifecycle).
fn check_session_duration(
    report: &mut Report,
    path: &[&str],
    session: Duration,
    refresh_before: Option<Duration>,
    chaining: bool,
) -> bool {
    let shown = format_duration(session);
    if session.subsec_nanos() != 0 {
        report.problem(path, format!("{shown} must be a whole number of seconds"));
        return false;
    }
    if !(MIN_SESSION..=MAX_SESSION).contains(&session) {
        report.problem(
            path,
            format!("{shown} is outside what STS accepts: 15m to 12h"),
        );
        return false;
    }
    if chaining && session > MAX_CHAINED_SESSION {
        report.problem(
            path,
            format!(
                "{shown} is longer than 1h: sts.source_role_arn is set, and role chaining \
                 caps sessions at 1 hour"
            ),
        );
        return false;
    }
    if let Some(before) = refresh_before
        && session <= before
    {
        report.problem(
            path,
            format!(
                "session_duration {shown} must be longer than refresh_before {}: \
                 credentials would be due for refresh the moment they are issued",
                format_duration(before)
            ),
        );
        return false;
    }
    true
}

fn verify(report: &mut Report) -> Option<VerifyConfig> {
    let (raw, broken) = report.decode::<RawVerify>(&["verify"])?;
    let recheck = duration(
        report,
        &["verify", "recheck_interval"],
        &raw.recheck_interval,
        Duration::from_secs(24 * 3600),
    );
    if let Some(interval) = recheck
        && interval < MIN_RECHECK
    {
        report.problem(
            &["verify", "recheck_interval"],
            format!(
                "{} is too frequent: each check makes two STS calls per mapping; use at least 1m",
                format_duration(interval)
            ),
        );
        return None;
    }
    // A bad mode was reported by `decode`; mappings inheriting it wait for a valid one.
    if broken.contains("external_id_enforcement") {
        return None;
    }
    Some(VerifyConfig {
        external_id_enforcement: raw
            .external_id_enforcement
            .unwrap_or(EnforcementMode::Require),
        recheck_interval: recheck?,
    })
}

fn reload(report: &mut Report) -> Option<ReloadConfig> {
    let (raw, _) = report.decode::<RawReload>(&["reload"])?;
    Some(ReloadConfig {
        watch: raw.watch.unwrap_or(true),
    })
}

/// A window shorter than this would let a mapping in use flicker in and out of
/// `/metrics` between scrapes.
const MIN_ACTIVE_WINDOW: Duration = Duration::from_secs(60);

fn metrics(report: &mut Report) -> Option<MetricsConfig> {
    let (raw, broken) = report.decode::<RawMetrics>(&["metrics"])?;
    let defaults = MetricsConfig::default();
    let window = duration(
        report,
        &["metrics", "active_window"],
        &raw.active_window,
        defaults.active_window,
    );
    if let Some(window) = window
        && window < MIN_ACTIVE_WINDOW
    {
        report.problem(
            &["metrics", "active_window"],
            format!(
                "{} is shorter than 1m: a mapping in use would drop in and out of /metrics \
                 between scrapes",
                format_duration(window)
            ),
        );
        return None;
    }
    if broken.contains("per_mapping") {
        return None;
    }
    Some(MetricsConfig {
        per_mapping: raw.per_mapping.unwrap_or(defaults.per_mapping),
        active_window: window?,
    })
}

/// Longest control socket path: `sun_path` holds 108 bytes with its NUL, and the socket
/// is first bound under a sibling name 4 bytes longer (src/server/control.rs).
const MAX_SOCKET_PATH: usize = 100;
/// Longest `[control] max_ttl`: a token meant to live longer is re-minted (and a lease
/// token has no TTL at all).
const MAX_CONTROL_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

fn control(report: &mut Report) -> Option<ControlConfig> {
    let (raw, _) = report.decode::<RawControl>(&["control"])?;
    let defaults = ControlConfig::default();
    let mut ok = true;
    // Empty means off, like absent: an environment override cannot unset a key the
    // image or the unit sets (`CREDVEND_CONTROL__SOCKET=`).
    let socket = raw.socket.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(path) = &socket {
        match control_socket_problem(path) {
            Some(reason) => {
                report.problem(&["control", "socket"], reason);
                ok = false;
            }
            None => {
                let dir = path.parent().unwrap_or(Path::new("/"));
                if let Some(reason) = super::permissions::control_socket_dir_problem(dir) {
                    report.problem(&["control", "socket"], reason);
                    ok = false;
                }
            }
        }
    }
    let socket_group = match raw.socket_group {
        None => None,
        Some(name) => match resolve_group(&name) {
            Ok(gid) => Some(SocketGroup { name, gid }),
            Err(reason) => {
                report.problem(&["control", "socket_group"], reason);
                ok = false;
                None
            }
        },
    };
    let max_ttl = duration(
        report,
        &["control", "max_ttl"],
        &raw.max_ttl,
        defaults.max_ttl,
    );
    if let Some(ttl) = max_ttl
        && !(Duration::from_secs(1)..=MAX_CONTROL_TTL).contains(&ttl)
    {
        report.problem(
            &["control", "max_ttl"],
            format!(
                "{} is out of range: use 1s to {}",
                format_duration(ttl),
                format_duration(MAX_CONTROL_TTL)
            ),
        );
        ok = false;
    }
    let max_tokens = raw.max_tokens.unwrap_or(defaults.max_tokens as u64);
    if max_tokens == 0 {
        report.problem(&["control", "max_tokens"], "must be at least 1");
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(ControlConfig {
        socket,
        socket_group,
        max_ttl: max_ttl?,
        max_tokens: usize::try_from(max_tokens).unwrap_or(usize::MAX),
    })
}

/// Why `path` cannot be the control socket, if it cannot: relative, too long for a
/// socket address, or naming something that is not a socket (a regular file, a
/// directory, a symlink: removing it to bind would destroy it).
fn control_socket_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    if !path.is_absolute() {
        return Some(format!(
            "`{shown}` is relative; use an absolute path such as /run/credvend/control.sock"
        ));
    }
    if path.file_name().is_none() {
        return Some(format!("`{shown}` names no file"));
    }
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Some(format!(
            "`{shown}` is {len} bytes long; a socket path may have at most {MAX_SOCKET_PATH}"
        ));
    }
    match fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.file_type().is_socket() => Some(format!(
            "{shown} exists and is not a socket; credvend replaces only a stale socket \
             there: remove it or choose another path"
        )),
        _ => None,
    }
}

/// The gid of `name`: a number is taken as a gid, anything else is looked up in the
/// system's group database.
fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!(
            "no group named `{name}`; create it (systemd/credvend.sysusers) or give a numeric gid"
        )),
        Err(error) => Err(format!("cannot look up group `{name}`: {error}")),
    }
}

fn mappings(
    report: &mut Report,
    sts: Option<&StsConfig>,
    refresh: Option<&Refresh>,
    verify: Option<&VerifyConfig>,
) -> Option<BTreeMap<String, Mapping>> {
    let names: Vec<String> = match report.lookup(&["mappings"]) {
        None => Vec::new(),
        Some(value) => match value.as_dict() {
            Some(dict) => dict.keys().cloned().collect(),
            None => {
                report.problem(&["mappings"], "must be a table of [mappings.NAME] tables");
                return None;
            }
        },
    };

    if names.is_empty() {
        report.warn(
            &["mappings"],
            "no mappings: credvend would serve no credentials; add a [mappings.NAME] \
             table per customer role (`credvend mapping new NAME --role-arn ARN` writes \
             one)",
        );
    }
    let mut out = BTreeMap::new();
    let mut ok = true;
    // First mapping to list each token hash: a token opens exactly one mapping.
    let mut token_owner: HashMap<TokenHash, String> = HashMap::new();
    for name in names {
        // Tokens are checked for sharing even when the mapping has other problems, so
        // a shared token is reported alongside them.
        let (mapping, tokens) = mapping(report, &name, sts, refresh, verify);
        for hash in &tokens {
            if let Some(owner) = token_owner.get(hash) {
                report.problem(
                    &["mappings", &name, "token_sha256"],
                    format!(
                        "a token hash is also listed by mapping `{owner}`; each token must \
                         open exactly one mapping (issue `{name}` its own token)"
                    ),
                );
                ok = false;
            } else {
                token_owner.insert(*hash, name.clone());
            }
        }
        match mapping {
            Some(mapping) => {
                out.insert(name, mapping);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn mapping(
    report: &mut Report,
    name: &str,
    sts: Option<&StsConfig>,
    refresh: Option<&Refresh>,
    verify: Option<&VerifyConfig>,
) -> (Option<Mapping>, Vec<TokenHash>) {
    let at = |key: &'static str| -> [&str; 3] { ["mappings", name, key] };
    let mut ok = true;
    if let Err(reason) = rules::mapping_name(name) {
        report.problem(&["mappings", name], reason);
        ok = false;
    }
    let Some((raw, broken)) = report.decode::<RawMapping>(&["mappings", name]) else {
        return (None, Vec::new());
    };
    macro_rules! fail {
        ($key:expr, $reason:expr $(,)?) => {{
            report.problem(&at($key), $reason);
            ok = false;
        }};
    }

    // Role ARN, session name, source identity, region and enforcement mode are checked
    // by `decode` (their types' rules): a bad one is reported there and is `broken`.
    if raw.role_arn.is_none() && !broken.contains("role_arn") {
        fail!(
            "role_arn",
            "missing: every mapping needs the customer's role ARN".to_owned()
        );
    }

    // External ID.
    let external_id = external_id(report, name, &raw, &mut ok);

    // Tokens.
    let mut token_sha256: Vec<TokenHash> = Vec::new();
    let tokens = raw.token_sha256.map(|t| t.0).unwrap_or_default();
    if tokens.is_empty() && !broken.contains("token_sha256") {
        fail!(
            "token_sha256",
            "at least one token hash is required: without one no worker can fetch this \
             mapping (`credvend token new` prints a token and its hash)"
                .to_owned(),
        );
    }
    for (i, text) in tokens.iter().enumerate() {
        match rules::token_hash(text) {
            // A hash listed twice in one mapping is harmless; keep one.
            Ok(hash) if token_sha256.contains(&hash) => {}
            Ok(hash) => token_sha256.push(hash),
            Err(reason) => fail!("token_sha256", format!("entry {}: {reason}", i + 1)),
        }
    }

    // Session name: default `credvend-<name>`, cut to STS's 64 characters (a name
    // that is not a valid mapping name makes an invalid default, reported here too).
    let session_name = match raw.session_name {
        Some(session_name) => Some(session_name),
        None if broken.contains("session_name") => None,
        None => {
            let default: String = format!("credvend-{name}").chars().take(64).collect();
            SessionName::try_from(default)
                .map_err(|reason| fail!("session_name", reason))
                .ok()
        }
    };

    // Session duration: the mapping's own, checked here once [sts] says whether roles
    // are chained; or the global one, already checked in [refresh] and not repeated.
    let session_duration = match &raw.session_duration {
        Some(_) => duration(
            report,
            &at("session_duration"),
            &raw.session_duration,
            Duration::ZERO,
        )
        .filter(|&d| {
            let before = refresh.map(|r| r.config.refresh_before);
            sts.is_none_or(|sts| {
                let chaining = sts.source_role_arn.is_some();
                check_session_duration(report, &at("session_duration"), d, before, chaining)
            })
        }),
        None => refresh
            .filter(|r| r.session_ok)
            .map(|r| r.config.session_duration),
    };

    if let Some(policy) = &raw.session_policy
        && let Err(reason) = rules::session_policy(policy)
    {
        fail!("session_policy", reason);
    }
    // Each bad entry is a problem of its own, so the list keeps strings until here.
    let policy_arn_texts = raw.policy_arns.map(|p| p.0).unwrap_or_default();
    if policy_arn_texts.len() > MAX_POLICY_ARNS {
        fail!(
            "policy_arns",
            format!(
                "at most {MAX_POLICY_ARNS} managed policy ARNs, found {}",
                policy_arn_texts.len()
            ),
        );
    }
    let policy_arns: Vec<PolicyArn> = policy_arn_texts
        .into_iter()
        .filter_map(|arn| {
            PolicyArn::try_from(arn)
                .map_err(|reason| fail!("policy_arns", reason))
                .ok()
        })
        .collect();

    let tags = raw.tags.unwrap_or_default();
    if tags.len() > MAX_TAGS {
        fail!(
            "tags",
            format!("at most {MAX_TAGS} session tags, found {}", tags.len())
        );
    }
    for (key, value) in &tags {
        let key_len = key.chars().count();
        if !(1..=128).contains(&key_len) {
            fail!(
                "tags",
                format!("tag key `{key}` must be 1–128 characters, not {key_len}")
            );
        }
        let value_len = value.chars().count();
        if value_len > 256 {
            fail!(
                "tags",
                format!("the value of tag `{key}` must be at most 256 characters, not {value_len}"),
            );
        }
    }

    let region = raw.region.or_else(|| sts.map(|s| s.region.clone()));

    // Under `require` a mapping without an External ID can never vend: either its
    // role demands an External ID (and refuses us) or it does not (and the enforcement
    // check refuses the role). Say so now rather than at 3 a.m.
    let effective_enforcement = match raw.external_id_enforcement {
        _ if broken.contains("external_id_enforcement") => None,
        Some(own) => Some(own),
        None => verify.map(|v| v.external_id_enforcement),
    };
    if matches!(external_id, Some(None)) && effective_enforcement == Some(EnforcementMode::Require)
    {
        fail!(
            "external_id",
            "missing: with external_id_enforcement = \"require\" a mapping without an \
             External ID can never vend; set external_id (generate one with `credvend \
             external-id new`) or set external_id_enforcement = \"warn\" for this mapping",
        );
    }

    if !ok {
        return (None, token_sha256);
    }
    let mapping = || -> Option<Mapping> {
        Some(Mapping {
            name: name.to_owned(),
            role_arn: raw.role_arn?,
            external_id: external_id?,
            session_name: session_name?,
            session_duration: session_duration?,
            session_policy: raw.session_policy,
            policy_arns,
            tags,
            source_identity: raw.source_identity,
            region: region?,
            prefetch: raw.prefetch.unwrap_or(false),
            external_id_enforcement: effective_enforcement?,
            token_sha256: token_sha256.clone(),
        })
    };
    (mapping(), token_sha256)
}

/// Resolves the External ID from `external_id` or `external_id_file`. Outer `None`:
/// a problem was reported; inner `None`: the mapping sends no External ID.
fn external_id(
    report: &mut Report,
    name: &str,
    raw: &RawMapping,
    ok: &mut bool,
) -> Option<Option<ExternalId>> {
    let inline_key = ["mappings", name, "external_id"];
    let file_key = ["mappings", name, "external_id_file"];
    let value = match (&raw.external_id, &raw.external_id_file) {
        (Some(_), Some(_)) => {
            report.problem(
                &file_key,
                "set either external_id or external_id_file, not both",
            );
            *ok = false;
            return None;
        }
        (None, None) => {
            report.warn(
                &["mappings", name],
                "no external_id or external_id_file: AssumeRole is sent without an \
                 External ID, so the customer's trust policy cannot require one \
                 (confused-deputy risk)",
            );
            return Some(None);
        }
        (Some(inline), None) => (inline.clone(), &inline_key),
        (None, Some(file)) => {
            // Relative paths resolve against the directory of the file that set them
            // (the main file's for an environment override): an include in
            // mappings.d/ can say `external_id_file = "ids/acme"`.
            let base = report
                .origin_file(&file_key)
                .unwrap_or_else(|| report.main_file().to_path_buf())
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let path = base.join(file);
            let text = match fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    report.problem(&file_key, format!("cannot read {}: {e}", path.display()));
                    *ok = false;
                    return None;
                }
            };
            let origin = report.origin(&file_key);
            report.check_private(&path, &origin, &file_key.join("."));
            // Exactly one trailing newline is the file's line ending, not part of the ID;
            // a second one is more likely a mistake and is reported by the charset check.
            let trimmed = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text)
                .to_owned();
            (trimmed, &file_key)
        }
    };
    let (value, key) = value;
    match rules::external_id(&value).and_then(|()| rules::external_id_placeholder(&value)) {
        Ok(()) => {
            if let Some(weakness) = rules::external_id_weakness(&value) {
                report.warn(key, weakness);
            }
            Some(Some(ExternalId::new(value)))
        }
        Err(reason) => {
            report.problem(key, reason);
            *ok = false;
            None
        }
    }
}
