//! Tests for loading and validation.
//!
//! Every test that calls [`Config::load`] runs inside `figment::Jail`: it serialises
//! tests that touch `CREDVEND_*` variables, restores the environment afterwards and
//! gives each test its own temporary working directory.

// figment::Jail fixes its closures' error type to figment::Error, which is large.
#![allow(clippy::result_large_err)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Jail;

use super::*;

// Token hashes: 64 hex digits that do not repeat a short pattern (a repeated one is
// refused as a placeholder).
const TOKEN_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
const TOKEN_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb1";
const TOKEN_C: &str = "ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc1";
const TOKEN_D: &str = "ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd1";
/// Appears in no error, warning, `Display` or `Debug` output; tests grep for it.
const CANARY: &str = "CANARY-external-id-0123456789-abcdef";
const ROLE: &str = "arn:aws:iam::111122223333:role/vendor-sync";

/// Writes `contents` to `name` inside the jail, mode 0600 (so no permission warning);
/// a directory it creates is 0755 whatever the umask (a group-writable include
/// directory is a configuration error).
fn write(jail: &Jail, name: &str, contents: &str) -> PathBuf {
    // The jail's own directory is where relative includes look: under umask 002 it is
    // created group-writable, which the loader rightly refuses for an include directory.
    fs::set_permissions(jail.directory(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = jail.directory().join(name);
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        fs::create_dir_all(parent).unwrap();
        for dir in parent.ancestors().take_while(|d| *d != jail.directory()) {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A file with `top` first, then mapping `acme` built from a valid default whose keys
/// `overrides` replace or extend (value given as TOML).
fn config_text(top: &str, overrides: &[(&str, &str)]) -> String {
    let role = format!("\"{ROLE}\"");
    let external_id = format!("\"{CANARY}\"");
    let tokens = format!("[\"{TOKEN_A}\"]");
    let mut keys: Vec<(&str, &str)> = vec![
        ("role_arn", &role),
        ("external_id", &external_id),
        ("token_sha256", &tokens),
    ];
    for (key, value) in overrides {
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => keys.push((key, value)),
        }
    }
    let mut out = format!("{top}\n[mappings.acme]\n");
    for (key, value) in keys.iter().filter(|(_, v)| !v.is_empty()) {
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

fn load_in_jail(text: &str) -> Result<Config, ConfigError> {
    let mut result = None;
    Jail::expect_with(|jail| {
        let path = write(jail, "credvend.toml", text);
        result = Some(Config::load(&path));
        Ok(())
    });
    result.unwrap()
}

fn problems(text: &str) -> Vec<Problem> {
    match load_in_jail(text) {
        Ok(_) => panic!("expected problems, config loaded:\n{text}"),
        Err(e) => e.problems,
    }
}

#[track_caller]
fn assert_problem(problems: &[Problem], key: &str, fragment: &str) {
    assert!(
        problems
            .iter()
            .any(|p| p.key == key && p.reason.contains(fragment)),
        "no problem at `{key}` containing `{fragment}`; got:\n{}",
        ConfigError {
            problems: problems.to_vec()
        }
    );
}

#[test]
fn defaults_are_applied() {
    let config = load_in_jail(&config_text("", &[])).unwrap();
    let s = &config.server;
    assert_eq!(
        s.listen,
        vec![
            "127.0.0.1:8901".parse::<SocketAddr>().unwrap(),
            "[::1]:8901".parse().unwrap()
        ]
    );
    assert_eq!(s.admin_listen, "127.0.0.1:8902".parse().unwrap());
    assert!(s.allowed_hosts.is_empty());
    assert_eq!(s.max_connections, 1024);
    assert_eq!(s.header_read_timeout, Duration::from_secs(5));
    assert_eq!(s.shutdown_grace, Duration::from_secs(10));
    assert!(s.admin_allowed_hosts.is_empty());
    assert_eq!(s.write_timeout, Duration::from_secs(10));
    assert_eq!(config.log.level, "info");
    assert_eq!(config.log.format, LogFormat::Plain);
    assert_eq!(config.sts.region, "us-east-1");
    assert_eq!(config.sts.endpoint_url, None);
    assert_eq!(config.sts.source_role_arn, None);
    assert_eq!(config.sts.max_requests_per_second, 20);
    assert_eq!(config.sts.call_timeout, Duration::from_secs(5));
    let r = &config.refresh;
    assert_eq!(r.session_duration, Duration::from_secs(3600));
    assert_eq!(r.refresh_before, Duration::from_secs(35 * 60));
    assert_eq!(r.min_remaining, Duration::from_secs(20 * 60));
    assert_eq!(r.cold_wait, Duration::from_millis(800));
    assert_eq!(r.idle_timeout, Duration::from_secs(6 * 3600));
    assert_eq!(
        config.verify.external_id_enforcement,
        EnforcementMode::Require
    );
    assert_eq!(
        config.verify.recheck_interval,
        Duration::from_secs(24 * 3600)
    );
    assert!(config.reload.watch);
    assert_eq!(config.metrics.per_mapping, PerMappingSeries::Active);
    assert_eq!(config.metrics.active_window, Duration::from_secs(3600));
    assert_eq!(config.control, ControlConfig::default());
    assert_eq!(config.control.socket, None);
    assert_eq!(config.control.max_ttl, Duration::from_secs(12 * 3600));
    assert_eq!(config.control.max_tokens, 10_000);

    let m = &config.mappings["acme"];
    assert_eq!(m.name, "acme");
    assert_eq!(m.role_arn, ROLE);
    assert_eq!(m.external_id.as_ref().unwrap().expose(), CANARY);
    assert_eq!(m.token_sha256, vec![TokenHash::from_hex(TOKEN_A).unwrap()]);
    assert_eq!(m.session_name, "credvend-acme");
    assert_eq!(m.session_duration, Duration::from_secs(3600));
    assert_eq!(m.session_policy, None);
    assert!(m.policy_arns.is_empty() && m.tags.is_empty());
    assert_eq!(m.source_identity, None);
    assert_eq!(m.region, "us-east-1");
    assert!(!m.prefetch);
    assert_eq!(m.external_id_enforcement, EnforcementMode::Require);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.files.len(), 1);
}

#[test]
fn mapping_settings_override_globals() {
    let top = "[sts]\nregion = \"eu-west-1\"\n[verify]\nexternal_id_enforcement = \"warn\"\n";
    let config = load_in_jail(&config_text(
        top,
        &[
            ("session_duration", "\"2h\""),
            ("session_name", "\"custom\""),
            ("region", "\"ap-southeast-2\""),
            ("prefetch", "true"),
            ("external_id_enforcement", "\"off\""),
            ("tags", "{ tenant = \"acme\" }"),
            ("source_identity", "\"sync-acme\""),
            (
                "policy_arns",
                "[\"arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess\"]",
            ),
            (
                "session_policy",
                "'''{\"Version\":\"2012-10-17\",\"Statement\":[]}'''",
            ),
        ],
    ))
    .unwrap();
    let m = &config.mappings["acme"];
    assert_eq!(m.session_duration, Duration::from_secs(7200));
    assert_eq!(m.session_name, "custom");
    assert_eq!(m.region, "ap-southeast-2");
    assert!(m.prefetch);
    assert_eq!(m.external_id_enforcement, EnforcementMode::Off);
    assert_eq!(m.tags["tenant"], "acme");
    assert_eq!(m.source_identity.as_deref(), Some("sync-acme"));
    assert_eq!(m.policy_arns.len(), 1);
    assert!(m.session_policy.is_some());
    assert_eq!(config.verify.external_id_enforcement, EnforcementMode::Warn);
}

#[test]
fn default_session_name_is_truncated_to_64() {
    let name = "n".repeat(64);
    let text = config_text("", &[]).replace("[mappings.acme]", &format!("[mappings.{name}]"));
    let config = load_in_jail(&text).unwrap();
    let session_name = &config.mappings[&name].session_name;
    assert_eq!(session_name.len(), 64);
    assert!(session_name.starts_with("credvend-nnn"));
}

/// The example holds two placeholders so that it cannot be installed unchanged: it is
/// refused naming exactly those two, and with them replaced it loads.
#[test]
fn example_config_is_refused_for_its_placeholders_and_loads_once_they_are_replaced() {
    // A copy, mode 0600: a checkout made under umask 002 leaves the example
    // group-writable, which the loader rightly refuses.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/credvend.toml");
    let example = fs::read_to_string(example).unwrap();
    let filled_in = example
        .replace(
            "\"replace-me-with-credvend-external-id-new\"",
            &format!("\"{CANARY}\""),
        )
        .replace(
            "[\"replace-me-with-the-hash-from-credvend-token-new\"]",
            &format!("[\"{TOKEN_A}\"]"),
        );
    assert_ne!(filled_in, example, "the example's placeholders moved");
    let mut results = Vec::new();
    Jail::expect_with(|jail| {
        for text in [&example, &filled_in] {
            let path = write(jail, "credvend.toml", text);
            results.push(Config::load(&path));
        }
        Ok(())
    });
    let error = results.remove(0).unwrap_err();
    let mut keys: Vec<(&str, &str)> = error
        .problems
        .iter()
        .map(|p| (p.key.as_str(), p.reason.as_str()))
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 2, "{error}");
    assert_eq!(keys[0].0, "mappings.acme-s3.external_id", "{error}");
    assert!(
        keys[0]
            .1
            .starts_with("a placeholder, not an External ID (it contains \"replaceme\")"),
        "{error}"
    );
    assert_eq!(keys[1].0, "mappings.acme-s3.token_sha256", "{error}");
    assert!(
        keys[1]
            .1
            .starts_with("entry 1: a placeholder, not a token hash"),
        "{error}"
    );
    let config = results.remove(0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.mappings.len(), 1);
    assert!(config.mappings.contains_key("acme-s3"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

/// One failing case: top-level TOML, mapping overrides, expected key, reason fragment.
type RuleCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, &'a str);

/// One failing case per rule.
#[test]
fn each_validation_rule_rejects_a_bad_value() {
    let long_role = format!("\"arn:aws:iam::111122223333:role/{}\"", "r".repeat(65));
    let long_policy = format!("'''{{\"a\":\"{}\"}}'''", "x".repeat(2100));
    let many_tags = format!(
        "{{ {} }}",
        (0..51)
            .map(|i| format!("k{i} = \"v\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let long_tag_key = format!("{{ {} = \"v\" }}", "k".repeat(129));
    let long_tag_value = format!("{{ k = \"{}\" }}", "v".repeat(257));
    let many_policies = format!(
        "[{}]",
        (0..11)
            .map(|i| format!("\"arn:aws:iam::aws:policy/P{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let non_hex_token = format!("[\"{}\"]", "g".repeat(64));
    let zero_token = format!("[\"{}\"]", "0".repeat(64));
    let deadbeef_token = format!("[\"{}\"]", "DeadBeef".repeat(8));
    let counting_token = format!("[\"{}\"]", "0123456789abcdef".repeat(4));
    let long_session_name = format!("\"{}\"", "s".repeat(65));
    let chaining = "[sts]\nsource_role_arn = \"arn:aws:iam::568237466542:role/vendor\"\n";
    let m = "mappings.acme";
    #[rustfmt::skip]
    let cases: Vec<RuleCase> = vec![
        // ARNs
        ("", vec![("role_arn", "\"arn:aws:iam::1111:role/x\"")], format!("{m}.role_arn"), "12 digits"),
        ("", vec![("role_arn", "\"arn:aws-mars:iam::111122223333:role/x\"")], format!("{m}.role_arn"), "unknown partition"),
        ("", vec![("role_arn", &long_role)], format!("{m}.role_arn"), "1–64"),
        ("", vec![("role_arn", "\"arn:aws:iam::111122223333:role/bad name\"")], format!("{m}.role_arn"), "letters, digits"),
        ("", vec![("role_arn", "")], format!("{m}.role_arn"), "missing"),
        ("[sts]\nsource_role_arn = \"arn:aws:iam::111122223333:user/bob\"", vec![], "sts.source_role_arn".into(), "role/"),
        ("", vec![("policy_arns", "[\"arn:aws:iam::aws:role/x\"]")], format!("{m}.policy_arns"), "policy/"),
        ("", vec![("policy_arns", &many_policies)], format!("{m}.policy_arns"), "at most 10"),
        // External ID
        ("", vec![("external_id", "\"x\"")], format!("{m}.external_id"), "2–1224"),
        ("", vec![("external_id", "\"abc def\"")], format!("{m}.external_id"), "character 4"),
        ("", vec![("external_id_file", "\"id\"")], format!("{m}.external_id_file"), "not both"),
        ("", vec![("external_id", "\"replace-me-with-credvend-external-id-new\"")], format!("{m}.external_id"), "a placeholder, not an External ID (it contains \"replaceme\")"),
        ("", vec![("external_id", "\"Acme-ExternalId-CHANGE_ME-0123456789\"")], format!("{m}.external_id"), "(it contains \"changeme\")"),
        ("", vec![("external_id", "\"example-external-id-from-the-readme\"")], format!("{m}.external_id"), "(it contains \"example\")"),
        // Names
        ("", vec![("session_name", "\"a b\"")], format!("{m}.session_name"), "letters, digits"),
        ("", vec![("session_name", &long_session_name)], format!("{m}.session_name"), "2–64"),
        ("", vec![("source_identity", "\"a\"")], format!("{m}.source_identity"), "2–64"),
        ("", vec![("source_identity", "\"aws:x\"")], format!("{m}.source_identity"), "aws:"),
        // Durations and lifetimes
        ("", vec![("session_duration", "\"10m\"")], format!("{m}.session_duration"), "15m to 12h"),
        ("", vec![("session_duration", "\"13h\"")], format!("{m}.session_duration"), "15m to 12h"),
        (chaining, vec![("session_duration", "\"2h\"")], format!("{m}.session_duration"), "role chaining"),
        ("[refresh]\nsession_duration = \"2h\"\n[sts]\nsource_role_arn = \"arn:aws:iam::568237466542:role/v\"", vec![], "refresh.session_duration".into(), "role chaining"),
        ("", vec![("session_duration", "\"15m\"")], format!("{m}.session_duration"),
            "session_duration 15m must be longer than refresh_before 35m: credentials would be due for refresh the moment they are issued"),
        ("[refresh]\nmin_remaining = \"40m\"", vec![], "refresh.min_remaining".into(), "must be shorter than refresh_before 35m"),
        ("[refresh]\nrefresh_before = \"35 minutes please\"", vec![], "refresh.refresh_before".into(), "not a duration"),
        ("[refresh]\ncold_wait = 5", vec![], "refresh.cold_wait".into(), "duration string with a unit"),
        ("[refresh]\ncold_wait = \"11s\"", vec![], "refresh.cold_wait".into(), "at most 10s"),
        ("[refresh]\ncold_wait = \"0s\"", vec![], "refresh.cold_wait".into(), "more than 0"),
        ("[refresh]\nidle_timeout = \"0s\"", vec![], "refresh.idle_timeout".into(), "longer than 0"),
        ("[sts]\ncall_timeout = \"61s\"", vec![], "sts.call_timeout".into(), "at most 1m"),
        ("[sts]\ncall_timeout = \"0s\"", vec![], "sts.call_timeout".into(), "more than 0"),
        ("[verify]\nrecheck_interval = \"1s\"", vec![], "verify.recheck_interval".into(), "at least 1m"),
        // Tokens
        ("", vec![("token_sha256", "[]")], format!("{m}.token_sha256"), "at least one token"),
        ("", vec![("token_sha256", "[\"abc\"]")], format!("{m}.token_sha256"), "64 hex digits"),
        ("", vec![("token_sha256", &non_hex_token)], format!("{m}.token_sha256"), "non-hex"),
        ("", vec![("token_sha256", "[\"replace-me-with-the-hash-from-credvend-token-new\"]")], format!("{m}.token_sha256"), "entry 1: a placeholder, not a token hash (it contains \"replaceme\")"),
        ("", vec![("token_sha256", &zero_token)], format!("{m}.token_sha256"), "repeats a pattern of 1 hex digit)"),
        ("", vec![("token_sha256", &deadbeef_token)], format!("{m}.token_sha256"), "repeats a pattern of 8 hex digits"),
        ("", vec![("token_sha256", &counting_token)], format!("{m}.token_sha256"), "repeats a pattern of 16 hex digits"),
        ("", vec![("token_sha256", "[\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"]")], format!("{m}.token_sha256"), "the SHA-256 of the empty token"),
        // Session policy and tags
        ("", vec![("session_policy", "\"{\"")], format!("{m}.session_policy"), "not valid JSON"),
        ("", vec![("session_policy", &long_policy)], format!("{m}.session_policy"), "2048"),
        ("", vec![("tags", &many_tags)], format!("{m}.tags"), "at most 50"),
        ("", vec![("tags", &long_tag_key)], format!("{m}.tags"), "1–128"),
        ("", vec![("tags", &long_tag_value)], format!("{m}.tags"), "at most 256"),
        // Regions and STS
        ("", vec![("region", "\"moon-1\"")], format!("{m}.region"), "region name"),
        ("[sts]\nregion = \"US-EAST-1\"", vec![], "sts.region".into(), "region name"),
        ("[sts]\nendpoint_url = \"ftp://sts.example\"", vec![], "sts.endpoint_url".into(), "http:// or https://"),
        ("[sts]\nendpoint_url = \"http://:99\"", vec![], "sts.endpoint_url".into(), "no host"),
        ("[sts]\nmax_requests_per_second = 0", vec![], "sts.max_requests_per_second".into(), "between 1"),
        // Server
        ("[server]\nlisten = []", vec![], "server.listen".into(), "at least one"),
        ("[server]\nlisten = [\"0.0.0.0:8901\"]", vec![], "server.listen".into(), "allow_non_loopback"),
        ("[server]\nlisten = [\"localhost\"]", vec![], "server.listen".into(), "IP:PORT"),
        ("[server]\nadmin_listen = \"10.0.0.1:8902\"", vec![], "server.admin_listen".into(), "server.admin_allow_non_loopback"),
        // Each listener kind has its own switch: one does not open the other.
        ("[server]\nallow_non_loopback = true\nadmin_listen = \"0.0.0.0:8902\"", vec![], "server.admin_listen".into(), "server.admin_allow_non_loopback"),
        ("[server]\nadmin_allow_non_loopback = true\nlisten = [\"0.0.0.0:8901\"]", vec![], "server.listen".into(), "server.allow_non_loopback"),
        ("[server]\nadmin_listen = \"127.0.0.1:8901\"", vec![], "server.admin_listen".into(), "its own"),
        ("[server]\nmax_connections = 0", vec![], "server.max_connections".into(), "at least 1"),
        ("[server]\nallowed_hosts = [\"host:80\"]", vec![], "server.allowed_hosts".into(), "without scheme or port"),
        ("[server]\nheader_read_timeout = \"0s\"", vec![], "server.header_read_timeout".into(), "longer than 0"),
        ("[server]\nadmin_allowed_hosts = [\"host:80\"]", vec![], "server.admin_allowed_hosts".into(), "without scheme or port"),
        ("[server]\nwrite_timeout = \"0s\"", vec![], "server.write_timeout".into(), "longer than 0"),
        // Log and verify
        ("[log]\nlevel = \"information\"", vec![], "log.level".into(), "not a level"),
        ("[log]\nformat = \"xml\"", vec![], "log.format".into(), "\"plain\" or \"json\""),
        ("[verify]\nexternal_id_enforcement = \"maybe\"", vec![], "verify.external_id_enforcement".into(), "require"),
        ("", vec![("external_id_enforcement", "\"maybe\"")], format!("{m}.external_id_enforcement"), "require"),
        // Unknown keys
        ("", vec![("rolearn", "\"x\"")], format!("{m}.rolearn"), "unknown key"),
        ("[refresh]\nrefesh_before = \"1h\"", vec![], "refresh.refesh_before".into(), "unknown key"),
        ("bogus = 1", vec![], "bogus".into(), "unknown key"),
        ("", vec![("prefetch", "\"yes\"")], format!("{m}.prefetch"), "invalid type"),
        ("[reload]\nwatch = \"no\"", vec![], "reload.watch".into(), "invalid type"),
        ("[reload]\nwatche = false", vec![], "reload.watche".into(), "unknown key"),
        // Metrics
        ("[metrics]\nper_mapping = \"some\"", vec![], "metrics.per_mapping".into(), "\"active\", \"all\" or \"none\""),
        ("[metrics]\nactive_window = \"30s\"", vec![], "metrics.active_window".into(), "shorter than 1m"),
        ("[metrics]\nactive_window = \"soon\"", vec![], "metrics.active_window".into(), "duration"),
        ("[metrics]\nper_mappings = \"all\"", vec![], "metrics.per_mappings".into(), "unknown key"),
    ];
    for (top, overrides, key, fragment) in cases {
        let mut overrides = overrides;
        if overrides.iter().any(|(k, _)| *k == "external_id_file") {
            overrides.push(("external_id", "\"also-inline\""));
        }
        let text = config_text(top, &overrides);
        let found = problems(&text);
        assert_problem(&found, &key, fragment);
        let shown = ConfigError { problems: found }.to_string();
        assert!(!shown.contains(CANARY), "External ID leaked:\n{shown}");
    }
}

#[test]
fn the_metrics_section_sets_per_mapping_and_the_window() {
    for (mode, expected) in [
        ("active", PerMappingSeries::Active),
        ("all", PerMappingSeries::All),
        ("none", PerMappingSeries::None),
    ] {
        let text = config_text(
            &format!("[metrics]\nper_mapping = \"{mode}\"\nactive_window = \"15m\""),
            &[],
        );
        let config = load_in_jail(&text).unwrap();
        assert_eq!(
            config.metrics,
            MetricsConfig {
                per_mapping: expected,
                active_window: Duration::from_secs(15 * 60),
            }
        );
    }
}

#[test]
fn mapping_names_are_restricted() {
    let text = config_text("", &[]).replace("[mappings.acme]", "[mappings.\"bad name\"]");
    assert_problem(&problems(&text), "mappings.bad name", "A-Z a-z 0-9 _ . -");
    let long = "n".repeat(65);
    let text = config_text("", &[]).replace("[mappings.acme]", &format!("[mappings.{long}]"));
    assert_problem(&problems(&text), &format!("mappings.{long}"), "1–64");
}

/// The default session name `credvend-<name>` is cut to 64 characters, not bytes: a
/// long non-ASCII name is reported like any other bad name, not a panic mid-load.
#[test]
fn a_long_non_ascii_mapping_name_is_reported_not_a_panic() {
    let name = "ä".repeat(30);
    let text = config_text("", &[]).replace("[mappings.acme]", &format!("[mappings.\"{name}\"]"));
    let found = problems(&text);
    assert_problem(&found, &format!("mappings.{name}"), "A-Z a-z 0-9 _ . -");
    assert_problem(
        &found,
        &format!("mappings.{name}.session_name"),
        &format!("`credvend-{name}`: a session name may contain only"),
    );
}

#[test]
fn non_loopback_is_allowed_when_enabled_and_hosts_are_lowercased() {
    let top = "[server]\nallow_non_loopback = true\nlisten = [\"169.254.170.23:80\"]\n\
               allowed_hosts = [\"Credvend.Internal\"]";
    let config = load_in_jail(&config_text(top, &[])).unwrap();
    assert_eq!(
        config.server.listen,
        vec!["169.254.170.23:80".parse().unwrap()]
    );
    assert_eq!(config.server.allowed_hosts, vec!["credvend.internal"]);
}

#[test]
fn the_admin_listener_leaves_loopback_with_its_own_switch() {
    let top = "[server]\nadmin_allow_non_loopback = true\nadmin_listen = \"0.0.0.0:8902\"\n\
               admin_allowed_hosts = [\"Credvend.Pod.Internal\"]\nwrite_timeout = \"3s\"";
    let config = load_in_jail(&config_text(top, &[])).unwrap();
    assert_eq!(config.server.admin_listen, "0.0.0.0:8902".parse().unwrap());
    assert_eq!(
        config.server.admin_allowed_hosts,
        vec!["credvend.pod.internal"]
    );
    assert_eq!(config.server.write_timeout, Duration::from_secs(3));
    // The credential listeners keep their loopback defaults and their own list.
    assert!(config.server.listen.iter().all(|a| a.ip().is_loopback()));
    assert!(config.server.allowed_hosts.is_empty());
}

#[test]
fn a_token_shared_by_two_mappings_names_both() {
    let text = format!(
        "{}\n[mappings.other]\nrole_arn = \"{ROLE}\"\nexternal_id = \"other-id\"\ntoken_sha256 = [\"{TOKEN_A}\"]\n",
        config_text("", &[])
    );
    let found = problems(&text);
    assert_problem(&found, "mappings.other.token_sha256", "mapping `acme`");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = format!(
        r#"
[mappings.typo]
role_arn = "{ROLE}"
external_id = "typo-id"
token_sha256 = ["{TOKEN_A}"]
rolearn = "oops"

[mappings.badarn]
role_arn = "arn:aws:iam::12345:role/x"
external_id = "badarn-id"
token_sha256 = ["{TOKEN_B}"]

[mappings.short]
role_arn = "{ROLE}"
external_id = "short-id"
token_sha256 = ["{TOKEN_C}"]
session_duration = "15m"

[mappings.shared]
role_arn = "{ROLE}"
external_id = "shared-id"
token_sha256 = ["{TOKEN_C}", "{TOKEN_D}"]
"#
    );
    let mut result = None;
    let mut file = String::new();
    Jail::expect_with(|jail| {
        let path = write(jail, "credvend.toml", &text);
        file = path.display().to_string();
        result = Some(Config::load(&path));
        Ok(())
    });
    let error = result.unwrap().unwrap_err();
    let found = &error.problems;
    assert_problem(found, "mappings.typo.rolearn", "unknown key");
    assert_problem(found, "mappings.badarn.role_arn", "12 digits");
    assert_problem(
        found,
        "mappings.short.session_duration",
        "must be longer than refresh_before 35m",
    );
    // Mappings are checked in name order: `shared` lists the token first.
    assert_problem(found, "mappings.short.token_sha256", "mapping `shared`");
    assert_eq!(found.len(), 4, "{error}");
    assert!(found.iter().all(|p| p.file == file), "{error}");
    // Display: one `FILE: KEY: REASON` line per problem.
    let shown = error.to_string();
    assert_eq!(shown.lines().count(), 4);
    assert!(
        shown
            .lines()
            .all(|line| line.starts_with(&format!("{file}: mappings.")))
    );
}

#[test]
fn includes_are_merged_in_sorted_order() {
    Jail::expect_with(|jail| {
        let main = write(
            jail,
            "credvend.toml",
            &format!(
                "include = [\"mappings.d/*.toml\"]\n{}",
                config_text("", &[])
            ),
        );
        let second = write(
            jail,
            "mappings.d/20-beta.toml",
            &format!(
                "[mappings.beta]\nrole_arn = \"{ROLE}\"\nexternal_id = \"beta-id\"\ntoken_sha256 = [\"{TOKEN_C}\"]\n"
            ),
        );
        let first = write(
            jail,
            "mappings.d/10-alpha.toml",
            &format!(
                "[mappings.alpha]\nrole_arn = \"{ROLE}\"\nexternal_id = \"alpha-id\"\ntoken_sha256 = [\"{TOKEN_B}\"]\n"
            ),
        );
        let config = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.files, vec![main, first, second]);
        let names: Vec<&str> = config.mappings.keys().map(String::as_str).collect();
        assert_eq!(names, ["acme", "alpha", "beta"]);
        Ok(())
    });
}

#[test]
fn a_mapping_defined_in_two_files_names_both() {
    Jail::expect_with(|jail| {
        let main = write(
            jail,
            "credvend.toml",
            &format!("include = [\"extra.toml\"]\n{}", config_text("", &[])),
        );
        let extra = write(
            jail,
            "extra.toml",
            &format!("[mappings.acme]\nrole_arn = \"{ROLE}\"\ntoken_sha256 = [\"{TOKEN_B}\"]\n"),
        );
        let error = Config::load(&main).unwrap_err();
        let problem = error
            .problems
            .iter()
            .find(|p| p.key == "mappings.acme")
            .unwrap_or_else(|| panic!("{error}"));
        assert_eq!(problem.file, extra.display().to_string());
        assert!(
            problem.reason.contains(&main.display().to_string()),
            "{error}"
        );
        Ok(())
    });
}

#[test]
fn included_files_may_hold_only_mappings_and_missing_includes_are_reported() {
    Jail::expect_with(|jail| {
        let main = write(
            jail,
            "credvend.toml",
            &format!(
                "include = [\"extra.toml\", \"missing.toml\"]\n{}",
                config_text("", &[])
            ),
        );
        let extra = write(jail, "extra.toml", "[server]\nmax_connections = 5\n");
        let error = Config::load(&main).unwrap_err();
        let found = &error.problems;
        assert_problem(found, "server", "only [mappings.*]");
        assert_eq!(
            found.iter().find(|p| p.key == "server").unwrap().file,
            extra.display().to_string()
        );
        assert_problem(found, "include", "does not exist");
        Ok(())
    });
}

#[test]
fn environment_overrides_apply_and_are_attributed() {
    Jail::expect_with(|jail| {
        let main = write(jail, "credvend.toml", &config_text("", &[]));
        jail.set_env(
            "CREDVEND_SERVER__LISTEN",
            r#"["127.0.0.1:9000", "127.0.0.2:9001"]"#,
        );
        jail.set_env("CREDVEND_REFRESH__COLD_WAIT", "1s");
        jail.set_env("CREDVEND_MAPPINGS__ACME__REGION", "eu-west-1");
        let config = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.server.listen,
            vec![
                "127.0.0.1:9000".parse::<SocketAddr>().unwrap(),
                "127.0.0.2:9001".parse().unwrap()
            ]
        );
        assert_eq!(config.refresh.cold_wait, Duration::from_secs(1));
        assert_eq!(config.mappings["acme"].region, "eu-west-1");

        jail.set_env("CREDVEND_REFRESH__COLD_WAIT", "forever");
        jail.set_env("CREDVEND_SERVER__LISTN", "127.0.0.1:1");
        let error = Config::load(&main).unwrap_err();
        let cold = error
            .problems
            .iter()
            .find(|p| p.key == "refresh.cold_wait")
            .unwrap_or_else(|| panic!("{error}"));
        assert_eq!(
            cold.file,
            "environment variable CREDVEND_REFRESH__COLD_WAIT"
        );
        let typo = error
            .problems
            .iter()
            .find(|p| p.key == "server.listn")
            .unwrap_or_else(|| panic!("{error}"));
        assert_eq!(typo.file, "environment variable CREDVEND_SERVER__LISTN");
        assert!(typo.reason.contains("unknown key"));
        Ok(())
    });
}

#[test]
fn a_single_listen_address_from_the_environment_is_a_list() {
    Jail::expect_with(|jail| {
        let main = write(jail, "credvend.toml", &config_text("", &[]));
        jail.set_env("CREDVEND_SERVER__LISTEN", "127.0.0.1:9000");
        let config = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.server.listen,
            vec!["127.0.0.1:9000".parse().unwrap()]
        );
        Ok(())
    });
}

#[test]
fn credvend_config_is_not_a_config_key() {
    Jail::expect_with(|jail| {
        let main = write(jail, "credvend.toml", &config_text("", &[]));
        jail.set_env(CONFIG_PATH_ENV, main.display());
        Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        Ok(())
    });
}

/// A `CREDVEND_*` variable that is not an override (no `__`, not a top-level key) is
/// not credvend's: it is ignored with a warning naming it, not a fatal unknown key. One
/// with `__` is an override even when its section is misspelt, and fails loudly.
#[test]
fn unrelated_credvend_variables_are_ignored_with_a_warning_and_misspelt_overrides_fail() {
    Jail::expect_with(|jail| {
        let main = write(jail, "credvend.toml", &config_text("", &[]));
        jail.set_env("CREDVEND_BIN", "/usr/local/bin/credvend");
        jail.set_env("CREDVEND_TEST_VENV", "/srv/venv");
        jail.set_env("CREDVEND_LOG_LEVEL", "debug");
        let config = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        let warnings = config.warnings.join("\n");
        for name in ["CREDVEND_BIN", "CREDVEND_TEST_VENV"] {
            assert!(
                config.warnings.contains(&format!(
                    "environment variable {name}: ignored: not a configuration override \
                     (those are CREDVEND_<SECTION>__<KEY>, e.g. CREDVEND_SERVER__LISTEN)"
                )),
                "{warnings}"
            );
        }
        assert!(
            warnings.contains(
                "environment variable CREDVEND_LOG_LEVEL: ignored: not a configuration \
                 override (those are CREDVEND_<SECTION>__<KEY>, e.g. CREDVEND_SERVER__LISTEN); \
                 to override a key, separate the levels with a double underscore \
                 (`CREDVEND_LOG__LEVEL`?)"
            ),
            "{warnings}"
        );
        assert_eq!(config.log.level, "info", "CREDVEND_LOG_LEVEL was applied");
        assert!(!warnings.contains("CREDVEND_CONFIG"), "{warnings}");

        // Overrides: a misspelt section with `__`, and a top-level key by itself.
        jail.set_env("CREDVEND_SEVRER__LISTEN", "127.0.0.1:1");
        jail.set_env("CREDVEND_INCLUDE", "no-such-file.toml");
        let error = Config::load(&main).unwrap_err();
        let typo = error
            .problems
            .iter()
            .find(|p| p.key == "sevrer")
            .unwrap_or_else(|| panic!("{error}"));
        assert_eq!(typo.file, "environment variable CREDVEND_SEVRER__LISTEN");
        assert!(typo.reason.starts_with("unknown key"), "{error}");
        let include = error
            .problems
            .iter()
            .find(|p| p.key == "include")
            .unwrap_or_else(|| panic!("{error}"));
        assert_eq!(include.file, "environment variable CREDVEND_INCLUDE");
        assert!(include.reason.contains("does not exist"), "{error}");
        assert_eq!(error.problems.len(), 2, "{error}");
        Ok(())
    });
}

/// Every top-level section is an override target, so a misspelt key below any of them
/// fails; an unrelated name with one underscore after a section is not.
#[test]
fn every_top_level_key_is_an_override_prefix() {
    use super::load::{EnvVarKind, env_var_kind};
    for key in super::raw::TOP_LEVEL_KEYS {
        let upper = key.to_ascii_uppercase();
        assert_eq!(env_var_kind(&upper), EnvVarKind::Override, "{upper}");
        assert_eq!(env_var_kind(&format!("{upper}__X")), EnvVarKind::Override);
        assert_eq!(env_var_kind(&format!("{upper}_X")), EnvVarKind::Unrelated);
    }
    assert_eq!(env_var_kind("CONFIG"), EnvVarKind::ConfigPath);
    assert_eq!(env_var_kind("BIN"), EnvVarKind::Unrelated);
    assert_eq!(env_var_kind("TEST_VENV"), EnvVarKind::Unrelated);
}

/// A weak External ID (short, or few different characters) is accepted with a warning
/// that names the mapping and never the value; so is a configuration without mappings.
#[test]
fn weak_external_ids_and_zero_mappings_are_warned_about() {
    let cases = [
        ("abc", "it has 3 characters, fewer than 32"),
        ("external-id-a-1", "it has 15 characters, fewer than 32"),
        (
            "abababababababababababababababababababab",
            "it uses only 2 different characters (low entropy)",
        ),
    ];
    for (id, why) in cases {
        let text = config_text("", &[("external_id", &format!("\"{id}\""))]);
        let config = load_in_jail(&text).unwrap_or_else(|e| panic!("{id}: {e}"));
        let warnings = config.warnings.join("\n");
        assert!(
            warnings.contains(&format!(
                "mappings.acme.external_id: weak External ID: {why}"
            )),
            "{id}: {warnings}"
        );
        assert!(!warnings.contains(id), "External ID shown: {warnings}");
    }
    // A generated one, and a UUID, are not weak.
    for id in [
        crate::policy::new_external_id().as_str(),
        "9f1c2b7e-4d3a-4c8e-b5f0-2a6d8e1c3b9f",
    ] {
        let text = config_text("", &[("external_id", &format!("\"{id}\""))]);
        let config = load_in_jail(&text).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }
    // The same rule for an External ID read from a file.
    let mut warnings = Vec::new();
    Jail::expect_with(|jail| {
        write(jail, "acme.id", "short-id\n");
        let main = write(
            jail,
            "credvend.toml",
            &config_text(
                "",
                &[("external_id", ""), ("external_id_file", "\"acme.id\"")],
            ),
        );
        warnings = Config::load(&main)
            .unwrap_or_else(|e| panic!("{e}"))
            .warnings;
        Ok(())
    });
    assert!(
        warnings
            .iter()
            .any(|w| w
                .contains("mappings.acme.external_id_file: weak External ID: it has 8 characters")),
        "{warnings:?}"
    );

    let config = load_in_jail("[server]\nlisten = [\"127.0.0.1:8901\"]\n").unwrap();
    assert!(config.mappings.is_empty());
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(
        config.warnings[0].ends_with(
            "mappings: no mappings: credvend would serve no credentials; add a \
             [mappings.NAME] table per customer role (`credvend mapping new NAME \
             --role-arn ARN` writes one)"
        ),
        "{:?}",
        config.warnings
    );
}

#[test]
fn warnings_for_short_min_remaining_and_missing_external_id() {
    let top = "[refresh]\nmin_remaining = \"10m\"";
    let config = load_in_jail(&config_text(
        top,
        &[("external_id", ""), ("external_id_enforcement", "\"warn\"")],
    ))
    .unwrap();
    let warnings = config.warnings.join("\n");
    assert!(
        warnings.contains("refresh.min_remaining: min_remaining 10m is under 15m: botocore and the Java SDK refetch on every API call when fewer than 15 minutes are left"),
        "{warnings}"
    );
    assert!(
        warnings.contains("mappings.acme: no external_id"),
        "{warnings}"
    );
    assert!(config.mappings["acme"].external_id.is_none());
}

#[test]
fn require_without_an_external_id_is_an_error() {
    let problems = load_in_jail(&config_text("", &[("external_id", "")])).unwrap_err();
    assert_eq!(problems.problems.len(), 1, "{problems}");
    assert_eq!(problems.problems[0].key, "mappings.acme.external_id");
    assert!(problems.problems[0].reason.contains("can never vend"));
}

/// A bad enforcement mode is one problem at its key: the "missing External ID under
/// `require`" rule waits for a valid mode instead of assuming the default `require`.
#[test]
fn a_bad_enforcement_mode_is_not_taken_for_require() {
    let bad = "\"maybe\"";
    for (top, overrides, key) in [
        (
            "",
            vec![("external_id", ""), ("external_id_enforcement", bad)],
            "mappings.acme.external_id_enforcement",
        ),
        (
            "[verify]\nexternal_id_enforcement = \"maybe\"",
            vec![("external_id", "")],
            "verify.external_id_enforcement",
        ),
    ] {
        let found = problems(&config_text(top, &overrides));
        let shown = ConfigError {
            problems: found.clone(),
        };
        assert_eq!(found.len(), 1, "{shown}");
        assert_problem(&found, key, "`maybe` is not an enforcement mode");
    }
}

#[test]
fn readable_files_are_warned_about() {
    Jail::expect_with(|jail| {
        let id_file = write(jail, "ids/acme", "from-a-file-0123\n");
        fs::set_permissions(&id_file, fs::Permissions::from_mode(0o640)).unwrap();
        let main = write(
            jail,
            "credvend.toml",
            &config_text(
                "",
                &[("external_id", ""), ("external_id_file", "\"ids/acme\"")],
            ),
        );
        fs::set_permissions(&main, fs::Permissions::from_mode(0o644)).unwrap();
        let config = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        let warnings = config.warnings.join("\n");
        let main_shown = main.display().to_string();
        assert!(
            warnings.contains(&format!(
                "{main_shown}: {main_shown} is readable by group or others (mode 0644)"
            )),
            "{warnings}"
        );
        assert!(
            warnings.contains(&format!("chmod 600 {main_shown}")),
            "{warnings}"
        );
        assert!(
            warnings.contains(&format!(
                "{main_shown}: mappings.acme.external_id_file: {} is readable",
                id_file.display()
            )),
            "{warnings}"
        );
        assert!(!warnings.contains("from-a-file"), "{warnings}");
        Ok(())
    });
}

#[test]
fn files_another_user_could_write_are_refused() {
    Jail::expect_with(|jail| {
        let id_file = write(jail, "ids/acme", "from-a-file-0123\n");
        let include = write(
            jail,
            "mappings.d/beta.toml",
            &format!(
                "[mappings.beta]\nrole_arn = \"{ROLE}\"\nexternal_id = \"beta-id\"\n\
                 token_sha256 = [\"{TOKEN_B}\"]\n"
            ),
        );
        // The main file is a symlink (as a ConfigMap mounts it): the file behind it is
        // what is checked, and what the fix names.
        let real_main = write(
            jail,
            "..data/credvend.toml",
            &format!(
                "include = [\"mappings.d/*.toml\"]\n{}",
                config_text(
                    "",
                    &[("external_id", ""), ("external_id_file", "\"ids/acme\"")]
                )
            ),
        );
        let main = jail.directory().join("credvend.toml");
        std::os::unix::fs::symlink("..data/credvend.toml", &main).unwrap();
        let include_dir = include.parent().unwrap().to_path_buf();
        let loads = || Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        assert!(loads().warnings.iter().all(|w| !w.contains("mode")));

        let mode = |path: &Path, mode: u32| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        };
        mode(&real_main, 0o620);
        mode(&include, 0o602);
        mode(&include_dir, 0o775);
        mode(&id_file, 0o660);
        let error = Config::load(&main).unwrap_err();
        let shown = |path: &Path| fs::canonicalize(path).unwrap().display().to_string();
        let main_shown = main.display().to_string();
        let problems = &error.problems;
        let fix = |path: &Path| format!("`chmod go-w {}`", shown(path));
        assert_problem(
            problems,
            "",
            &format!(
                "{main_shown} (which resolves to {}) is writable by group or others (mode 0620)",
                shown(&real_main)
            ),
        );
        assert_problem(problems, "", &fix(&real_main));
        assert_problem(problems, "", &fix(&include));
        assert_problem(problems, "include", &fix(&include_dir));
        assert_problem(problems, "mappings.acme.external_id_file", &fix(&id_file));
        assert_eq!(problems.len(), 4, "{error}");
        // Each is attributed to the file that named it.
        let files: Vec<&str> = problems.iter().map(|p| p.file.as_str()).collect();
        let include_shown = include.display().to_string();
        assert_eq!(
            files,
            [&main_shown, &main_shown, &include_shown, &main_shown],
            "{error}"
        );
        assert!(!error.to_string().contains("from-a-file"), "{error}");

        // Read bits alone stay a warning; owner-only write is fine.
        mode(&real_main, 0o644);
        mode(&include, 0o600);
        mode(&include_dir, 0o755);
        mode(&id_file, 0o640);
        let warnings = loads().warnings.join("\n");
        assert!(
            warnings.contains("is readable by group or others"),
            "{warnings}"
        );
        Ok(())
    });
}

#[test]
fn external_id_file_loses_exactly_one_trailing_newline() {
    Jail::expect_with(|jail| {
        write(jail, "ids/one", "id-from-file\n");
        write(jail, "ids/two", "id-from-file\n\n");
        let main = write(
            jail,
            "credvend.toml",
            &config_text(
                "",
                &[("external_id", ""), ("external_id_file", "\"ids/one\"")],
            ),
        );
        let config = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        let id = config.mappings["acme"].external_id.as_ref().unwrap();
        assert_eq!(id.expose(), "id-from-file");

        write(
            jail,
            "credvend.toml",
            &config_text(
                "",
                &[("external_id", ""), ("external_id_file", "\"ids/two\"")],
            ),
        );
        let error = Config::load(&main).unwrap_err();
        assert_problem(
            &error.problems,
            "mappings.acme.external_id_file",
            "second trailing newline",
        );
        assert!(!error.to_string().contains("id-from-file"));

        write(
            jail,
            "credvend.toml",
            &config_text(
                "",
                &[("external_id", ""), ("external_id_file", "\"ids/none\"")],
            ),
        );
        let error = Config::load(&main).unwrap_err();
        assert_problem(
            &error.problems,
            "mappings.acme.external_id_file",
            "cannot read",
        );
        Ok(())
    });
}

/// A relative `external_id_file` resolves against the directory of the file that set it
/// (see src/config/validate.rs): an included file's own directory, so a drop-in in
/// `mappings.d/` can say `ids/acme.txt`; the main file's directory for the main file and
/// for an environment override; never the working directory. Each candidate file holds
/// a different ID, so reading the wrong one shows up as the wrong value.
#[test]
fn external_id_file_resolves_against_the_directory_of_the_file_that_set_it() {
    Jail::expect_with(|jail| {
        // The working directory is the jail; the config lives in etc/ below it.
        write(jail, "ids/acme.txt", "from-the-working-directory\n");
        write(jail, "etc/ids/acme.txt", "from-the-main-files-directory\n");
        write(
            jail,
            "etc/mappings.d/ids/acme.txt",
            "from-the-included-files-directory\n",
        );
        let main = write(
            jail,
            "etc/credvend.toml",
            &format!(
                "include = [\"mappings.d/*.toml\"]\n{}",
                config_text(
                    "",
                    &[
                        ("external_id", ""),
                        ("external_id_file", "\"ids/acme.txt\"")
                    ],
                )
            ),
        );
        write(
            jail,
            "etc/mappings.d/10-beta.toml",
            &format!(
                "[mappings.beta]\nrole_arn = \"{ROLE}\"\nexternal_id_file = \"ids/acme.txt\"\ntoken_sha256 = [\"{TOKEN_B}\"]\n"
            ),
        );
        let id = |config: &Config, name: &str| {
            config.mappings[name]
                .external_id
                .as_ref()
                .map(|id| id.expose().to_owned())
        };
        let config = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            id(&config, "beta").as_deref(),
            Some("from-the-included-files-directory"),
            "a mapping in mappings.d/ reads mappings.d/ids/acme.txt"
        );
        assert_eq!(
            id(&config, "acme").as_deref(),
            Some("from-the-main-files-directory"),
            "a mapping in the main file reads etc/ids/acme.txt"
        );

        // A missing file is reported at the key, with the path tried: the included
        // file's directory joined with the value.
        let beta = write(
            jail,
            "etc/mappings.d/10-beta.toml",
            &format!(
                "[mappings.beta]\nrole_arn = \"{ROLE}\"\nexternal_id_file = \"ids/missing.txt\"\ntoken_sha256 = [\"{TOKEN_B}\"]\n"
            ),
        );
        let error = Config::load(&main).unwrap_err();
        let problem = error
            .problems
            .iter()
            .find(|p| p.key == "mappings.beta.external_id_file")
            .unwrap_or_else(|| panic!("{error}"));
        assert_eq!(problem.file, beta.display().to_string());
        let tried = jail.directory().join("etc/mappings.d/ids/missing.txt");
        assert!(
            problem
                .reason
                .contains(&format!("cannot read {}", tried.display())),
            "{error}"
        );

        // Set from the environment, the path is the main file's business.
        jail.set_env("CREDVEND_MAPPINGS__BETA__EXTERNAL_ID_FILE", "ids/acme.txt");
        let config = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            id(&config, "beta").as_deref(),
            Some("from-the-main-files-directory"),
            "an environment override resolves against the main file's directory"
        );
        Ok(())
    });
}

#[test]
fn external_ids_never_appear_in_output() {
    // A mistyped External ID: serde would normally echo the value.
    let text = config_text("", &[("external_id", "12345678987654321")]);
    let shown = ConfigError {
        problems: problems(&text),
    }
    .to_string();
    assert!(shown.contains("mappings.acme.external_id"), "{shown}");
    assert!(!shown.contains("12345678987654321"), "{shown}");

    // A TOML syntax error on the External ID's line: toml quotes the line.
    let text = format!("[mappings.acme]\nexternal_id = \"{CANARY}\n");
    let shown = ConfigError {
        problems: problems(&text),
    }
    .to_string();
    assert!(shown.contains("TOML parse error"), "{shown}");
    assert!(!shown.contains(CANARY), "{shown}");

    // A valid config: Debug, summary and warnings.
    let config = load_in_jail(&config_text("", &[])).unwrap();
    let everything = format!("{config:?}\n{}\n{:?}", config.summary(), config.warnings);
    assert!(!everything.contains(CANARY), "{everything}");
}

#[test]
fn summary_lists_listeners_and_mappings() {
    let config = load_in_jail(&config_text("", &[("prefetch", "true")])).unwrap();
    let summary = config.summary();
    assert!(
        summary.starts_with("listen 127.0.0.1:8901, [::1]:8901 (admin 127.0.0.1:8902)"),
        "{summary}"
    );
    let fingerprint = config.mappings["acme"]
        .external_id
        .as_ref()
        .unwrap()
        .fingerprint();
    let line = summary
        .lines()
        .find(|l| l.starts_with("mapping acme "))
        .unwrap();
    for part in [
        &format!("role={ROLE}"),
        "region=us-east-1",
        "session=1h",
        "prefetch=true",
        "enforcement=require",
        "tokens=1",
        &format!("external_id=sha256:{fingerprint}"),
    ] {
        assert!(line.contains(part), "{line} lacks {part}");
    }
}

#[test]
fn unreadable_main_file_is_one_problem() {
    Jail::expect_with(|jail| {
        let missing = jail.directory().join("nope.toml");
        let error = Config::load(&missing).unwrap_err();
        assert_eq!(error.problems.len(), 1);
        assert!(
            error.problems[0].reason.starts_with("cannot read file"),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .starts_with(&missing.display().to_string())
        );
        Ok(())
    });
}

mod rules_unit {
    use super::super::rules;
    use crate::aws_names::{PolicyArn, Region, RoleArn};

    #[test]
    fn arn_reasons_name_the_value_and_the_rule() {
        // The ARN rules are pinned in src/aws_names.rs; here, the config's wording.
        assert!(RoleArn::try_from("arn:aws:iam::111122223333:role/vendor-sync".to_owned()).is_ok());
        assert_eq!(
            RoleArn::try_from("arn:aws:sts::111122223333:role/x".to_owned()).unwrap_err(),
            "`arn:aws:sts::111122223333:role/x` is not an IAM role ARN \
             (arn:aws:iam::123456789012:role/NAME): service is `sts`, expected `iam`"
        );
        assert!(
            PolicyArn::try_from("arn:aws:iam::aws:policy/service-role/AmazonS3Thing".to_owned())
                .is_ok()
        );
        assert_eq!(
            PolicyArn::try_from("arn:aws:iam::someone:policy/mine".to_owned()).unwrap_err(),
            "`arn:aws:iam::someone:policy/mine` is not an IAM policy ARN \
             (arn:aws:iam::aws:policy/NAME or arn:aws:iam::123456789012:policy/NAME): the \
             account must be 12 digits, or `aws` for a managed policy"
        );
    }

    #[test]
    fn regions_and_urls() {
        for ok in [
            "us-east-1",
            "us-gov-west-1",
            "cn-north-1",
            "us-isob-east-1",
            "il-central-1",
        ] {
            assert!(Region::is_valid(ok), "{ok}");
        }
        for bad in ["us-east", "useast1", "us-east-1a", "x-east-1", ""] {
            assert!(!Region::is_valid(bad), "{bad}");
        }
        for ok in [
            "http://127.0.0.1:5000",
            "https://sts.us-east-1.amazonaws.com/",
            "http://[::1]:5000",
        ] {
            assert!(rules::endpoint_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:5000",
            "http://",
            "http://host:port",
            "http://a b",
            "http://u:p@host",
        ] {
            assert!(rules::endpoint_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_levels() {
        for ok in [
            "info",
            "DEBUG",
            "credvend=debug,hyper=warn",
            "warn,credvend::server=trace",
        ] {
            assert!(rules::log_level(ok).is_ok(), "{ok}");
        }
        assert!(rules::log_level("verbose").is_err());
    }
}

/// `[control]`: the socket path, its directory and group are checked when the
/// configuration loads, each problem at its key; a valid section loads with its values.
#[test]
fn the_control_section_is_checked_at_load() {
    use std::os::unix::net::UnixListener;
    let mut results = Vec::new();
    Jail::expect_with(|jail| {
        let root = jail.directory().to_path_buf();
        let private = root.join("private");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        let shared = root.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o770)).unwrap();
        let open = root.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o757)).unwrap();
        fs::write(private.join("regular"), "").unwrap();
        // A stale socket (its listener gone) is fine: it is replaced at start.
        drop(UnixListener::bind(private.join("stale.sock")).unwrap());
        let gid = rustix::process::getgid().as_raw();
        let cases = [
            (
                "socket = \"control.sock\"".to_owned(),
                "control.socket",
                "is relative",
            ),
            (
                format!("socket = \"{}\"", private.join("regular").display()),
                "control.socket",
                "exists and is not a socket",
            ),
            (
                format!("socket = \"{}\"", private.display()),
                "control.socket",
                "exists and is not a socket",
            ),
            (
                format!("socket = \"{}\"", shared.join("c.sock").display()),
                "control.socket",
                "writable by group or others (mode 0770)",
            ),
            (
                format!("socket = \"{}\"", open.join("c.sock").display()),
                "control.socket",
                "writable by group or others (mode 0757)",
            ),
            (
                format!("socket = \"{}\"", root.join("missing/c.sock").display()),
                "control.socket",
                "cannot be used",
            ),
            (
                format!("socket = \"/{}\"", "a".repeat(100)),
                "control.socket",
                "at most 100",
            ),
            (
                "socket_group = \"no-such-group-credvend\"".to_owned(),
                "control.socket_group",
                "no group named `no-such-group-credvend`",
            ),
            (
                "max_ttl = \"0s\"".to_owned(),
                "control.max_ttl",
                "out of range",
            ),
            (
                "max_ttl = \"400d\"".to_owned(),
                "control.max_ttl",
                "out of range",
            ),
            (
                "max_tokens = 0".to_owned(),
                "control.max_tokens",
                "at least 1",
            ),
            (
                "sockets = \"/x\"".to_owned(),
                "control.sockets",
                "unknown key",
            ),
        ];
        for (line, key, fragment) in cases {
            let text = config_text(&format!("[control]\n{line}\n"), &[]);
            let path = write(jail, "credvend.toml", &text);
            results.push((line, key, fragment, Config::load(&path).map(|_| ())));
        }
        let good = config_text(
            &format!(
                "[control]\nsocket = \"{}\"\nsocket_group = \"{gid}\"\nmax_ttl = \"2h\"\nmax_tokens = 7\n",
                private.join("stale.sock").display()
            ),
            &[],
        );
        let off = config_text("[control]\nsocket = \"\"\n", &[]);
        let path = write(jail, "credvend.toml", &off);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.control.socket, None, "an empty socket is off");
        let path = write(jail, "credvend.toml", &good);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.control,
            ControlConfig {
                socket: Some(private.join("stale.sock")),
                socket_group: Some(SocketGroup {
                    name: gid.to_string(),
                    gid,
                }),
                max_ttl: Duration::from_secs(7200),
                max_tokens: 7,
            }
        );
        Ok(())
    });
    for (line, key, fragment, result) in results {
        let problems = match result {
            Ok(()) => panic!("`{line}` loaded"),
            Err(error) => error.problems,
        };
        assert_problem(&problems, key, fragment);
    }
}

/// Included files are merged pairwise (a balanced tree, not one by one into a growing
/// table): every mapping still arrives, and a problem in any one of many files names
/// that file, whatever its place in the tree.
#[test]
fn many_included_files_keep_every_mapping_and_their_own_origin() {
    Jail::expect_with(|jail| {
        let main = write(
            jail,
            "credvend.toml",
            &format!(
                "include = [\"mappings.d/*.toml\"]\n{}",
                config_text("", &[])
            ),
        );
        let token = |i: usize| format!("{i:064x}");
        let mut files = Vec::new();
        for i in 0..11 {
            let bad = if i == 6 {
                "sesion_name = \"typo\"\n"
            } else {
                ""
            };
            files.push(write(
                jail,
                &format!("mappings.d/{i:02}.toml"),
                &format!(
                    "[mappings.m{i:02}]\nrole_arn = \"{ROLE}\"\nexternal_id = \"id-{i}\"\n\
                     token_sha256 = [\"{}\"]\n{bad}",
                    token(i + 1)
                ),
            ));
        }
        let error = Config::load(&main).unwrap_err();
        let typo = error
            .problems
            .iter()
            .find(|p| p.key == "mappings.m06.sesion_name")
            .unwrap_or_else(|| panic!("{error}"));
        assert_eq!(typo.file, files[6].display().to_string(), "{error}");
        assert_eq!(error.problems.len(), 1, "{error}");

        write(
            jail,
            "mappings.d/06.toml",
            &format!(
                "[mappings.m06]\nrole_arn = \"{ROLE}\"\nexternal_id = \"id-6\"\n\
                 token_sha256 = [\"{}\"]\n",
                token(7)
            ),
        );
        let config = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.mappings.len(), 12);
        assert_eq!(config.files.len(), 12);
        for i in 0..11 {
            let name = format!("m{i:02}");
            let external_id = config.mappings[&name]
                .external_id
                .as_ref()
                .map(|id| id.expose().to_owned());
            assert_eq!(
                external_id.as_deref(),
                Some(format!("id-{i}").as_str()),
                "{name}"
            );
        }
        Ok(())
    });
}

/// What the reloader keeps of an applied config: its settings, none of the per-mapping
/// data (which the daemon's own tables hold; at 100,000 mappings ~100 MiB).
#[test]
fn into_settings_keeps_the_settings_and_drops_the_mappings() {
    let config = load_in_jail(&config_text("", &[])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.mappings.len(), 1);
    let (listen, level, region) = (
        config.server.listen.clone(),
        config.log.level.clone(),
        config.sts.region.clone(),
    );
    let settings = config.into_settings();
    assert!(
        settings.mappings.is_empty(),
        "mappings kept: {:?}",
        settings.mappings.keys()
    );
    assert!(
        settings.files.is_empty(),
        "files kept: {:?}",
        settings.files
    );
    assert_eq!(settings.server.listen, listen);
    assert_eq!(settings.log.level, level);
    assert_eq!(settings.sts.region, region);
}

/// `Config::read_sources` (the reloader's "changed on disk?" check at start-up) gives
/// the very `Sources` a full read gives — files, include globs, digest — for a main
/// file with includes, and after an edit to one included file; and it runs no load (the
/// after-read seam of a full load does not fire), so at 100,000 mappings it costs a hash
/// of the bytes, not a second parse and validation.
#[test]
fn read_sources_matches_a_full_read_without_loading() {
    Jail::expect_with(|jail| {
        let main = write(
            jail,
            "credvend.toml",
            &format!(
                "include = [\"mappings.d/*.toml\", \"extra.toml\"]\n{}",
                config_text("", &[])
            ),
        );
        let beta = write(
            jail,
            "mappings.d/beta.toml",
            &format!(
                "[mappings.beta]\nrole_arn = \"{ROLE}\"\nexternal_id = \"beta-id\"\ntoken_sha256 = [\"{TOKEN_C}\"]\n"
            ),
        );
        write(
            jail,
            "extra.toml",
            &format!(
                "[mappings.gamma]\nrole_arn = \"{ROLE}\"\nexternal_id = \"gamma-id\"\ntoken_sha256 = [\"{TOKEN_D}\"]\n"
            ),
        );
        for round in 0..2 {
            let fired = std::rc::Rc::new(std::cell::Cell::new(false));
            let flag = fired.clone();
            crate::testing::after_next_config_read(move || flag.set(true));
            let cheap = Config::read_sources(&main);
            assert!(!fired.get(), "round {round}: read_sources ran a full load");
            let (full, loaded) = Config::read(&main);
            assert!(fired.get(), "the seam fires for a full read");
            loaded.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cheap, full, "round {round}");
            assert_eq!(full.files.len(), 3);
            // An edit to one included file changes both digests alike.
            write(
                jail,
                "mappings.d/beta.toml",
                &format!(
                    "[mappings.beta]\nrole_arn = \"{ROLE}\"\nexternal_id = \"beta-id-{round}\"\ntoken_sha256 = [\"{TOKEN_C}\"]\n"
                ),
            );
            assert_ne!(
                Config::read_sources(&main).digest,
                full.digest,
                "{}",
                beta.display()
            );
        }
        Ok(())
    });
}

/// A reload reuses what the files contributed only while the environment is the one the
/// index was taken with, and never when a variable overrides a mapping's key (such a
/// variable applies across files): the full read then decides.
#[test]
fn the_load_index_is_not_reused_across_environment_changes_or_mapping_overrides() {
    Jail::expect_with(|jail| {
        let main = write(jail, "credvend.toml", &config_text("", &[]));
        let (sources, config) = Config::read(&main);
        config.unwrap_or_else(|e| panic!("{e}"));
        let index = sources.index.0.expect("a valid read leaves an index");
        let (_, changes) = Config::read_changes(&main, &index);
        assert!(changes.is_ok(), "{:?}", changes.err());

        jail.set_env("CREDVEND_REFRESH__COLD_WAIT", "1s");
        let (_, changes) = Config::read_changes(&main, &index);
        assert_eq!(changes.err(), Some("the environment changed"));

        jail.set_env("CREDVEND_MAPPINGS__ACME__REGION", "eu-west-1");
        let (sources, config) = Config::read(&main);
        let config = config.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.mappings["acme"].region, "eu-west-1");
        assert!(
            sources.index.0.is_none(),
            "an override of a mapping's key: no index"
        );
        Ok(())
    });
}

#[test]
fn fallback_regions_and_endpoint_urls_load_in_order_with_the_primarys_url_apart() {
    let text = config_text(
        "[sts]\nregion = \"us-east-1\"\nfallback_regions = [\"us-west-2\", \"eu-west-1\"]\n\
         [sts.endpoint_urls]\nus-east-1 = \"https://vpce-1.sts.us-east-1.vpce.amazonaws.com\"\n\
         eu-west-1 = \"http://127.0.0.1:5001\"",
        &[],
    );
    let config = load_in_jail(&text).expect("valid");
    let fallbacks: Vec<&str> = config.sts.fallback_regions.iter().map(|r| &**r).collect();
    assert_eq!(fallbacks, ["us-west-2", "eu-west-1"]);
    assert_eq!(
        config.sts.endpoint_url.as_deref(),
        Some("https://vpce-1.sts.us-east-1.vpce.amazonaws.com")
    );
    assert_eq!(
        config.sts.endpoint_urls,
        BTreeMap::from([("eu-west-1".to_owned(), "http://127.0.0.1:5001".to_owned())])
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // None by default.
    let plain = load_in_jail(&config_text("", &[])).expect("valid");
    assert!(plain.sts.fallback_regions.is_empty());
    assert!(plain.sts.endpoint_urls.is_empty());
}

#[test]
fn the_deprecated_endpoint_url_is_the_primarys_with_a_warning() {
    let text = config_text("[sts]\nendpoint_url = \"http://127.0.0.1:5000\"", &[]);
    let config = load_in_jail(&text).expect("valid");
    assert_eq!(
        config.sts.endpoint_url.as_deref(),
        Some("http://127.0.0.1:5000")
    );
    let warnings = config.warnings.join("\n");
    assert!(
        warnings.contains("sts.endpoint_url") && warnings.contains("deprecated"),
        "{warnings}"
    );
    assert!(
        warnings.contains("[sts.endpoint_urls] us-east-1 = "),
        "{warnings}"
    );
}

#[test]
fn bad_fallback_regions_and_endpoint_urls_are_refused_with_their_keys() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[sts]\nfallback_regions = [\"us-west-2\", \"Moon-1\"]",
            "sts.fallback_regions",
            "`Moon-1`: ",
        ),
        (
            "[sts]\nfallback_regions = [\"us-east-1\"]",
            "sts.fallback_regions",
            "`us-east-1` is the primary region (sts.region)",
        ),
        (
            "[sts]\nfallback_regions = [\"us-west-2\", \"us-west-2\"]",
            "sts.fallback_regions",
            "`us-west-2` is listed twice",
        ),
        (
            "[sts]\nfallback_regions = [\"us-west-1\", \"us-west-2\", \"eu-west-1\", \"eu-west-2\", \
             \"eu-west-3\", \"eu-central-1\", \"ap-south-1\", \"ap-northeast-1\", \"sa-east-1\"]",
            "sts.fallback_regions",
            "9 regions; at most 8",
        ),
        (
            "[sts.endpoint_urls]\neu-west-1 = \"http://127.0.0.1:5001\"",
            "sts.endpoint_urls.eu-west-1",
            "neither the primary region (sts.region = \"us-east-1\") nor one of sts.fallback_regions",
        ),
        (
            "[sts]\nfallback_regions = [\"us-west-2\"]\n[sts.endpoint_urls]\nus-west-2 = \"ftp://x\"",
            "sts.endpoint_urls.us-west-2",
            "http:// or https://",
        ),
        (
            "[sts.endpoint_urls]\nUS-EAST-1 = \"http://127.0.0.1:5001\"",
            "sts.endpoint_urls.US-EAST-1",
            "`US-EAST-1`: ",
        ),
        (
            "[sts]\nendpoint_url = \"http://127.0.0.1:5000\"\n\
             [sts.endpoint_urls]\nus-east-1 = \"http://127.0.0.1:5001\"",
            "sts.endpoint_url",
            "both sts.endpoint_url and sts.endpoint_urls.us-east-1 set the primary region's endpoint",
        ),
        (
            "[sts]\nfallback_regions = 3",
            "sts.fallback_regions",
            "invalid type",
        ),
    ];
    for (top, key, fragment) in cases {
        let found = problems(&config_text(top, &[]));
        assert_problem(&found, key, fragment);
        let shown = ConfigError {
            problems: found.clone(),
        }
        .to_string();
        assert!(shown.contains("credvend.toml"), "no file named:\n{shown}");
    }
}

#[test]
fn fallback_regions_come_from_the_environment_as_a_list_or_one_name() {
    Jail::expect_with(|jail| {
        let path = write(jail, "credvend.toml", &config_text("", &[]));
        jail.set_env("CREDVEND_STS__FALLBACK_REGIONS", "us-west-2");
        let config = Config::load(&path).expect("valid");
        let fallbacks: Vec<&str> = config.sts.fallback_regions.iter().map(|r| &**r).collect();
        assert_eq!(fallbacks, ["us-west-2"]);
        Ok(())
    });
}
