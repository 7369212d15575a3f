//! The rules and documents of the policy module, pinned one by one.

use serde_json::{Value, json};

use super::bucket::{RESERVED_BUCKET_PREFIXES, RESERVED_BUCKET_SUFFIXES};
use super::*;

const VENDOR_ACCOUNT: &str = "568237466542";

/// The printed permissions policy, parsed back, to compare structurally.
fn permissions_policy(bucket: &str, prefix: Option<&str>) -> Result<Value, PolicyError> {
    render_permissions_policy(bucket, prefix).map(|text| parsed(&text))
}

/// The printed trust policy, parsed back, to compare structurally.
fn trust_policy(
    principal: &Principal,
    external_id: &str,
    services: &[TrustService],
) -> Result<Value, PolicyError> {
    render_trust_policy(principal, external_id, services, &[]).map(|text| parsed(&text))
}

fn parsed(text: &str) -> Value {
    serde_json::from_str(text).expect("a rendered policy is JSON")
}

fn bucket_rule(name: &str) -> BucketNameRule {
    match validate_bucket_name(name) {
        Err(PolicyError::BucketName { rule, name: echoed }) => {
            assert_eq!(echoed, name);
            rule
        }
        other => panic!("{name:?}: expected a bucket name error, got {other:?}"),
    }
}

#[test]
fn permissions_policy_without_prefix_is_the_guides_document() {
    let expected = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "CredvendSyncBucketAccess",
            "Effect": "Allow",
            "Action": [
                "s3:GetObject", "s3:ListBucket", "s3:PutObject",
                "s3:DeleteObject", "s3:GetBucketLocation"
            ],
            "Resource": ["arn:aws:s3:::syncoutput", "arn:aws:s3:::syncoutput/*"]
        }]
    });
    assert_eq!(permissions_policy("syncoutput", None).unwrap(), expected);
    let rendered = render_permissions_policy("syncoutput", None).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&rendered).unwrap(), expected);
}

#[test]
fn permissions_policy_with_prefix_scopes_objects_and_listing() {
    let expected = json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "CredvendSyncObjectAccess",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": ["arn:aws:s3:::syncoutput/exports/daily/*"]
            },
            {
                "Sid": "CredvendSyncListPrefix",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": ["arn:aws:s3:::syncoutput"],
                "Condition": {
                    "StringLike": { "s3:prefix": ["exports/daily/*", "exports/daily"] }
                }
            },
            {
                "Sid": "CredvendSyncBucketLocation",
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation"],
                "Resource": ["arn:aws:s3:::syncoutput"]
            }
        ]
    });
    // Trailing slash and whitespace are normalised away.
    for prefix in ["exports/daily", "exports/daily/", " exports/daily// "] {
        assert_eq!(
            permissions_policy("syncoutput", Some(prefix)).unwrap(),
            expected,
            "{prefix:?}"
        );
    }
    let rendered = render_permissions_policy("syncoutput", Some("exports/daily")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&rendered).unwrap(), expected);
}

#[test]
fn prefix_policy_grants_every_action_exactly_once() {
    let policy = permissions_policy("syncoutput", Some("p")).unwrap();
    let mut actions: Vec<&str> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap())
        .map(|a| a.as_str().unwrap())
        .collect();
    actions.sort_unstable();
    let mut all = S3_ACTIONS.to_vec();
    all.sort_unstable();
    assert_eq!(actions, all);
    // Only ListBucket is conditioned: the others carry no s3:prefix key.
    for statement in policy["Statement"].as_array().unwrap() {
        let is_list = statement["Action"] == json!(["s3:ListBucket"]);
        assert_eq!(statement.get("Condition").is_some(), is_list, "{statement}");
    }
}

#[test]
fn permissions_policy_validates_bucket_and_prefix() {
    assert!(matches!(
        permissions_policy("Bad_Bucket", None),
        Err(PolicyError::BucketName { .. })
    ));
    assert!(matches!(
        permissions_policy("syncoutput", Some("a/*")),
        Err(PolicyError::Prefix {
            reason: PrefixRule::Wildcard,
            ..
        })
    ));
}

#[test]
fn rendered_documents_keep_iam_key_order() {
    let text = render_permissions_policy("syncoutput", None).unwrap();
    let pos = |key: &str| text.find(&format!("\"{key}\"")).unwrap();
    assert!(pos("Version") < pos("Statement"));
    assert!(pos("Sid") < pos("Effect"));
    assert!(pos("Effect") < pos("Action"));
    assert!(pos("Action") < pos("Resource"));

    let principal = Principal::Account(VENDOR_ACCOUNT.to_owned());
    let text = render_trust_policy(&principal, "0000", &[], &[]).unwrap();
    let pos = |key: &str| text.find(&format!("\"{key}\"")).unwrap();
    assert!(pos("Version") < pos("Statement"));
    assert!(pos("Effect") < pos("Principal"));
    assert!(pos("Principal") < pos("Action"));
    assert!(pos("Action") < pos("Condition"));
}

#[test]
fn trust_policy_for_account_root_is_the_guides_document() {
    let principal = Principal::parse("arn:aws:iam::568237466542:root").unwrap();
    let expected = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "CredvendAssumeWithExternalId",
            "Effect": "Allow",
            "Principal": { "AWS": "arn:aws:iam::568237466542:root" },
            "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "sts:ExternalId": "0000" } }
        }]
    });
    assert_eq!(trust_policy(&principal, "0000", &[]).unwrap(), expected);
    let rendered = render_trust_policy(&principal, "0000", &[], &[]).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&rendered).unwrap(), expected);
}

#[test]
fn trust_policy_for_a_role_names_the_role() {
    let role = "arn:aws:iam::568237466542:role/vendor/sync-service";
    let principal = Principal::parse(role).unwrap();
    let expected = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "CredvendAssumeWithExternalId",
            "Effect": "Allow",
            "Principal": { "AWS": role },
            "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "sts:ExternalId": "0000" } }
        }]
    });
    assert_eq!(trust_policy(&principal, "0000", &[]).unwrap(), expected);
}

#[test]
fn trust_policy_with_redshift_adds_one_service_statement() {
    let principal = Principal::Account(VENDOR_ACCOUNT.to_owned());
    let expected = json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "CredvendAssumeWithExternalId",
                "Effect": "Allow",
                "Principal": { "AWS": "arn:aws:iam::568237466542:root" },
                "Action": "sts:AssumeRole",
                "Condition": { "StringEquals": { "sts:ExternalId": "0000" } }
            },
            {
                "Sid": "CredvendRedshiftServiceAssume",
                "Effect": "Allow",
                "Principal": {
                    "Service": ["redshift.amazonaws.com", "redshift-serverless.amazonaws.com"]
                },
                "Action": "sts:AssumeRole"
            }
        ]
    });
    let services = [TrustService::Redshift];
    assert_eq!(
        trust_policy(&principal, "0000", &services).unwrap(),
        expected
    );
    // Naming the service twice does not duplicate the statement.
    let twice = [TrustService::Redshift, TrustService::Redshift];
    assert_eq!(trust_policy(&principal, "0000", &twice).unwrap(), expected);
}

#[test]
fn trust_policy_validates_the_external_id_first() {
    let principal = Principal::Account(VENDOR_ACCOUNT.to_owned());
    assert_eq!(
        trust_policy(&principal, "x", &[]),
        Err(PolicyError::ExternalIdLength { length: 1 })
    );
    assert_eq!(
        render_trust_policy(&principal, "ab cd", &[], &[]),
        Err(PolicyError::ExternalIdCharacter { position: 3 })
    );
}

#[test]
fn trust_service_parses_its_cli_name() {
    assert_eq!("redshift".parse(), Ok(TrustService::Redshift));
    assert_eq!("Redshift".parse(), Ok(TrustService::Redshift));
    assert!("glue".parse::<TrustService>().is_err());
    assert_eq!(TrustService::Redshift.to_string(), "redshift");
}

#[test]
fn new_external_id_is_40_alphanumerics_and_fresh() {
    let first = new_external_id();
    let second = new_external_id();
    for id in [&first, &second] {
        assert_eq!(id.len(), GENERATED_EXTERNAL_ID_LEN);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
        assert_eq!(validate_external_id(id), Ok(()));
    }
    assert_ne!(first, second);
}

#[test]
fn new_external_id_uses_the_whole_alphabet() {
    // 100 IDs = 4000 draws from 62 symbols: every class shows up unless the
    // sampler is broken (chance of a miss per class is below 1e-30).
    let sample: String = (0..100).map(|_| new_external_id()).collect();
    assert!(sample.chars().any(|c| c.is_ascii_uppercase()));
    assert!(sample.chars().any(|c| c.is_ascii_lowercase()));
    assert!(sample.chars().any(|c| c.is_ascii_digit()));
}

#[test]
fn external_id_rules_are_aws_names_worded_for_the_cli() {
    // The rules themselves are pinned in src/aws_names.rs; here, which error each
    // broken rule becomes.
    assert_eq!(validate_external_id("Az09+=,.@:/_-"), Ok(()));
    assert_eq!(
        validate_external_id("a"),
        Err(PolicyError::ExternalIdLength { length: 1 })
    );
    assert_eq!(
        validate_external_id("tab\there"),
        Err(PolicyError::ExternalIdCharacter { position: 4 })
    );
    let message = validate_external_id("a").unwrap_err().to_string();
    assert!(message.contains("2 to 1224"), "{message}");
}

#[test]
fn external_id_errors_never_echo_the_value() {
    let canary_bad_char = "CanarySecretValue4242!xyz";
    let canary_too_long = format!("CanarySecretValue4242{}", "q".repeat(1300));
    let principal = Principal::Account(VENDOR_ACCOUNT.to_owned());
    for (canary, err) in [
        (
            canary_bad_char,
            validate_external_id(canary_bad_char).unwrap_err(),
        ),
        (
            canary_too_long.as_str(),
            validate_external_id(&canary_too_long).unwrap_err(),
        ),
        (
            canary_bad_char,
            trust_policy(&principal, canary_bad_char, &[]).unwrap_err(),
        ),
    ] {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("CanarySecretValue"), "{text}");
            assert!(!text.contains(canary), "{text}");
        }
    }
    assert!(
        validate_external_id(canary_bad_char)
            .unwrap_err()
            .to_string()
            .contains("position 22")
    );
}

#[test]
fn valid_bucket_names() {
    for name in [
        "abc",
        "syncoutput",
        "my-bucket-2024",
        "123bucket",
        "docexamplebucket1",
        "www.example.com",
        "my.dotted.bucket.name",
        "1.2.3",
        "1.2.3.4.5",
        "a1.2.3.4",
        "xn-single-hyphen",
        "bucket-s3alias-not-at-end",
        &"a".repeat(63),
    ] {
        assert_eq!(validate_bucket_name(name), Ok(()), "{name:?}");
    }
}

#[test]
fn each_bucket_rule_rejects_its_name() {
    assert_eq!(bucket_rule("ab"), BucketNameRule::Length { length: 2 });
    assert_eq!(
        bucket_rule(&"a".repeat(64)),
        BucketNameRule::Length { length: 64 }
    );
    assert_eq!(
        bucket_rule("MyBucket"),
        BucketNameRule::Character {
            position: 1,
            character: 'M'
        }
    );
    assert_eq!(
        bucket_rule("my_bucket"),
        BucketNameRule::Character {
            position: 3,
            character: '_'
        }
    );
    assert_eq!(bucket_rule("-bucket"), BucketNameRule::Start);
    assert_eq!(bucket_rule(".bucket"), BucketNameRule::Start);
    assert_eq!(bucket_rule("bucket-"), BucketNameRule::End);
    assert_eq!(bucket_rule("bucket."), BucketNameRule::End);
    assert_eq!(
        bucket_rule("my..bucket"),
        BucketNameRule::AdjacentDots { position: 3 }
    );
    assert_eq!(bucket_rule("192.168.5.4"), BucketNameRule::IpAddress);
    assert_eq!(bucket_rule("999.1.1.1"), BucketNameRule::IpAddress);
    for prefix in RESERVED_BUCKET_PREFIXES {
        assert_eq!(
            bucket_rule(&format!("{prefix}bucket")),
            BucketNameRule::ReservedPrefix { prefix },
        );
    }
    for suffix in RESERVED_BUCKET_SUFFIXES {
        assert_eq!(
            bucket_rule(&format!("bucket{suffix}")),
            BucketNameRule::ReservedSuffix { suffix },
        );
    }
}

#[test]
fn bucket_errors_name_the_rule() {
    let message = validate_bucket_name("my..bucket").unwrap_err().to_string();
    assert!(message.contains("my..bucket"), "{message}");
    assert!(message.contains("two adjacent dots"), "{message}");
    let message = validate_bucket_name("Bucket").unwrap_err().to_string();
    assert!(message.contains("lowercase"), "{message}");
    let message = validate_bucket_name("b--ol-s3").unwrap_err().to_string();
    assert!(message.contains("--ol-s3"), "{message}");
}

#[test]
fn prefixes_are_normalised() {
    assert_eq!(validate_prefix("exports").unwrap(), "exports");
    assert_eq!(validate_prefix("exports/").unwrap(), "exports");
    assert_eq!(validate_prefix("  a/b/c//  ").unwrap(), "a/b/c");
    assert_eq!(
        validate_prefix("tenant=acme/v1.2").unwrap(),
        "tenant=acme/v1.2"
    );
}

#[test]
fn bad_prefixes_are_rejected_with_their_rule() {
    for (prefix, rule) in [
        ("", PrefixRule::Empty),
        ("   ", PrefixRule::Empty),
        ("/", PrefixRule::LeadingSlash),
        ("/exports", PrefixRule::LeadingSlash),
        (" /exports", PrefixRule::LeadingSlash),
        ("exports/*", PrefixRule::Wildcard),
        ("exp?rts", PrefixRule::Wildcard),
        ("${aws:username}", PrefixRule::PolicyVariable),
        ("exports/../other", PrefixRule::DotSegment),
        ("..", PrefixRule::DotSegment),
        ("./exports", PrefixRule::DotSegment),
        ("a//b", PrefixRule::EmptySegment),
        ("a\u{7}b", PrefixRule::ControlCharacter),
    ] {
        assert_eq!(
            validate_prefix(prefix),
            Err(PolicyError::Prefix {
                prefix: prefix.to_owned(),
                reason: rule
            }),
            "{prefix:?}"
        );
    }
    assert!(matches!(
        validate_prefix(&"k".repeat(1023)),
        Err(PolicyError::Prefix {
            reason: PrefixRule::TooLong,
            ..
        })
    ));
    assert!(validate_prefix(&"k".repeat(1022)).is_ok());
}

#[test]
fn principal_parses_account_ids_and_root_arns() {
    assert_eq!(
        Principal::parse("568237466542").unwrap(),
        Principal::Account(VENDOR_ACCOUNT.to_owned())
    );
    assert_eq!(
        Principal::parse(" arn:aws:iam::568237466542:root\n").unwrap(),
        Principal::Account(VENDOR_ACCOUNT.to_owned())
    );
    assert_eq!(
        Principal::Account(VENDOR_ACCOUNT.to_owned()).arn(),
        "arn:aws:iam::568237466542:root"
    );
}

#[test]
fn principal_parses_role_arns_with_and_without_path() {
    for arn in [
        "arn:aws:iam::568237466542:role/vendor-sync",
        "arn:aws:iam::568237466542:role/service-role/vendor/sync.role@x=y,z+w_v",
        "arn:aws-cn:iam::568237466542:role/vendor-sync",
        "arn:aws-us-gov:iam::568237466542:role/vendor-sync",
        "arn:aws-iso:iam::568237466542:role/x",
        "arn:aws-eusc:iam::568237466542:role/vendor-sync",
        "arn:aws:iam::568237466542:role/path//name",
    ] {
        let principal = Principal::parse(arn).unwrap();
        assert_eq!(principal, Principal::Role(arn.to_owned()));
        assert_eq!(principal.arn(), arn);
        assert_eq!(arn.parse::<Principal>().unwrap(), principal);
    }
}

#[test]
fn principal_rejects_everything_else() {
    for input in [
        "",
        "garbage",
        "56823746654",
        "5682374665421",
        "56823746654a",
        "arn:aws:iam::56823746654:root",
        "arn:aws:iam::568237466542:user/alice",
        "arn:aws:iam::568237466542:role/",
        "arn:aws:iam::568237466542:role//name",
        "arn:aws:iam::568237466542:role/*",
        "arn:aws:iam::568237466542:role/a*/name",
        "arn:aws:iam::568237466542:role/bad name",
        &format!("arn:aws:iam::568237466542:role/{}", "n".repeat(65)),
        "arn:aws:sts::568237466542:assumed-role/vendor/session",
        "arn:aws:s3:::bucket",
        "arn:aws:iam:us-east-1:568237466542:role/x",
        "arn:aws-mars:iam::568237466542:role/x",
        "arn:aws-mars:iam::568237466542:root",
        "arn:aws-cn:iam::568237466542:root",
        "arn:aws-iso:iam::568237466542:root",
        "*",
    ] {
        let err = Principal::parse(input).expect_err(input);
        assert!(
            matches!(err, PolicyError::Principal { .. }),
            "{input:?}: {err:?}"
        );
        assert!(!err.to_string().is_empty());
    }
    let message = Principal::parse("garbage").unwrap_err().to_string();
    assert!(message.contains("12-digit account ID"), "{message}");
    let message = Principal::parse("arn:aws-cn:iam::568237466542:root")
        .unwrap_err()
        .to_string();
    assert!(message.contains("role ARN"), "{message}");
    let message = Principal::parse("arn:aws:iam::568237466542:role/a*/name")
        .unwrap_err()
        .to_string();
    assert!(message.contains("wildcard '*'"), "{message}");
    let message = Principal::parse("arn:aws-mars:iam::568237466542:role/x")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("unknown partition `aws-mars`"),
        "{message}"
    );
}

#[test]
fn caller_arns_map_to_their_account_root() {
    for arn in [
        "arn:aws:iam::568237466542:user/deploy",
        "arn:aws:iam::568237466542:user/path/deploy",
        "arn:aws:sts::568237466542:assumed-role/vendor-sync/i-0abc",
        "arn:aws:sts::568237466542:federated-user/bob",
        "arn:aws:iam::568237466542:root",
    ] {
        assert_eq!(
            Principal::from_caller_arn(arn).unwrap(),
            Principal::Account(VENDOR_ACCOUNT.to_owned()),
            "{arn}"
        );
    }
    for arn in [
        "",
        "not-an-arn",
        "arn:aws:s3:::bucket",
        "arn:aws:sts::1234:assumed-role/r/s",
        "arn:aws:sts::568237466542:",
        "arn:aws-cn:sts::568237466542:assumed-role/r/s",
        "arn:aws-iso-f:sts::568237466542:assumed-role/r/s",
        "arn:aws-mars:sts::568237466542:assumed-role/r/s",
    ] {
        assert!(
            matches!(
                Principal::from_caller_arn(arn),
                Err(PolicyError::CallerArn { .. })
            ),
            "{arn:?}"
        );
    }
}

// --- templates (template.rs) ---------------------------------------------------------

fn role(arn: &str) -> crate::aws_names::RoleArn {
    crate::aws_names::RoleArn::parse(arn).unwrap()
}

/// A role path may hold `${` and `%{` (IAM paths are printable ASCII): in Terraform
/// they are literal (`$${`, `%%{`), never an interpolation or a directive; in the
/// CloudFormation template they stay as they are outside `Fn::Sub`. Placeholders
/// become `var.NAME` / `${var.NAME}` and `Ref` / `Fn::Sub`.
#[test]
fn templates_escape_literal_interpolations_and_substitute_placeholders() {
    let customer = role("arn:aws:iam::111122223333:role/team${x}%{y}/vendor-sync");
    let vendor = Principal::parse("arn:aws:iam::568237466542:role/p${q}/credvend").unwrap();
    let spec = RoleTemplate {
        mapping: "acme.s3_eu",
        role: &customer,
        principal: &vendor,
        external_id: "ext-123456",
        services: &[],
        session: &[],
        max_session_seconds: None,
        bucket: "acme-data",
        prefix: Some("sync/"),
    };
    let tf = spec.terraform().unwrap();
    assert!(
        tf.main_tf.contains(r#"path        = "/team$${x}%%{y}/""#),
        "{}",
        tf.main_tf
    );
    assert!(
        tf.main_tf
            .contains(r#"AWS = "arn:aws:iam::568237466542:role/p$${q}/credvend""#),
        "{}",
        tf.main_tf
    );
    assert!(
        tf.main_tf.contains(r#""sts:ExternalId" = var.external_id"#),
        "{}",
        tf.main_tf
    );
    assert!(
        tf.main_tf
            .contains(r#"Resource = ["arn:aws:s3:::${var.bucket_name}/${var.key_prefix}/*"]"#),
        "{}",
        tf.main_tf
    );
    // No placeholder survives into any file.
    for (name, text) in tf.files() {
        assert!(!text.contains('\u{1}'), "{name}:\n{text}");
    }

    let cfn = spec.cloudformation().unwrap();
    assert!(cfn.contains(r#"Path: "/team${x}%{y}/""#), "{cfn}");
    assert!(
        cfn.contains(r#"AWS: "arn:aws:iam::568237466542:role/p${q}/credvend""#),
        "{cfn}"
    );
    assert!(
        cfn.contains("sts:ExternalId:\n                  Ref: \"ExternalId\""),
        "{cfn}"
    );
    assert!(
        cfn.contains(r#"- Fn::Sub: "arn:aws:s3:::${BucketName}/${KeyPrefix}/*""#),
        "{cfn}"
    );
    assert!(!cfn.contains('\u{1}'), "{cfn}");
}

/// The quick-create link: the stack name from the mapping (`_` and `.` are not allowed
/// in one), every value percent-encoded, the parameters after the fragment's `#`.
#[test]
fn quick_create_url_encodes_every_parameter() {
    let customer = role("arn:aws:iam::111122223333:role/vendor-sync");
    let vendor = Principal::parse("568237466542").unwrap();
    let spec = RoleTemplate {
        mapping: "acme.s3_eu",
        role: &customer,
        principal: &vendor,
        external_id: "a+b=c,d.e@f:g/h_i-j",
        services: &[TrustService::Redshift],
        session: &[],
        max_session_seconds: None,
        bucket: "acme-data",
        prefix: None,
    };
    assert_eq!(spec.stack_name(), "credvend-acme-s3-eu");
    assert_eq!(
        spec.quick_create_url("https://t.s3.amazonaws.com/a b?x=1&y", "eu-west-1")
            .unwrap(),
        "https://console.aws.amazon.com/cloudformation/home?region=eu-west-1\
         #/stacks/quickcreate?templateURL=https%3A%2F%2Ft.s3.amazonaws.com%2Fa%20b%3Fx%3D1%26y\
         &stackName=credvend-acme-s3-eu&param_RoleName=vendor-sync&param_BucketName=acme-data\
         &param_ExternalId=a%2Bb%3Dc%2Cd.e%40f%3Ag%2Fh_i-j"
    );
}

/// The templates refuse what `policy` refuses, with the same errors.
#[test]
fn templates_validate_like_the_policies() {
    let customer = role("arn:aws:iam::111122223333:role/vendor-sync");
    let vendor = Principal::parse("568237466542").unwrap();
    let spec = |bucket, prefix, external_id| RoleTemplate {
        mapping: "acme",
        role: &customer,
        principal: &vendor,
        external_id,
        services: &[],
        session: &[],
        max_session_seconds: None,
        bucket,
        prefix,
    };
    assert!(matches!(
        spec("Acme", None, "ext-123456").cloudformation(),
        Err(PolicyError::BucketName { .. })
    ));
    assert!(matches!(
        spec("acme", Some("a/*"), "ext-123456").terraform(),
        Err(PolicyError::Prefix { .. })
    ));
    assert!(matches!(
        spec("acme", None, "x").quick_create_url("https://t/x", "us-east-1"),
        Err(PolicyError::ExternalIdLength { .. })
    ));
}

/// `Debug` of a template's inputs and of a rendered module never shows the External ID.
#[test]
fn template_debug_leaves_the_external_id_out() {
    let customer = role("arn:aws:iam::111122223333:role/vendor-sync");
    let vendor = Principal::parse("568237466542").unwrap();
    let spec = RoleTemplate {
        mapping: "acme",
        role: &customer,
        principal: &vendor,
        external_id: "canary-ExternalId-4Tq8",
        services: &[],
        session: &[],
        max_session_seconds: None,
        bucket: "acme-data",
        prefix: None,
    };
    let module = spec.terraform().unwrap();
    assert!(module.variables_tf.contains("canary-ExternalId-4Tq8"));
    for debug in [format!("{spec:?}"), format!("{module:?}")] {
        assert!(!debug.contains("canary-ExternalId-4Tq8"), "{debug}");
        assert!(debug.contains("acme") || debug.contains("bytes"), "{debug}");
    }
}

/// A mapping with `tags` or `source_identity` makes AssumeRole calls that IAM checks as
/// `sts:TagSession` / `sts:SetSourceIdentity` too, and one with sessions over an hour
/// needs the role's `MaxSessionDuration`: without them AWS refuses the vendor's call.
/// The actions join `sts:AssumeRole` in the one statement, under the External ID
/// condition; the default (no session actions, one-hour sessions) is unchanged.
#[test]
fn session_actions_and_long_sessions_reach_the_trust_policy_and_the_role() {
    let vendor = Principal::parse("568237466542").unwrap();
    let plain = trust_policy(&vendor, "ext-123456", &[]).unwrap();
    assert_eq!(plain["Statement"][0]["Action"], "sts:AssumeRole");

    let both = [
        SessionAction::SetSourceIdentity,
        SessionAction::TagSession,
        SessionAction::TagSession,
    ];
    let text =
        render_trust_policy(&vendor, "ext-123456", &[TrustService::Redshift], &both).unwrap();
    let doc = parsed(&text);
    let vendor_statement = &doc["Statement"][0];
    assert_eq!(
        vendor_statement["Action"],
        serde_json::json!(["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]),
        "{text}"
    );
    assert_eq!(
        vendor_statement["Condition"]["StringEquals"]["sts:ExternalId"], "ext-123456",
        "{text}"
    );
    // The Redshift statement is the service's own: no session actions there.
    assert_eq!(doc["Statement"][1]["Action"], "sts:AssumeRole", "{text}");

    let customer = role("arn:aws:iam::111122223333:role/vendor-sync");
    let spec = |session, max_session_seconds| RoleTemplate {
        mapping: "acme",
        role: &customer,
        principal: &vendor,
        external_id: "ext-123456",
        services: &[],
        session,
        max_session_seconds,
        bucket: "acme-data",
        prefix: None,
    };
    let long = spec(&[SessionAction::TagSession], Some(7200));
    let cfn = long.cloudformation().unwrap();
    assert!(cfn.contains("MaxSessionDuration: 7200"), "{cfn}");
    assert!(cfn.contains("- \"sts:TagSession\""), "{cfn}");
    let tf = long.terraform().unwrap();
    assert!(
        tf.main_tf.contains("max_session_duration = 7200"),
        "{}",
        tf.main_tf
    );
    assert!(tf.main_tf.contains("\"sts:TagSession\""), "{}", tf.main_tf);
    let short = spec(&[], None);
    assert!(
        !short
            .cloudformation()
            .unwrap()
            .contains("MaxSessionDuration")
    );
    assert!(
        !short
            .terraform()
            .unwrap()
            .main_tf
            .contains("max_session_duration")
    );
    assert!(!short.terraform().unwrap().main_tf.contains("TagSession"));
}
