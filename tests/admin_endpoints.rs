//! The admin listener's `/status`, `/readyz` and `/healthz`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use credvend::clock::{Clock, ManualClock};
use credvend::config::{Config, EnforcementMode};
use credvend::daemon::{Daemon, Listeners};
use credvend::model::MappingState;
use credvend::server::{Limits, serve};
use serde_json::json;
use support::daemon::{TestDaemon, assumer, config, eventually, mapping, role_arn, token};
use support::fake_sts::{FakeSts, Fault, Role, TrustRule};
use support::http::{RawResponse, get_with_token, request, send_raw, send_raw_bytes};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const EXTERNAL_ID: &str = "status-canary-external-id-4242";

#[tokio::test]
async fn status_reports_each_mapping_without_secrets() {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    sts.add_role(Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    ));
    sts.add_role(Role::new(
        role_arn("revoked"),
        TrustRule::RequireExternalId("x".into()),
    ));
    let good_token = token("good");
    let bad_token = token("bad");
    let mut good = mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &good_token);
    good.external_id_enforcement = EnforcementMode::Require;
    let bad = mapping("beta-s3", "revoked", Some(EXTERNAL_ID), &bad_token);
    let d = TestDaemon::start(config(&sts.endpoint_url(), vec![good, bad]), clock).await;

    let vended = get_with_token(d.addr, "/v1/credentials/acme-s3", &good_token).await;
    assert_eq!(vended.status, 200);
    let secret = vended.json()["SecretAccessKey"]
        .as_str()
        .unwrap()
        .to_string();
    let session = vended.json()["Token"].as_str().unwrap().to_string();
    let refused = get_with_token(d.addr, "/v1/credentials/beta-s3", &bad_token).await;
    assert_eq!(refused.json()["code"], "AssumeRoleDenied");

    let r = request(d.admin, "GET", "/status", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    for forbidden in [EXTERNAL_ID, &secret, &session, &good_token, &bad_token] {
        assert!(!r.body.contains(forbidden), "secret in /status: {}", r.body);
    }
    let status = r.json();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["config_generation"], 1);
    let acme = &status["mappings"]["acme-s3"];
    assert_eq!(acme["state"], "fresh");
    assert_eq!(acme["expires_at"], vended.json()["Expiration"]);
    assert_eq!(acme["seconds_remaining"], 3600);
    assert_eq!(acme["access_key_id"], vended.json()["AccessKeyId"]);
    assert!(acme["last_refresh"].is_string() && acme["next_refresh"].is_string());
    assert_eq!(acme["external_id_enforcement"]["mode"], "require");
    assert_eq!(acme["external_id_enforcement"]["result"], "enforced");
    assert!(acme["last_error"].is_null());
    let beta = &status["mappings"]["beta-s3"];
    assert_eq!(beta["state"], "failed");
    assert_eq!(beta["last_error"]["reason"], "access_denied");
    assert_eq!(beta["last_error"]["code"], "AccessDenied");
    assert!(beta["expires_at"].is_null());
    d.stop().await;
}

/// `GET /readyz` on `admin`.
async fn readyz(admin: SocketAddr) -> RawResponse {
    request(admin, "GET", "/readyz", &[]).await
}

const READY: &str = r#"{"status":"ready"}"#;
const NOT_WARM: &str = r#"{"status":"starting","reason":"prefetch mappings not warm yet"}"#;
const NOT_BOUND: &str = r#"{"status":"starting","reason":"listeners not bound yet"}"#;

#[track_caller]
fn assert_readyz(response: &RawResponse, status: u16, body: &str, when: &str) {
    assert_eq!(
        (response.status, response.body.as_str()),
        (status, body),
        "/readyz {when}"
    );
}

/// A config whose STS calls may be held by the test for as long as a loaded machine
/// needs: the SDK's call timeout must not end a held call first.
fn patient(mut config: Config) -> Config {
    config.sts.call_timeout = Duration::from_secs(120);
    config
}

/// A manual clock and a fake STS on it that knows role `warm` (no External ID).
async fn sts_knowing_warm() -> (ManualClock, FakeSts) {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    sts.add_role(Role::new(role_arn("warm"), TrustRule::NoExternalIdRequired));
    (clock, sts)
}

/// Waits until the daemon's (first) mapping is fresh (`fetched` names the fetch that
/// makes it so), then asserts `/readyz` answers ready.
async fn assert_ready_once_fresh(d: &TestDaemon, fetched: &str, when: &str) {
    eventually(fetched, || {
        d.daemon.cache.status()[0].state == MappingState::Fresh
    })
    .await;
    assert_readyz(&readyz(d.admin).await, 200, READY, when);
}

/// `/status` (the JSON `status`) shows mapping `name` in `state`, its last error `code`.
#[track_caller]
fn assert_status_error(status: &serde_json::Value, name: &str, state: &str, code: &str) {
    assert_eq!(status["mappings"][name]["state"], state);
    assert_eq!(status["mappings"][name]["last_error"]["code"], code);
}

fn prefetched(name: &str) -> credvend::config::Mapping {
    let mut m = mapping(name, name, None, &token(name));
    m.prefetch = true;
    m
}

#[tokio::test]
async fn readyz_waits_for_prefetch_mappings_and_healthz_is_always_up() {
    let (clock, sts) = sts_knowing_warm().await;
    // The prefetch's STS call is held until the test has looked at /readyz: "not ready
    // yet" is observed while the fetch is certainly in flight, however slow the machine.
    let hold = sts.hold_assume_role();
    let d = TestDaemon::start(
        patient(config(&sts.endpoint_url(), vec![prefetched("warm")])),
        clock,
    )
    .await;

    hold.wait_held(1).await;
    let healthz = request(d.admin, "GET", "/healthz", &[]).await;
    assert_eq!(
        (healthz.status, healthz.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
    assert_eq!(d.daemon.cache.status()[0].state, MappingState::Fetching);
    assert_readyz(
        &readyz(d.admin).await,
        503,
        NOT_WARM,
        "while the prefetch is held",
    );

    hold.release();
    assert_ready_once_fresh(&d, "prefetched", "once the prefetch landed").await;
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 1, "prefetch fetched without a request");
    assert!(calls[0].held, "the prefetch's call was the one held");
    assert_eq!(calls[0].status, Some(200));
    d.stop().await;
}

/// A transient STS failure (503) of a prefetch leaves the mapping without a credential
/// and the daemon unready; the retry comes after the transient backoff (1 s on the
/// injected clock for a first failure, see src/cache/lifecycle.rs) and, once it succeeds,
/// `/readyz` is ready. Nothing retries before the clock moves, so "unready" is stable.
#[tokio::test]
async fn readyz_stays_unready_after_a_transient_prefetch_failure_until_the_retry_succeeds() {
    let (clock, sts) = sts_knowing_warm().await;
    sts.push_fault(Fault::ServiceUnavailable);
    let d = TestDaemon::start(
        config(&sts.endpoint_url(), vec![prefetched("warm")]),
        clock.clone(),
    )
    .await;

    eventually("the failed prefetch is published", || {
        d.daemon.cache.status()[0].last_error.is_some()
    })
    .await;
    assert_eq!(sts.faults_fired(), vec![Fault::ServiceUnavailable]);
    let failed = &d.daemon.cache.status()[0];
    assert_eq!(failed.state, MappingState::Empty);
    assert_eq!(
        failed.next_refresh,
        Some(clock.now() + Duration::from_secs(1)),
        "a failed prefetch schedules its retry after the first transient backoff"
    );
    assert_readyz(
        &readyz(d.admin).await,
        503,
        NOT_WARM,
        "after a transient failure",
    );
    let status = request(d.admin, "GET", "/status", &[]).await.json();
    assert_status_error(&status, "warm", "empty", "ServiceUnavailable");
    assert_eq!(
        sts.assume_role_calls().len(),
        1,
        "no retry before the backoff"
    );

    clock.advance(Duration::from_secs(1));
    assert_ready_once_fresh(&d, "the retry landed", "once the retry succeeded").await;
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[1].fault.clone(), calls[1].status), (None, Some(200)));
    sts.assert_no_pending_faults();
    d.stop().await;
}

/// A prefetch mapping whose role refuses us (terminal) counts as settled: one broken
/// customer role must not keep the sidecar unready for every other mapping. `/status`
/// shows the failure.
#[tokio::test]
async fn readyz_is_ready_when_a_prefetch_role_refuses_for_good() {
    let (clock, sts) = sts_knowing_warm().await;
    sts.add_role(
        Role::new(role_arn("broken"), TrustRule::NoExternalIdRequired).fault(Fault::AccessDenied),
    );
    let d = TestDaemon::start(
        config(
            &sts.endpoint_url(),
            vec![prefetched("warm"), prefetched("broken")],
        ),
        clock,
    )
    .await;

    eventually("both prefetches published", || {
        let states: Vec<_> = d.daemon.cache.status().iter().map(|s| s.state).collect();
        states == [MappingState::Failed, MappingState::Fresh]
    })
    .await;
    assert_readyz(&readyz(d.admin).await, 200, READY, "with one role refusing");
    let denied: Vec<_> = sts
        .assume_role_calls()
        .into_iter()
        .filter(|c| c.fault.is_some())
        .map(|c| (c.role_arn, c.fault))
        .collect();
    assert_eq!(
        denied,
        vec![(Some(role_arn("broken")), Some(Fault::AccessDenied))]
    );
    let status = request(d.admin, "GET", "/status", &[]).await.json();
    assert_status_error(&status, "broken", "failed", "AccessDenied");
    assert_eq!(status["mappings"]["warm"]["state"], "fresh");
    d.stop().await;
}

/// "listeners not bound yet": the daemon's admin endpoints say so until `Daemon::run` is
/// serving every listener, and again once shutdown has begun (in-flight probes during
/// the drain see the daemon unready). The real admin listener only serves inside `run`,
/// so a second listener serves the same daemon's admin endpoints around it. The reason
/// takes precedence over the prefetch one.
///
/// Current-thread runtime (the default): `run` starts the prefetch and sets the flag in
/// one poll, so by the time the held STS call arrives the flag is set.
#[tokio::test]
async fn readyz_says_listeners_not_bound_before_run_serves_and_after_shutdown() {
    let (clock, sts) = sts_knowing_warm().await;
    let hold = sts.hold_assume_role();
    let config = patient(config(&sts.endpoint_url(), vec![prefetched("warm")]));
    let listeners = Listeners::bind(&config.server).await.expect("bind");
    let admin = listeners.admin_addr().expect("admin addr");
    let limits = Limits::from_config(&config.server);
    let daemon = Arc::new(Daemon::new(
        &config,
        Arc::new(assumer(&config).await),
        Arc::new(clock.clone()),
    ));

    let probe_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind probe");
    let probe = probe_listener.local_addr().expect("probe addr");
    let (stop_probe, probe_stopped) = oneshot::channel::<()>();
    let endpoint = daemon.admin_endpoint();
    let probe_server = tokio::spawn(serve(
        probe_listener,
        move |request, conn| {
            let endpoint = endpoint.clone();
            async move { endpoint.handle(request, conn).await }
        },
        limits.clone(),
        async {
            let _ = probe_stopped.await;
        },
    ));

    assert_readyz(&readyz(probe).await, 503, NOT_BOUND, "before run");
    assert!(sts.calls().is_empty(), "nothing fetched before run");

    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn({
        let daemon = daemon.clone();
        async move {
            daemon
                .run(listeners, limits, async {
                    let _ = stopped.await;
                })
                .await;
        }
    });
    hold.wait_held(1).await;
    for addr in [probe, admin] {
        assert_readyz(
            &readyz(addr).await,
            503,
            NOT_WARM,
            "while serving, prefetch held",
        );
    }
    hold.release();
    eventually("prefetched", || {
        daemon.cache.status()[0].state == MappingState::Fresh
    })
    .await;
    for addr in [probe, admin] {
        assert_readyz(&readyz(addr).await, 200, READY, "while serving, prefetched");
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("daemon stops within 30 s")
        .expect("daemon task did not panic");
    assert_readyz(&readyz(probe).await, 503, NOT_BOUND, "after shutdown");

    let _ = stop_probe.send(());
    tokio::time::timeout(Duration::from_secs(30), probe_server)
        .await
        .expect("probe listener stops within 30 s")
        .expect("probe listener did not panic");
}

/// `/status` reports the generation of the config in force and the mapping set of that
/// generation. Every applied config counts, an unchanged one too (telling unchanged
/// files apart is the reload watcher's job, see src/reload.rs); a mapping kept across the
/// reload keeps its credential.
#[tokio::test]
async fn status_generation_counts_applied_configs_and_shows_the_new_mapping_set() {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    for role in ["role-a", "role-b", "role-c"] {
        sts.add_role(Role::new(role_arn(role), TrustRule::NoExternalIdRequired));
    }
    let token_b = token("b");
    let first = config(
        &sts.endpoint_url(),
        vec![
            mapping("map-a", "role-a", None, &token("a")),
            mapping("map-b", "role-b", None, &token_b),
        ],
    );
    let second = config(
        &sts.endpoint_url(),
        vec![
            mapping("map-b", "role-b", None, &token_b),
            mapping("map-c", "role-c", None, &token("c")),
        ],
    );
    let d = TestDaemon::start(first, clock).await;
    let vended = get_with_token(d.addr, "/v1/credentials/map-b", &token_b).await;
    assert_eq!(vended.status, 200, "{}", vended.body);
    let key_b = vended.json()["AccessKeyId"].clone();

    let status = |admin| async move {
        let r = request(admin, "GET", "/status", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let status = r.json();
        let names: Vec<String> = status["mappings"]
            .as_object()
            .expect("mappings object")
            .keys()
            .cloned()
            .collect();
        (status["config_generation"].clone(), names, status)
    };
    let (generation, names, _) = status(d.admin).await;
    assert_eq!(
        (generation, names),
        (json!(1), vec!["map-a".into(), "map-b".into()]),
        "generation and mappings as started"
    );

    d.daemon.apply_config(&second);
    let (generation, names, after) = status(d.admin).await;
    assert_eq!(
        (generation, names),
        (json!(2), vec!["map-b".into(), "map-c".into()]),
        "generation and mappings after the first reload"
    );
    assert_eq!(d.daemon.generation(), 2);
    assert_eq!(after["mappings"]["map-b"]["state"], "fresh");
    assert_eq!(after["mappings"]["map-b"]["access_key_id"], key_b);
    assert_eq!(after["mappings"]["map-c"]["state"], "empty");

    d.daemon.apply_config(&second);
    let (generation, names, _) = status(d.admin).await;
    assert_eq!(
        (generation, names),
        (json!(3), vec!["map-b".into(), "map-c".into()]),
        "generation and mappings after reapplying the same config"
    );
    assert_eq!(sts.assume_role_calls().len(), 1, "reloads fetched nothing");
    d.stop().await;
}

/// `credvend_auth_failures_total{reason="invalid_host"}` as rendered by the daemon.
fn invalid_host_refusals(d: &TestDaemon) -> u64 {
    let text = d.daemon.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix("credvend_auth_failures_total{reason=\"invalid_host\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no invalid_host auth-failure series in:\n{text}"))
}

const ADMIN_PATHS: [&str; 4] = ["/status", "/metrics", "/healthz", "/readyz"];

/// The answer of an admin path to a request whose `Host` was accepted.
#[track_caller]
fn assert_admin_answer(r: &RawResponse, path: &str, what: &str) {
    if path == "/readyz" {
        // Ready or still starting: either way the handler answered, not the Host check.
        assert!(
            matches!(r.status, 200 | 503) && r.json()["status"].is_string(),
            "{what}: {} {}",
            r.status,
            r.body
        );
    } else {
        assert_eq!(r.status, 200, "{what}: {}", r.body);
    }
}

#[track_caller]
fn assert_invalid_host(r: &RawResponse, what: &str) {
    assert_eq!(r.status, 403, "{what} must be refused: {}", r.body);
    assert_eq!(r.json()["code"], "InvalidHost", "{what}: {}", r.body);
    assert!(
        !r.body.contains("acme-s3"),
        "{what}: a refusal names a mapping"
    );
}

/// The admin listener checks `Host` like the credential listener, so a web page cannot
/// read `/status` or `/metrics` through DNS rebinding: loopback names, the admin listen
/// address, the connected address and `server.admin_allowed_hosts` pass; anything else,
/// including a name only the credential listener accepts, is 403 `InvalidHost`, counted
/// as `invalid_host`. The lists are separate both ways and the admin one follows reload.
#[tokio::test]
async fn admin_requests_must_name_the_admin_listener_in_host() {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    sts.add_role(Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    ));
    let acme = token("acme");
    let mut config = config(
        &sts.endpoint_url(),
        vec![mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &acme)],
    );
    config.server.allowed_hosts = vec!["credvend.internal".into()];
    config.server.admin_allowed_hosts = vec!["metrics.pod.internal".into()];
    let d = TestDaemon::start(config.clone(), clock).await;
    let port = d.admin.port();
    let get = |path: &'static str, host: String| async move {
        request(d.admin, "GET", path, &[("Host", &host)]).await
    };

    let refused = [
        "evil.example.com".to_string(),
        format!("evil.example.com:{port}"),
        // The credential listener's extra name is not the admin listener's.
        "credvend.internal".to_string(),
        "10.0.0.1".to_string(),
        format!("metrics.pod.internal.evil.example:{port}"),
    ];
    let accepted = [
        format!("127.0.0.1:{port}"),
        "localhost".to_string(),
        format!("[::1]:{port}"),
        "metrics.pod.internal".to_string(),
        format!("METRICS.Pod.Internal.:{port}"),
    ];
    let before = invalid_host_refusals(&d);
    for path in ADMIN_PATHS {
        for host in &refused {
            assert_invalid_host(
                &get(path, host.clone()).await,
                &format!("{path} Host {host}"),
            );
        }
        for host in &accepted {
            assert_admin_answer(
                &get(path, host.clone()).await,
                path,
                &format!("{path} Host {host}"),
            );
        }
    }
    // No Host and an origin-form target: nothing names the listener.
    assert_invalid_host(
        &send_raw(d.admin, "GET /status HTTP/1.0\r\n\r\n").await,
        "HTTP/1.0 without Host",
    );
    // A Host that is not UTF-8 is refused, not replaced by the target's authority.
    let mut head =
        format!("GET http://127.0.0.1:{port}/status HTTP/1.1\r\nHost: localhost").into_bytes();
    head.extend_from_slice(b"\xff\r\nConnection: close\r\n\r\n");
    assert_invalid_host(&send_raw_bytes(d.admin, &head).await, "Host localhost\\xff");
    assert_eq!(
        invalid_host_refusals(&d) - before,
        (ADMIN_PATHS.len() * refused.len() + 2) as u64,
        "each admin refusal counted as invalid_host"
    );

    // The admin list opens nothing on the credential listener.
    let r = request(
        d.addr,
        "GET",
        "/v1/credentials/acme-s3",
        &[("Host", "metrics.pod.internal"), ("Authorization", &acme)],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (403, Some("InvalidHost")),
        "the admin list opened the credential listener"
    );

    // Reload: the new list applies to the next request.
    config.server.admin_allowed_hosts = vec!["scrape.example".into()];
    d.daemon.apply_config(&config);
    assert_admin_answer(
        &get("/metrics", "scrape.example".into()).await,
        "/metrics",
        "a name added by reload",
    );
    assert_invalid_host(
        &get("/metrics", "metrics.pod.internal".into()).await,
        "a name removed by reload",
    );
    d.stop().await;
}

/// The base identity check: unready while credvend has no AWS credentials of its own
/// (`/readyz` and `/status` say so, never a key), ready again once a check finds them,
/// with the ARN STS named in `/status`.
#[tokio::test]
async fn readyz_and_status_follow_the_base_identity_check() {
    use aws_credential_types::credential_fn::provide_credentials_fn;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_credential_types::provider::error::CredentialsError;
    use credvend::creds::sts::{StsAssumer, StsSettings};

    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    let cfg = config(&sts.endpoint_url(), vec![]);
    let d = TestDaemon::start(cfg.clone(), clock).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while readyz(d.admin).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = request(d.admin, "GET", "/status", &[]).await.json();
    assert_eq!(status["base_identity"]["state"], "unchecked", "{status}");

    let without = StsAssumer::with_credentials_provider(
        StsSettings::from(&cfg.sts),
        SharedCredentialsProvider::new(provide_credentials_fn(|| async {
            Err(CredentialsError::not_loaded(
                "no base credentials in this test",
            ))
        })),
    )
    .await
    .unwrap();
    d.daemon.check_base_identity(&without).await;
    assert_readyz(
        &readyz(d.admin).await,
        503,
        r#"{"reason":"no base AWS credentials","status":"unavailable"}"#,
        "without base credentials",
    );
    let status = request(d.admin, "GET", "/status", &[]).await;
    let identity = &status.json()["base_identity"];
    assert_eq!(identity["state"], "unavailable", "{}", status.body);
    assert_eq!(identity["last_error"]["reason"], "no_base_credentials");
    assert_eq!(identity["arn"], serde_json::Value::Null);

    // Credentials appear: the next check finds them.
    d.daemon.check_base_identity(&assumer(&cfg).await).await;
    assert_readyz(&readyz(d.admin).await, 200, READY, "with base credentials");
    let status = request(d.admin, "GET", "/status", &[]).await;
    let identity = &status.json()["base_identity"];
    assert_eq!(identity["state"], "ok", "{}", status.body);
    assert_eq!(
        identity["arn"],
        support::fake_sts::DEFAULT_BASE_IDENTITY_ARN
    );
    assert!(!status.body.contains("AKIAVENDORBASE"), "{}", status.body);
    assert!(
        !status.body.contains("vendor-base-secret"),
        "{}",
        status.body
    );
    d.stop().await;
}
