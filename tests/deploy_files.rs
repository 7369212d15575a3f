//! The operations files stay in step with the code: every metric the dashboard and the
//! alert rules use is one credvend exports; the rules pass `promtool check rules`; the
//! systemd unit passes `systemd-analyze verify` and keeps its hardening score.
//!
//! The external tools come from Debian packages (`prometheus` for promtool, `systemd`
//! for systemd-analyze), which `scripts/test.sh` installs. A missing tool fails the
//! test: a check that silently skips proves nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use credvend::creds::FailureReason;
use credvend::metrics::{Metrics, route};
use credvend::model::{MappingState, Source};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Whether `tool` runs; panics (with how to get it) if it does not.
fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found,
        "{tool} is not installed: run scripts/test.sh, which installs the Debian packages \
         prometheus (promtool) and systemd (systemd-analyze)"
    );
    found
}

/// Every series name credvend exports, histogram series included.
fn exported() -> BTreeSet<String> {
    let m = Metrics::new();
    m.sync_mappings(["x"]);
    m.assume_role("x", Ok(()), Duration::from_millis(1));
    m.assume_role("x", Err(FailureReason::Throttled), Duration::from_millis(1));
    m.sts_call("us-east-1", Ok(()), Duration::from_millis(1));
    m.sts_regions(&[credvend::creds::regions::RegionHealth {
        region: "us-east-1".into(),
        role: credvend::creds::regions::RegionRole::Primary,
        state: credvend::creds::regions::BreakerState::Closed,
        consecutive_failures: 0,
        last_error: None,
        next_probe_in: None,
    }]);
    m.served("x", Source::Cache);
    m.expiry("x", UNIX_EPOCH + Duration::from_secs(2_000_000_000));
    m.set_state("x", MappingState::Fresh);
    m.enforcement("x", Some(true));
    m.http_request(route::CREDENTIALS, 200, Duration::from_micros(1));
    m.auth_failure("missing_token");
    m.sts_rate_limited_catch_up(1);
    m.config_reload(false);
    let mut names = BTreeSet::new();
    for line in m.render().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            names.insert(name.to_string());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Identifiers in `text` that start with one of credvend's metric prefixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &bytes[i..];
        if boundary && (rest.starts_with(b"credvend_") || rest.starts_with(b"process_")) {
            let end = rest
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .map_or(bytes.len(), |n| i + n);
            // ASCII-only span, so always a char boundary.
            names.insert(text[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

fn assert_all_exported(file: &str, text: &str) {
    let exported = exported();
    let used = metric_names(text);
    assert!(!used.is_empty(), "{file} uses no credvend metric?");
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "{file} uses metrics credvend does not export: {unknown:?}\nexported: {exported:?}"
    );
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let text = std::fs::read_to_string(repo("config/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut exprs = String::new();
    fn collect(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    if matches!(key.as_str(), "expr" | "query" | "definition")
                        && let Some(s) = value.as_str()
                    {
                        out.push_str(s);
                        out.push('\n');
                    }
                    collect(value, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert_all_exported("config/grafana-dashboard.json", &exprs);
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(variables.contains(&"datasource") && variables.contains(&"mapping"));
    assert!(exprs.contains("label_values(credvend_mapping_state, mapping)"));
}

#[test]
fn every_metric_the_alert_rules_use_is_exported() {
    let text = std::fs::read_to_string(repo("config/alerts.yml")).unwrap();
    assert_all_exported("config/alerts.yml", &text);
}

#[test]
fn alert_rules_pass_promtool() {
    if !have("promtool") {
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("config/alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `config/alerts.yml` without its `description` annotations (the indented block after
/// each `description: |`): the promtool unit tests pin when each alert fires, its labels
/// and its summary, not its prose.
fn alert_rules_without_descriptions() -> String {
    let text = std::fs::read_to_string(repo("config/alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut in_description = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if in_description && (line.trim().is_empty() || indent > 10) {
            continue;
        }
        in_description = line.trim() == "description: |";
        if !in_description {
            out.push(line);
        }
    }
    let stripped = out.join("\n");
    assert_eq!(
        stripped.matches("- alert: ").count(),
        text.matches("- alert: ").count(),
        "stripping the descriptions lost a rule"
    );
    assert_eq!(
        stripped.matches("summary: ").count(),
        text.matches("- alert: ").count(),
        "every rule keeps its summary"
    );
    assert!(!stripped.contains("description:"));
    stripped
}

/// `promtool test rules tests/promtool/alerts.test.yml`: the rules fire on the
/// `credvend_fleet_*` totals where no series has a `mapping` label
/// (`[metrics] per_mapping = "none"`, or a mapping whose series have not appeared yet),
/// and name the mapping where its series exist.
#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    if !have("promtool") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("credvend-alert-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("alerts.yml"), alert_rules_without_descriptions()).unwrap();
    std::fs::copy(
        repo("tests/promtool/alerts.test.yml"),
        dir.join("alerts.test.yml"),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The families labelled by `mapping` (src/metrics/per_mapping.rs).
const PER_MAPPING_FAMILIES: [&str; 6] = [
    "credvend_assume_role_total",
    "credvend_assume_role_failures_total",
    "credvend_credentials_served_total",
    "credvend_credentials_expiry_timestamp_seconds",
    "credvend_mapping_state",
    "credvend_external_id_enforced",
];

/// Series with a `mapping` label exist only for the mappings `[metrics] per_mapping`
/// shows, none at all under "none": a rule on them alone would stay silent there. So
/// every rule whose expression uses one also uses a `credvend_fleet_*` total.
#[test]
fn every_alert_on_a_per_mapping_family_also_watches_a_fleet_total() {
    let text = std::fs::read_to_string(repo("config/alerts.yml")).unwrap();
    let mut checked = 0;
    for rule in text.split("- alert: ").skip(1) {
        let name = rule.split_whitespace().next().unwrap();
        let expr = rule
            .split("expr:")
            .nth(1)
            .and_then(|rest| rest.split("labels:").next())
            .unwrap_or_else(|| panic!("{name} has no expr"));
        let names = metric_names(expr);
        if PER_MAPPING_FAMILIES.iter().any(|f| names.contains(*f)) {
            assert!(
                names.iter().any(|n| n.starts_with("credvend_fleet_")),
                "{name} uses only per-mapping series: {names:?}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "only {checked} rules on per-mapping families?"
    );
}

/// The unit with its binary path pointed at the binary cargo built, since
/// `systemd-analyze verify` insists that `ExecStart=` exists.
fn unit_with_built_binary() -> (PathBuf, PathBuf) {
    let unit = std::fs::read_to_string(repo("systemd/credvend.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/credvend serve"));
    let dir = std::env::temp_dir().join(format!(
        "credvend-unit-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("credvend.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/credvend", env!("CARGO_BIN_EXE_credvend")),
    )
    .unwrap();
    (dir, path)
}

#[test]
fn systemd_unit_verifies_cleanly() {
    if !have("systemd-analyze") {
        return;
    }
    let (dir, path) = unit_with_built_binary();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

/// No core dumps of a process whose memory holds secrets (credvend also marks itself
/// non-dumpable: `tests/cli.rs`, `serve_is_not_dumpable`). Read from the file, so it
/// holds where `systemd-analyze` is not installed.
#[test]
fn systemd_unit_allows_no_core_dumps() {
    let unit = std::fs::read_to_string(repo("systemd/credvend.service")).unwrap();
    let limits: Vec<&str> = unit
        .lines()
        .filter(|line| line.trim_start().starts_with("LimitCORE="))
        .collect();
    assert_eq!(
        limits,
        ["LimitCORE=0"],
        "the [Service] section's core limit"
    );
    let service = unit.split("[Service]").nth(1).expect("a [Service] section");
    let service = service.split("\n[").next().unwrap_or(service);
    assert!(
        service.contains("\nLimitCORE=0\n"),
        "LimitCORE=0 outside [Service]"
    );
}

#[test]
fn systemd_unit_exposure_stays_low() {
    if !have("systemd-analyze") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(repo("systemd/credvend.service"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split("credvend.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{stdout}"));
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{stdout}");
    for directive in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecReload=/usr/local/bin/credvend check-config",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
        "UMask=077",
    ] {
        let unit = std::fs::read_to_string(repo("systemd/credvend.service")).unwrap();
        assert!(unit.contains(directive), "{directive:?} missing");
    }
}

/// The unit's `Exec…=` command lines for `key` (e.g. `ExecReload=`), in order.
fn unit_commands(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key))
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_reload_fails_on_an_invalid_config_and_only_then_signals() {
    let unit = std::fs::read_to_string(repo("systemd/credvend.service")).unwrap();
    let start = unit_commands(&unit, "ExecStart=");
    assert_eq!(start.len(), 1, "{start:?}");
    let config = start[0]
        .split("--config ")
        .nth(1)
        .expect("ExecStart= names its --config")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    // systemd runs ExecReload= lines in order and stops at the first that fails, and then
    // `systemctl reload` fails: the check comes first, on the config the daemon serves.
    let reload = unit_commands(&unit, "ExecReload=");
    assert_eq!(
        reload,
        [
            format!("/usr/local/bin/credvend check-config --config {config}"),
            "/bin/kill -HUP $MAINPID".to_string(),
        ],
        "ExecReload= lines"
    );

    // The check line as systemd runs it, on the built binary and a file of ours: it fails
    // on an invalid config (naming the problem) and passes a valid one.
    let dir = std::env::temp_dir().join(format!("credvend-exec-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("credvend.toml");
    let valid = std::fs::read_to_string(repo("fuzz/seeds/config_load/minimal.toml")).unwrap();
    let invalid = valid.replace(
        "role_arn = \"arn:aws:iam::111122223333:role/vendor-sync\"",
        "role_arn = \"not-an-arn\"",
    );
    assert_ne!(valid, invalid);
    for (text, expected) in [(&invalid, Some(64)), (&valid, Some(0))] {
        std::fs::write(&file, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let line = reload[0]
            .replace("/usr/local/bin/credvend", env!("CARGO_BIN_EXE_credvend"))
            .replace(&config, &file.display().to_string());
        let mut words = line.split_whitespace();
        let out = Command::new(words.next().unwrap())
            .args(words)
            .env_clear()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), expected, "{line}: {stderr}");
        if expected != Some(0) {
            assert!(stderr.contains("mappings.acme-s3.role_arn"), "{stderr}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
