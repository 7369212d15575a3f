//! Per-job cache entries (docs/design.md, Per-job entries) end to end below HTTP: the
//! real cache and the real [`StsAssumer`] (SigV4, Query API) against the in-process fake
//! STS, which records the RoleSessionName each AssumeRole carried on the wire.

mod support;

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use credvend::aws_names::SessionName;
use credvend::cache::{CredentialCache, Vended};
use credvend::clock::ManualClock;
use credvend::creds::sts::{StsAssumer, StsSettings};
use credvend::metrics::Metrics;
use credvend::model::Source;
use credvend::testing::{config, mapping, role_arn};
use support::fake_sts::{FakeSts, Role, StsCall, TrustRule};

const EXTERNAL_ID: &str = "CANARYxk3ExternalId0123456789abcdef";

/// A fake STS with role `acme` (requiring [`EXTERNAL_ID`]) and a started cache with
/// mapping `acme` on it, calling STS through the real client.
async fn start() -> (ManualClock, FakeSts, CredentialCache) {
    let clock = ManualClock::starting_now();
    let fake = FakeSts::start(Arc::new(clock.clone())).await;
    fake.add_role(Role::new(
        role_arn("acme"),
        TrustRule::RequireExternalId(EXTERNAL_ID.to_owned()),
    ));
    let cfg = config(
        &fake.endpoint_url(),
        vec![mapping("acme", "acme", Some(EXTERNAL_ID), "t1")],
    );
    let assumer = StsAssumer::with_credentials_provider(
        StsSettings {
            default_region: "us-east-1".to_owned(),
            endpoint_url: Some(fake.endpoint_url()),
            fallback_regions: Vec::new(),
            endpoint_urls: Default::default(),
            source_role_arn: None,
            call_timeout: Duration::from_secs(30),
        },
        SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "AKIDBASE000000000001",
            "base-secret-key",
            None,
            None,
            "test",
        )),
    )
    .await
    .expect("valid settings");
    let cache = CredentialCache::new(
        &cfg,
        Arc::new(assumer),
        Arc::new(clock.clone()),
        Arc::new(Metrics::new()),
    );
    cache.start();
    (clock, fake, cache)
}

fn session(name: &str) -> SessionName {
    SessionName::try_from(name.to_owned()).expect("a valid session name")
}

async fn get_job(cache: &CredentialCache, job: &str) -> Vended {
    cache
        .get_job_in(&cache.mapping_table(), "acme", &session(job))
        .await
        .expect("the job is served")
}

/// (RoleSessionName, RoleArn, ExternalId) of each AssumeRole the fake received.
fn received(fake: &FakeSts) -> Vec<(Option<String>, Option<String>, Option<String>)> {
    fake.assume_role_calls()
        .into_iter()
        .map(|c: StsCall| (c.session_name, c.role_arn, c.external_id))
        .collect()
}

#[tokio::test]
async fn a_jobs_session_name_reaches_sts_and_each_job_is_one_assume_role() {
    let (_clock, fake, cache) = start().await;
    let job = get_job(&cache, "sync-job-8812").await;
    assert_eq!(job.source, Source::Fresh);
    let expected = |session: &str| {
        (
            Some(session.to_owned()),
            Some(role_arn("acme")),
            Some(EXTERNAL_ID.to_owned()),
        )
    };
    assert_eq!(received(&fake), [expected("sync-job-8812")]);
    assert_eq!(
        fake.assume_role_calls()[0].issued_access_key_id.as_deref(),
        Some(job.entry.access_key_id()),
        "the job was served what STS issued for its session"
    );

    // Cached: the job's next request makes no call.
    let again = get_job(&cache, "sync-job-8812").await;
    assert_eq!(again.source, Source::Cache);
    fake.assert_assume_role_calls(1, "a job's second request is a cache hit");

    // The mapping's own credential is another entry, under its own session name.
    let own = cache.get("acme").await.expect("the mapping is served");
    assert_eq!(own.source, Source::Fresh);
    assert_ne!(own.entry.access_key_id(), job.entry.access_key_id());
    assert_eq!(
        received(&fake),
        [expected("sync-job-8812"), expected("credvend-acme")]
    );

    // Twenty concurrent first requests of another job: one AssumeRole.
    let hold = fake.hold_assume_role();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { get_job(&cache, "sync-job-8813").await })
        })
        .collect();
    hold.wait_held(1).await;
    // Give the other nineteen every chance to start a call of their own.
    tokio::time::sleep(Duration::from_millis(200)).await;
    hold.release();
    for request in requests {
        let vended = tokio::time::timeout(Duration::from_secs(30), request)
            .await
            .expect("the request finished")
            .expect("the request task did not panic");
        assert_ne!(vended.entry.access_key_id(), job.entry.access_key_id());
    }
    assert_eq!(hold.held(), 1);
    assert_eq!(
        received(&fake),
        [
            expected("sync-job-8812"),
            expected("credvend-acme"),
            expected("sync-job-8813")
        ]
    );

    // Dropped (its last token ended): the next request assumes the role again.
    cache.drop_job("acme", &session("sync-job-8812"));
    let after_drop = get_job(&cache, "sync-job-8812").await;
    assert_eq!(after_drop.source, Source::Fresh);
    assert_ne!(after_drop.entry.access_key_id(), job.entry.access_key_id());
    let calls = received(&fake);
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[3], expected("sync-job-8812"));
    // The mapping's own entry and the other job were left alone.
    assert_eq!(
        cache.get("acme").await.unwrap().entry.access_key_id(),
        own.entry.access_key_id()
    );
    assert_eq!(get_job(&cache, "sync-job-8813").await.source, Source::Cache);
    fake.assert_assume_role_calls(4, "nothing else called STS");
    assert_eq!(cache.job_entries(), 2);
}
