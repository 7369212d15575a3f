//! The daemon as a process, logging JSON at `trace`: every line is JSON, a vend makes
//! exactly one audit line, and no secret — secret key, session token, auth token,
//! External ID — reaches a log line, `/metrics`, `/status` or an error body
//! (docs/design.md, Security model and Telemetry). Canary values make a leak impossible
//! to miss.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use credvend::clock::ManualClock;
use support::config_file::sts_and_acme_toml;
use support::e2e::{credvend_serve, write_private_file};
use support::fake_sts::{FakeSts, Role, TrustRule};
use support::http::request;

const EXTERNAL_ID: &str = "CANARYEXTID-5f1e2d3c4b5a69788796";
const TOKEN: &str = "CANARYTOKEN-0a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// Two distinct free loopback addresses: both probes stay bound until both are read, so
/// the kernel cannot hand out the same port twice.
fn free_addrs() -> (SocketAddr, SocketAddr) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (bind(), bind());
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_at_trace_carry_one_audit_line_per_vend_and_no_secret() {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock)).await;
    sts.add_role(Role::new(
        "arn:aws:iam::111122223333:role/vendor-sync",
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    ));
    let (listen, admin) = free_addrs();
    let dir = std::env::temp_dir().join(format!("credvend-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("credvend.toml");
    write_private_file(
        &config,
        &format!(
            r#"
[server]
listen = ["{listen}"]
admin_listen = "{admin}"

[log]
level = "info"

[refresh]
# The most a config may set: the one vend below is a cold miss, and it must not get a
# 503 because a loaded machine made the fake STS slower than the default 800 ms.
cold_wait = "10s"

{sts_and_acme}"#,
            sts_and_acme = sts_and_acme_toml(&sts.endpoint_url(), EXTERNAL_ID, TOKEN),
        ),
    );
    let log_path = dir.join("stderr.log");
    let mut command = credvend_serve(&config, &dir, "trace", "CANARYBASESECRET-vendor-base-key");
    command.args(["--log-format", "json"]);
    let mut child = support::e2e::ChildGuard::spawn("credvend", command, &log_path);
    let log_so_far = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(admin).await.is_ok() {
            break;
        }
        if let Some(exit) = child.exit_status() {
            panic!("credvend exited ({exit}) before serving:\n{}", log_so_far());
        }
        assert!(
            Instant::now() < deadline,
            "credvend did not start within 60 s:\n{}",
            log_so_far()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let path = "/v1/credentials/acme-s3";
    let vended = request(listen, "GET", path, &[("Authorization", TOKEN)]).await;
    assert_eq!(vended.status, 200, "{}", vended.body);
    let body = vended.json();
    let secret = body["SecretAccessKey"].as_str().unwrap().to_string();
    let session = body["Token"].as_str().unwrap().to_string();
    let access_key_id = body["AccessKeyId"].as_str().unwrap().to_string();
    let wrong = request(
        listen,
        "GET",
        path,
        &[("Authorization", "CANARYWRONGTOKEN-1234")],
    )
    .await;
    assert_eq!(wrong.status, 403);
    let metrics = request(admin, "GET", "/metrics", &[]).await.body;
    let status = request(admin, "GET", "/status", &[]).await.body;

    let exit = tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(0),
        "SIGTERM: {}",
        log_so_far()
    );
    let mut log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    // Every line is one JSON object.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 10, "trace level logs more than this: {log}");

    // Exactly one audit line for the one vend, with the documented fields.
    let served: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "credvend::audit" && l["message"] == "Credentials served")
        .collect();
    assert_eq!(served.len(), 1, "{log}");
    let audit = served[0];
    assert_eq!(audit["mapping"], "acme-s3");
    assert_eq!(audit["status"], 200);
    assert_eq!(audit["source"], "fresh");
    assert_eq!(audit["access_key_id"], access_key_id.as_str());
    assert_eq!(audit["expiration"], body["Expiration"]);
    assert!(audit["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let refused = lines
        .iter()
        .filter(|l| l["target"] == "credvend::audit" && l["status"] == 403)
        .count();
    assert_eq!(refused, 1);

    // No canary anywhere.
    let places = [
        ("log", log.as_str()),
        ("/metrics", metrics.as_str()),
        ("/status", status.as_str()),
        ("403 body", wrong.body.as_str()),
    ];
    for (what, text) in places {
        for (name, canary) in [
            ("External ID", EXTERNAL_ID),
            ("auth token", TOKEN),
            ("wrong auth token", "CANARYWRONGTOKEN"),
            ("secret access key", secret.as_str()),
            ("session token", session.as_str()),
            ("base secret key", "CANARYBASESECRET"),
        ] {
            assert!(!text.contains(canary), "{name} leaked into {what}");
        }
    }
}
