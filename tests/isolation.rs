//! Isolation between mappings against the fake STS: one customer's broken role, hammered
//! by clients that retry in a loop, costs the others nothing
//! (docs/design.md, Credential lifecycle).
//!
//! Wall time is a [`ManualClock`]: the broken mapping's retry backoff runs on it, so
//! while the test does not move the clock, the backoff does not run out, and the number
//! of STS calls the broken mapping may make is exact. Real time passes only for the STS
//! budget, whose tokens refill on it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use credvend::model::MappingState;
use support::daemon::{self, eventually, mapping, role_arn, settled, token};
use support::fake_sts::{Fault, Role, TrustRule};
use support::http::{RawResponse, get_with_token, request};

/// Clients looping on the broken mapping.
const HAMMERS: usize = 8;

/// A small budget, so that one mapping that is allowed to call STS as often as its
/// clients ask spends all of it.
const RATE: u32 = 2;

/// Requests for one mapping's credentials, in a loop, until `stop`, counted in `asked`;
/// every response.
fn hammer(
    addr: std::net::SocketAddr,
    name: &str,
    token: &str,
    stop: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<RawResponse>> {
    let (path, token) = (format!("/v1/credentials/{name}"), token.to_string());
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            seen.push(get_with_token(addr, &path, &token).await);
            asked.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    })
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not exported"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_mapping_hammered_by_clients_costs_the_others_nothing() {
    let tokens = [token("broken"), token("steady"), token("newcomer")];
    let (sts, d) = daemon::start_with_sts_and(
        vec![
            mapping("broken", "broken", None, &tokens[0]),
            mapping("steady", "steady", None, &tokens[1]),
            mapping("newcomer", "newcomer", None, &tokens[2]),
        ],
        |c| {
            c.sts.max_requests_per_second = RATE;
            // Cold misses are answered by STS, not by the wait running out.
            c.refresh.cold_wait = Duration::from_secs(20);
        },
    )
    .await;
    for name in ["broken", "steady", "newcomer"] {
        sts.add_role(Role::new(role_arn(name), TrustRule::NoExternalIdRequired));
    }
    sts.set_role_fault(&role_arn("broken"), Some(Fault::ServiceUnavailable));
    let calls_for = |name: &str| {
        let arn = role_arn(name);
        sts.assume_role_calls()
            .into_iter()
            .filter(|c| c.role_arn.as_deref() == Some(arn.as_str()))
            .count()
    };

    // A healthy mapping in use, with its refresh scheduled.
    let first = get_with_token(d.addr, "/v1/credentials/steady", &tokens[1]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let refresh_due = settled(&d, "steady")
        .await
        .next_refresh
        .expect("refresh scheduled");

    // The broken mapping, hammered: its first STS call fails (503); its clients go on
    // asking.
    let stop = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let hammers: Vec<_> = (0..HAMMERS)
        .map(|_| hammer(d.addr, "broken", &tokens[0], stop.clone(), asked.clone()))
        .collect();
    eventually("the hammering clients' first 100 requests", || {
        asked.load(Ordering::Relaxed) >= 100
    })
    .await;

    // A cold miss of another mapping meanwhile: served by its own STS call.
    let newcomer = get_with_token(d.addr, "/v1/credentials/newcomer", &tokens[2]).await;
    assert_eq!(newcomer.status, 200, "{}", newcomer.body);
    assert_eq!(calls_for("newcomer"), 1);

    // The healthy mappings' refreshes fall due (and so does the broken one's retry,
    // once): they happen while the hammering goes on.
    let newcomer_due = settled(&d, "newcomer")
        .await
        .next_refresh
        .expect("refresh scheduled");
    let now = d.daemon.cache.now();
    d.clock.advance(
        refresh_due.max(newcomer_due).duration_since(now).unwrap() + Duration::from_secs(1),
    );
    eventually("the healthy mappings' scheduled refreshes", || {
        calls_for("steady") == 2 && calls_for("newcomer") == 2
    })
    .await;
    for name in ["steady", "newcomer"] {
        assert_eq!(settled(&d, name).await.state, MappingState::Fresh, "{name}");
    }
    // Let the hammering go on a little past the retry too.
    let so_far = asked.load(Ordering::Relaxed);
    eventually("100 more requests", || {
        asked.load(Ordering::Relaxed) >= so_far + 100
    })
    .await;

    // The broken mapping's STS calls follow its backoff, not its clients: one call, then
    // one retry when the clock moved past the backoff, whatever the request count.
    assert_eq!(
        calls_for("broken"),
        2,
        "STS calls for the broken mapping, after {} requests",
        asked.load(Ordering::Relaxed)
    );
    assert_eq!(
        sts.faults_fired_for(&role_arn("broken")),
        vec![Fault::ServiceUnavailable; 2]
    );

    // What operators see: the mapping in its backoff, nothing queued for the budget.
    let broken = settled(&d, "broken").await;
    assert_eq!(broken.state, MappingState::Empty);
    assert!(broken.retry_at.is_some(), "{broken:?}");
    let status = request(d.admin, "GET", "/status", &[]).await.json();
    let broken = &status["mappings"]["broken"];
    assert_eq!(
        broken["last_error"]["code"], "ServiceUnavailable",
        "{broken}"
    );
    assert!(broken["retry_at"].is_string(), "no retry_at in {broken}");
    assert!(status["mappings"]["steady"]["retry_at"].is_null());
    let metrics = request(d.admin, "GET", "/metrics", &[]).await.body;
    assert_eq!(metric(&metrics, "credvend_mappings_backing_off"), 1.0);
    for priority in ["cold", "background"] {
        let series = format!("credvend_sts_calls_waiting{{priority=\"{priority}\"}}");
        assert_eq!(metric(&metrics, &series), 0.0, "{series}");
    }

    stop.store(true, Ordering::Relaxed);
    let mut responses = Vec::new();
    for h in hammers {
        responses.extend(h.await.unwrap());
    }
    for r in &responses {
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        assert_eq!(body["code"], "CredentialsUnavailable", "{body}");
        assert_eq!(body["Code"], "CredentialsUnavailable", "{body}");
        assert_eq!(body["message"], body["Message"]);
        let retry_after: u64 = r
            .header("retry-after")
            .expect("503 with Retry-After")
            .parse()
            .unwrap();
        // The backoff after one or two failures: 1 s, then 1 to 2 s.
        assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    }
    let from_backoff = responses
        .iter()
        .filter(|r| r.json()["message"].as_str().unwrap().contains("backoff"))
        .count();
    assert!(
        from_backoff + 2 * HAMMERS >= responses.len(),
        "{from_backoff} of {} requests answered from the backoff",
        responses.len()
    );
    assert_eq!(calls_for("steady"), 2);
    assert_eq!(calls_for("newcomer"), 2);
    d.stop().await;
}
