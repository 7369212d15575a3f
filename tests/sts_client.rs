//! The real [`StsAssumer`] (aws-sdk-sts, SigV4, Query API, XML) against the in-process
//! fake STS: request mapping, response mapping, failure classification, the
//! base-identity retry, timeouts and role chaining.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_credential_types::credential_fn::provide_credentials_fn;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use credvend::clock::{Clock, ManualClock};
use credvend::creds::sts::{CallerIdentity, StsAssumer, StsSettings};
use credvend::creds::{AssumeRoleInput, FailureReason, RoleAssumer};
use credvend::secret::ExternalId;
use support::fake_sts::{DEFAULT_BASE_IDENTITY_ARN, FakeSts, Fault, Role, TrustRule};

const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/vendor-sync";
const EXTERNAL_ID: &str = "CANARYxk3ExternalId0123456789abcdef";
const BASE_AKID: &str = "AKIDBASE000000000001";
const VENDOR_ROLE_ARN: &str = "arn:aws:iam::568237466542:role/vendor-sync-service";

/// Generous bound for calls that should answer at once (a CI box can be slow).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

struct Harness {
    clock: ManualClock,
    fake: FakeSts,
    assumer: StsAssumer,
}

fn settings(fake: &FakeSts, call_timeout: Duration) -> StsSettings {
    StsSettings {
        default_region: "us-east-1".to_owned(),
        endpoint_url: Some(fake.endpoint_url()),
        fallback_regions: Vec::new(),
        endpoint_urls: Default::default(),
        source_role_arn: None,
        call_timeout,
    }
}

fn static_base_credentials() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
        BASE_AKID,
        "base-secret-key",
        None,
        None,
        "test",
    ))
}

async fn harness_with(call_timeout: Duration, trust: TrustRule) -> Harness {
    let clock = ManualClock::starting_now();
    let fake = FakeSts::start(Arc::new(clock.clone())).await;
    fake.add_role(Role::new(ROLE_ARN, trust));
    let assumer = StsAssumer::with_credentials_provider(
        settings(&fake, call_timeout),
        static_base_credentials(),
    )
    .await
    .expect("valid settings");
    Harness {
        clock,
        fake,
        assumer,
    }
}

async fn harness() -> Harness {
    harness_with(
        CALL_TIMEOUT,
        TrustRule::RequireExternalId(EXTERNAL_ID.to_owned()),
    )
    .await
}

fn input() -> AssumeRoleInput {
    AssumeRoleInput {
        role_arn: ROLE_ARN.to_owned().try_into().unwrap(),
        session_name: "credvend-acme-s3".to_owned().try_into().unwrap(),
        external_id: Some(ExternalId::new(EXTERNAL_ID)),
        duration: Duration::from_secs(3600),
        session_policy: None,
        policy_arns: Vec::new(),
        tags: BTreeMap::new(),
        source_identity: None,
        region: "us-east-1".to_owned().try_into().unwrap(),
    }
}

/// [`input`] with `external_id` instead of [`EXTERNAL_ID`] (`None`: no External ID).
fn input_with_external_id(external_id: Option<&str>) -> AssumeRoleInput {
    AssumeRoleInput {
        external_id: external_id.map(ExternalId::new),
        ..input()
    }
}

#[tokio::test]
async fn success_maps_every_request_and_response_field() {
    let h = harness().await;
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;
    let input = AssumeRoleInput {
        session_policy: Some(policy.to_owned()),
        policy_arns: vec![
            "arn:aws:iam::aws:policy/ReadOnlyAccess"
                .to_owned()
                .try_into()
                .unwrap(),
            "arn:aws:iam::111122223333:policy/extra"
                .to_owned()
                .try_into()
                .unwrap(),
        ],
        tags: BTreeMap::from([
            ("tenant".to_owned(), "acme".to_owned()),
            ("team".to_owned(), "sync & co".to_owned()),
        ]),
        source_identity: Some("sync-acme".to_owned().try_into().unwrap()),
        duration: Duration::from_secs(7200),
        ..input()
    };

    let creds = h
        .assumer
        .assume_role(&input)
        .await
        .expect("assume succeeds");

    let calls = h.fake.assume_role_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.role_arn.as_deref(), Some(ROLE_ARN));
    assert_eq!(call.external_id.as_deref(), Some(EXTERNAL_ID));
    assert_eq!(call.session_name.as_deref(), Some("credvend-acme-s3"));
    assert_eq!(call.duration_seconds, Some(7200));
    assert_eq!(call.policy.as_deref(), Some(policy));
    assert_eq!(call.policy_arns, input.policy_arns);
    assert_eq!(
        call.tags,
        // BTreeMap order: the wire order is stable, so the cache key fingerprint is too.
        vec![
            ("team".to_owned(), "sync & co".to_owned()),
            ("tenant".to_owned(), "acme".to_owned()),
        ]
    );
    assert_eq!(call.source_identity.as_deref(), Some("sync-acme"));
    assert_eq!(call.access_key_id.as_deref(), Some(BASE_AKID));
    assert_eq!(call.signing_region.as_deref(), Some("us-east-1"));
    assert_eq!(call.fault, None);

    assert_eq!(
        Some(creds.access_key_id.as_str()),
        call.issued_access_key_id.as_deref()
    );
    assert!(creds.access_key_id.starts_with("ASIA"));
    assert!(!creds.secret_access_key.expose().is_empty());
    assert!(!creds.session_token.expose().is_empty());
    assert_eq!(creds.expiration, h.clock.now() + Duration::from_secs(7200));
    assert_eq!(
        creds.assumed_role_arn,
        "arn:aws:sts::111122223333:assumed-role/vendor-sync/credvend-acme-s3"
    );

    let shown = format!("{creds:?}");
    assert!(!shown.contains(creds.secret_access_key.expose()), "{shown}");
    assert!(!shown.contains(creds.session_token.expose()), "{shown}");
    h.fake.shutdown().await;
}

#[tokio::test]
async fn no_external_id_parameter_is_sent_when_none() {
    let h = harness_with(CALL_TIMEOUT, TrustRule::NoExternalIdRequired).await;
    let input = input_with_external_id(None);
    h.assumer
        .assume_role(&input)
        .await
        .expect("role needs no External ID");
    let calls = h.fake.assume_role_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].external_id, None);
    assert!(calls[0].policy_arns.is_empty() && calls[0].tags.is_empty());
    assert_eq!(calls[0].policy, None);
    assert_eq!(calls[0].source_identity, None);
}

#[tokio::test]
async fn trust_rules_deny_missing_and_wrong_external_ids() {
    let h = harness().await;

    let missing = input_with_external_id(None);
    let err = h.assumer.assume_role(&missing).await.unwrap_err();
    assert_eq!(err.reason, FailureReason::AccessDenied);
    assert_eq!(err.code, "AccessDenied");
    assert!(!err.duration_too_long);

    let wrong = input_with_external_id(Some("CANARYwrongExternalId"));
    let err = h.assumer.assume_role(&wrong).await.unwrap_err();
    assert_eq!(err.reason, FailureReason::AccessDenied);
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("CANARY"), "External ID leaked: {shown}");

    let unknown = AssumeRoleInput {
        role_arn: "arn:aws:iam::111122223333:role/no-such-role"
            .to_owned()
            .try_into()
            .unwrap(),
        ..input()
    };
    let err = h.assumer.assume_role(&unknown).await.unwrap_err();
    assert_eq!(err.reason, FailureReason::AccessDenied);
    assert!(err.message.contains("no-such-role"), "{}", err.message);

    assert_eq!(h.fake.assume_role_calls().len(), 3, "exactly one call each");
    assert_eq!(
        h.fake.faults_fired(),
        vec![],
        "refused by trust, not by a fault"
    );
}

#[tokio::test]
async fn an_external_id_echoed_across_the_message_cut_leaves_no_part_of_it() {
    let h = harness().await;
    // STS refuses an ExternalId longer than 1,224 characters and echoes it: "1 validation
    // error detected: Value '…' at 'externalId' failed to satisfy constraint: …". This
    // one starts 36 characters into that message and runs past the 512 credvend keeps.
    let external_id = format!("CANARY{}", "0123456789abcdef".repeat(80));
    let echoing = AssumeRoleInput {
        external_id: Some(ExternalId::new(external_id.clone())),
        ..input()
    };
    let err = h.assumer.assume_role(&echoing).await.unwrap_err();
    assert_eq!(
        (err.reason, err.code.as_str()),
        (FailureReason::InvalidRequest, "ValidationError"),
        "{err}"
    );
    let calls = h.fake.assume_role_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].error_code.as_deref(),
        Some("ValidationError"),
        "the fake refused (and echoed) the External ID"
    );
    let shown = format!("{err} {err:?}");
    // Not even a part of it: any 12 characters of the External ID.
    for start in 0..=external_id.len() - 12 {
        let part = &external_id[start..start + 12];
        assert!(
            !shown.contains(part),
            "External ID leaked ({part:?} at {start}): {shown}"
        );
    }
    assert!(
        err.message.contains(
            "failed to satisfy constraint: Member must have length less than or equal to 1224"
        ),
        "the reason survives the scrub: {}",
        err.message
    );
    assert!(err.message.chars().count() <= 513, "{}", err.message);
}

#[tokio::test]
async fn any_external_id_rule_needs_one_but_accepts_any() {
    let h = harness_with(CALL_TIMEOUT, TrustRule::AnyExternalId).await;
    let missing = input_with_external_id(None);
    let err = h.assumer.assume_role(&missing).await.unwrap_err();
    assert_eq!(err.reason, FailureReason::AccessDenied);
    let random = input_with_external_id(Some("some-random-wrong-one"));
    h.assumer
        .assume_role(&random)
        .await
        .expect("any External ID passes");
}

#[tokio::test]
async fn each_fault_class_maps_to_its_reason_with_exactly_one_call() {
    let h = harness().await;
    let cases = [
        (Fault::Throttling, FailureReason::Throttled, "Throttling"),
        (
            Fault::AccessDenied,
            FailureReason::AccessDenied,
            "AccessDenied",
        ),
        (
            Fault::InternalError,
            FailureReason::ServerError,
            "InternalFailure",
        ),
        (
            Fault::ServiceUnavailable,
            FailureReason::ServerError,
            "ServiceUnavailable",
        ),
        (
            Fault::RegionDisabled,
            FailureReason::RegionDisabled,
            "RegionDisabledException",
        ),
        (
            Fault::MalformedXml,
            FailureReason::Other,
            "MalformedResponse",
        ),
    ];
    for (i, (fault, reason, code)) in cases.iter().enumerate() {
        h.fake.push_fault(fault.clone());
        let err = h
            .assumer
            .assume_role(&input())
            .await
            .expect_err("fault must surface");
        assert_eq!(err.reason, *reason, "{fault:?}: {err}");
        assert_eq!(err.code, *code, "{fault:?}: {err}");
        assert!(!err.duration_too_long);
        assert_eq!(
            h.fake.assume_role_calls().len(),
            i + 1,
            "{fault:?}: SDK retries must be off"
        );
    }
    h.fake.assert_no_pending_faults();
    let expected: Vec<Fault> = cases.iter().map(|(f, _, _)| f.clone()).collect();
    assert_eq!(h.fake.faults_fired(), expected);

    // And after the faults, the same role works again.
    h.assumer.assume_role(&input()).await.expect("recovers");
}

#[tokio::test]
async fn latency_below_the_timeout_still_succeeds() {
    let h = harness().await;
    h.fake.push_fault(Fault::Latency(Duration::from_millis(50)));
    h.assumer
        .assume_role(&input())
        .await
        .expect("slow but fine");
    assert_eq!(
        h.fake.faults_fired(),
        vec![Fault::Latency(Duration::from_millis(50))]
    );
}

/// A base credentials provider that hands out a new AccessKeyId on every resolution, so
/// the fake's log shows whether the assumer re-resolved its base identity.
fn rotating_base_credentials(resolutions: Arc<AtomicUsize>) -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(provide_credentials_fn(move || {
        let n = resolutions.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            Ok(aws_credential_types::Credentials::new(
                format!("AKIDBASE{n:012}"),
                "base-secret-key",
                None,
                None,
                "rotating",
            ))
        }
    }))
}

async fn rebuild_case(fault: Fault) {
    let clock = ManualClock::starting_now();
    let fake = FakeSts::start(Arc::new(clock.clone())).await;
    fake.add_role(Role::new(
        ROLE_ARN,
        TrustRule::RequireExternalId(EXTERNAL_ID.to_owned()),
    ));
    let resolutions = Arc::new(AtomicUsize::new(0));
    let assumer = StsAssumer::with_credentials_provider(
        settings(&fake, CALL_TIMEOUT),
        rotating_base_credentials(resolutions.clone()),
    )
    .await
    .unwrap();

    // Warm the identity cache, so the retry below can only see new credentials if the
    // assumer really threw the cached ones away.
    assumer.assume_role(&input()).await.expect("first call");
    fake.push_fault(fault.clone());
    assumer
        .assume_role(&input())
        .await
        .expect("retry after re-resolving base credentials succeeds");

    let calls = fake.assume_role_calls();
    assert_eq!(calls.len(), 3, "one warm-up, then exactly two calls");
    assert_eq!(calls[1].fault, Some(fault));
    assert_eq!(calls[2].fault, None);
    assert_eq!(
        calls[0].access_key_id.as_deref(),
        Some("AKIDBASE000000000001")
    );
    assert_eq!(
        calls[1].access_key_id.as_deref(),
        Some("AKIDBASE000000000001")
    );
    assert_eq!(
        calls[2].access_key_id.as_deref(),
        Some("AKIDBASE000000000002"),
        "the retry must be signed with freshly resolved base credentials"
    );
    assert_eq!(resolutions.load(Ordering::SeqCst), 2);
    fake.assert_no_pending_faults();
}

#[tokio::test]
async fn expired_token_rebuilds_the_client_and_retries_once() {
    rebuild_case(Fault::ExpiredToken).await;
}

#[tokio::test]
async fn invalid_client_token_id_rebuilds_the_client_and_retries_once() {
    rebuild_case(Fault::InvalidClientTokenId).await;
}

#[tokio::test]
async fn persistent_expired_token_gives_up_after_one_retry() {
    let h = harness().await;
    h.fake.set_persistent_fault(Some(Fault::ExpiredToken));
    let err = h.assumer.assume_role(&input()).await.unwrap_err();
    assert_eq!(err.reason, FailureReason::ExpiredBaseCredentials);
    assert_eq!(err.code, "ExpiredToken");
    assert_eq!(h.fake.assume_role_calls().len(), 2);
    assert_eq!(
        h.fake.faults_fired(),
        vec![Fault::ExpiredToken, Fault::ExpiredToken]
    );
}

#[tokio::test]
async fn hang_times_out_within_the_call_timeout() {
    let call_timeout = Duration::from_secs(1);
    let h = harness_with(
        call_timeout,
        TrustRule::RequireExternalId(EXTERNAL_ID.to_owned()),
    )
    .await;
    h.fake.push_fault(Fault::Hang);

    // The fake never answers a hung call, so only the call timeout can end it. The
    // upper bound allows ten times the timeout for a loaded machine; the outer one
    // turns a call that is never bounded into a failure instead of a stuck test.
    let started = Instant::now();
    let err = tokio::time::timeout(30 * call_timeout, h.assumer.assume_role(&input()))
        .await
        .expect("a hung STS call was never given up")
        .unwrap_err();
    let elapsed = started.elapsed();

    assert_eq!(err.reason, FailureReason::Timeout, "{err}");
    assert!(elapsed >= call_timeout, "gave up early: {elapsed:?}");
    assert!(
        elapsed < 10 * call_timeout,
        "not bounded by the call timeout: {elapsed:?}"
    );
    let calls = h.fake.assume_role_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].fault, Some(Fault::Hang));
    assert_eq!(calls[0].status, None);

    // A timed-out call leaves nothing behind: the next one works.
    h.assumer.assume_role(&input()).await.expect("recovers");
}

#[tokio::test]
async fn duration_over_the_role_maximum_is_flagged() {
    let h = harness().await;
    h.fake.add_role(
        Role::new(
            ROLE_ARN,
            TrustRule::RequireExternalId(EXTERNAL_ID.to_owned()),
        )
        .max_session_duration(Duration::from_secs(3600)),
    );
    let too_long = AssumeRoleInput {
        duration: Duration::from_secs(4 * 3600),
        ..input()
    };
    let err = h.assumer.assume_role(&too_long).await.unwrap_err();
    assert_eq!(err.reason, FailureReason::InvalidRequest);
    assert_eq!(err.code, "ValidationError");
    assert!(err.duration_too_long, "{err}");

    // What the cache does next: retry at 3600 s.
    let creds = h.assumer.assume_role(&input()).await.expect("1 h is fine");
    assert_eq!(creds.expiration, h.clock.now() + Duration::from_secs(3600));
}

#[tokio::test]
async fn shorter_lifetime_from_sts_is_passed_through() {
    let h = harness().await;
    h.fake.add_role(
        Role::new(
            ROLE_ARN,
            TrustRule::RequireExternalId(EXTERNAL_ID.to_owned()),
        )
        .lifetime(Duration::from_secs(15 * 60)),
    );
    let creds = h.assumer.assume_role(&input()).await.unwrap();
    assert_eq!(
        creds.expiration,
        h.clock.now() + Duration::from_secs(15 * 60)
    );

    h.fake.set_lifetime_override(Some(Duration::from_secs(600)));
    let creds = h.assumer.assume_role(&input()).await.unwrap();
    assert_eq!(creds.expiration, h.clock.now() + Duration::from_secs(600));
}

#[tokio::test]
async fn mapping_region_selects_the_signing_region() {
    let h = harness().await;
    let eu = AssumeRoleInput {
        region: "eu-west-1".to_owned().try_into().unwrap(),
        ..input()
    };
    h.assumer.assume_role(&eu).await.unwrap();
    h.assumer.assume_role(&input()).await.unwrap();
    let regions: Vec<_> = h
        .fake
        .assume_role_calls()
        .into_iter()
        .map(|c| c.signing_region)
        .collect();
    assert_eq!(
        regions,
        vec![Some("eu-west-1".to_owned()), Some("us-east-1".to_owned())]
    );
}

#[tokio::test]
async fn get_caller_identity_answers_the_base_identity() {
    let h = harness().await;
    let identity = h.assumer.get_caller_identity().await.unwrap();
    assert_eq!(
        identity,
        CallerIdentity {
            account: "568237466542".to_owned(),
            arn: DEFAULT_BASE_IDENTITY_ARN.to_owned(),
        }
    );
    let calls = h.fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].action, "GetCallerIdentity");
}

#[tokio::test]
async fn vended_credentials_act_as_the_customer_role() {
    let h = harness().await;
    let creds = h.assumer.assume_role(&input()).await.unwrap();

    let as_customer = StsAssumer::with_credentials_provider(
        settings(&h.fake, CALL_TIMEOUT),
        SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.expose(),
            Some(creds.session_token.expose().to_owned()),
            None,
            "vended",
        )),
    )
    .await
    .unwrap();
    let identity = as_customer.get_caller_identity().await.unwrap();
    assert_eq!(identity.arn, creds.assumed_role_arn);
    assert_eq!(identity.account, "111122223333");
}

#[tokio::test]
async fn source_role_is_assumed_first_and_reused() {
    let clock = ManualClock::starting_now();
    let fake = FakeSts::start(Arc::new(clock.clone())).await;
    fake.add_role(Role::new(VENDOR_ROLE_ARN, TrustRule::NoExternalIdRequired));
    fake.add_role(Role::new(
        ROLE_ARN,
        TrustRule::RequireExternalId(EXTERNAL_ID.to_owned()),
    ));
    let assumer = StsAssumer::with_credentials_provider(
        StsSettings {
            source_role_arn: Some(VENDOR_ROLE_ARN.to_owned()),
            ..settings(&fake, CALL_TIMEOUT)
        },
        static_base_credentials(),
    )
    .await
    .unwrap();

    assumer.assume_role(&input()).await.expect("chained assume");
    let calls = fake.assume_role_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].role_arn.as_deref(), Some(VENDOR_ROLE_ARN));
    assert_eq!(calls[0].session_name.as_deref(), Some("credvend"));
    assert_eq!(calls[0].access_key_id.as_deref(), Some(BASE_AKID));
    assert_eq!(calls[0].external_id, None);
    assert_eq!(calls[1].role_arn.as_deref(), Some(ROLE_ARN));
    assert_eq!(
        calls[1].access_key_id, calls[0].issued_access_key_id,
        "the customer role must be assumed with the vendor role's credentials"
    );

    // The chained credentials are cached: the next assumption is one call.
    assumer.assume_role(&input()).await.unwrap();
    assert_eq!(fake.assume_role_calls().len(), 3);

    let identity = assumer.get_caller_identity().await.unwrap();
    assert_eq!(
        identity.arn,
        "arn:aws:sts::568237466542:assumed-role/vendor-sync-service/credvend"
    );

    // STS's role-chaining limit surfaces as a duration problem the cache can fix.
    let two_hours = AssumeRoleInput {
        duration: Duration::from_secs(7200),
        ..input()
    };
    let err = assumer.assume_role(&two_hours).await.unwrap_err();
    assert!(err.duration_too_long, "{err}");
}

#[tokio::test]
async fn unreachable_endpoint_is_a_network_error() {
    // Bind and release a port, so nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let assumer = StsAssumer::with_credentials_provider(
        StsSettings {
            default_region: "us-east-1".to_owned(),
            endpoint_url: Some(format!("http://127.0.0.1:{port}")),
            fallback_regions: Vec::new(),
            endpoint_urls: Default::default(),
            source_role_arn: None,
            call_timeout: CALL_TIMEOUT,
        },
        static_base_credentials(),
    )
    .await
    .unwrap();
    let err = assumer.assume_role(&input()).await.unwrap_err();
    assert_eq!(err.reason, FailureReason::Network, "{err}");
}

#[tokio::test]
async fn missing_base_credentials_are_a_base_identity_failure_without_a_call() {
    let clock = ManualClock::starting_now();
    let fake = FakeSts::start(Arc::new(clock.clone())).await;
    fake.add_role(Role::new(ROLE_ARN, TrustRule::NoExternalIdRequired));
    let assumer = StsAssumer::with_credentials_provider(
        settings(&fake, CALL_TIMEOUT),
        SharedCredentialsProvider::new(provide_credentials_fn(|| async {
            Err(CredentialsError::not_loaded(
                "no base credentials in this test",
            ))
        })),
    )
    .await
    .unwrap();
    let err = assumer.assume_role(&input()).await.unwrap_err();
    assert_eq!(err.reason, FailureReason::NoBaseCredentials, "{err}");
    assert_eq!(err.code, "BaseCredentialsUnavailable");
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn one_shot_faults_take_precedence_over_role_and_persistent_faults() {
    let h = harness().await;
    h.fake.set_persistent_fault(Some(Fault::InternalError));
    h.fake.set_role_fault(ROLE_ARN, Some(Fault::RegionDisabled));
    h.fake.push_fault(Fault::Throttling);

    let reasons = [
        FailureReason::Throttled,
        FailureReason::RegionDisabled,
        FailureReason::RegionDisabled,
    ];
    for expected in reasons {
        let err = h.assumer.assume_role(&input()).await.unwrap_err();
        assert_eq!(err.reason, expected, "{err}");
    }
    h.fake.set_role_fault(ROLE_ARN, None);
    let err = h.assumer.assume_role(&input()).await.unwrap_err();
    assert_eq!(err.reason, FailureReason::ServerError, "{err}");
    h.fake.set_persistent_fault(None);
    h.assumer
        .assume_role(&input())
        .await
        .expect("healthy again");

    assert_eq!(
        h.fake.faults_fired(),
        vec![
            Fault::Throttling,
            Fault::RegionDisabled,
            Fault::RegionDisabled,
            Fault::InternalError,
        ]
    );
    // GetCallerIdentity is never faulted.
    h.fake.set_persistent_fault(Some(Fault::Hang));
    h.assumer.get_caller_identity().await.expect("not faulted");
    assert_eq!(
        h.fake.faults_fired().len(),
        4,
        "{:?}",
        h.fake.faults_fired()
    );
    assert_eq!(h.fake.calls().last().unwrap().fault, None);
}
