//! The S3 permission probe of `credvend verify --bucket`
//! (docs/onboarding.md, "Onboarding a customer").
//!
//! With the mapping's assumed credentials it exercises exactly the five permissions the
//! vendor's guide asks for — GetBucketLocation, ListObjectsV2 (`s3:ListBucket`),
//! PutObject of a probe key, GetObject of it, DeleteObject of it — and reports, per
//! permission, the AWS error code and the policy line that would fix it.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::Region;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use crate::creds::Credentials;

/// Body of the probe object: says what it is to anyone who finds it.
const PROBE_BODY: &[u8] = b"credvend verify probe object; safe to delete\n";

/// One permission check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// IAM action, e.g. `s3:PutObject`.
    pub action: &'static str,
    pub result: CheckResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// Allowed; with a detail (region, key) worth printing.
    Ok(String),
    /// Refused or failed, with the AWS error code and a fix.
    Failed { code: String, fix: String },
}

impl Check {
    pub fn passed(&self) -> bool {
        matches!(self.result, CheckResult::Ok(_))
    }
}

/// Where and how to probe.
#[derive(Debug, Clone)]
pub struct S3Target {
    pub bucket: String,
    /// Key prefix the vendor writes under (with `--prefix`); the probe key goes there.
    pub prefix: Option<String>,
    /// Region to start in (the mapping's); GetBucketLocation may redirect.
    pub region: String,
    /// S3-compatible endpoint (tests, VPC endpoints); path-style addressing then.
    pub endpoint_url: Option<String>,
}

/// The resource `action` needs for the probe: object actions on the keys under
/// `prefix` (`""` or `PATH/`), as `credvend policy permissions` grants them.
fn resource_for(action: &str, bucket: &str, prefix: &str) -> String {
    match action {
        "s3:GetBucketLocation" | "s3:ListBucket" => format!("arn:aws:s3:::{bucket}"),
        _ => format!("arn:aws:s3:::{bucket}/{prefix}*"),
    }
}

fn failed<E: ProvideErrorMetadata>(
    action: &'static str,
    bucket: &str,
    prefix: &str,
    error: &SdkError<E>,
) -> Check {
    let code = error_code(error);
    let fix = match code.as_str() {
        "AccessDenied" | "AllAccessDisabled" => {
            let mut command = format!("credvend policy permissions --bucket {bucket}");
            if !prefix.is_empty() {
                command.push_str(&format!(" --prefix {}", prefix.trim_end_matches('/')));
            }
            format!(
                "add \"{action}\" on \"{}\" to the role's permissions policy (`{command}`), and check the bucket policy and KMS key policy",
                resource_for(action, bucket, prefix)
            )
        }
        "NoSuchBucket" => {
            format!("bucket \"{bucket}\" does not exist (check the name and account)")
        }
        "PermanentRedirect" | "AuthorizationHeaderMalformed" => {
            "the bucket is in another region than expected".to_string()
        }
        _ => "see the AWS error code; retry if it was transient".to_string(),
    };
    Check {
        action,
        result: CheckResult::Failed { code, fix },
    }
}

fn error_code<E: ProvideErrorMetadata>(error: &SdkError<E>) -> String {
    match error {
        SdkError::ServiceError(service) => service
            .err()
            .code()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP{}", service.raw().status().as_u16())),
        SdkError::TimeoutError(_) => "Timeout".into(),
        SdkError::DispatchFailure(_) => "NetworkError".into(),
        SdkError::ResponseError(_) => "MalformedResponse".into(),
        _ => "RequestError".into(),
    }
}

async fn client(target: &S3Target, creds: &Credentials, region: &str) -> aws_sdk_s3::Client {
    let provider = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose().to_string(),
        Some(creds.session_token.expose().to_string()),
        Some(creds.expiration),
        "credvend-verify",
    );
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .credentials_provider(SharedCredentialsProvider::new(provider))
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(20))
                .build(),
        );
    if let Some(url) = &target.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    let shared = loader.load().await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(target.endpoint_url.is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Runs the five checks in order.
pub async fn probe(target: &S3Target, creds: &Credentials) -> Vec<Check> {
    let bucket = target.bucket.as_str();
    let prefix = target
        .prefix
        .as_deref()
        .map(|p| format!("{}/", p.trim_end_matches('/')))
        .unwrap_or_default();
    let mut checks = Vec::with_capacity(5);
    let mut s3 = client(target, creds, &target.region).await;

    match s3.get_bucket_location().bucket(bucket).send().await {
        Ok(out) => {
            let region = match out.location_constraint().map(|c| c.as_str()) {
                None | Some("") => "us-east-1".to_string(),
                Some("EU") => "eu-west-1".to_string(),
                Some(other) => other.to_string(),
            };
            if region != target.region && target.endpoint_url.is_none() {
                s3 = client(target, creds, &region).await;
            }
            checks.push(Check {
                action: "s3:GetBucketLocation",
                result: CheckResult::Ok(format!("bucket is in {region}")),
            });
        }
        Err(e) => checks.push(failed("s3:GetBucketLocation", bucket, &prefix, &e)),
    }

    let mut list = s3.list_objects_v2().bucket(bucket).max_keys(1);
    if !prefix.is_empty() {
        list = list.prefix(prefix.clone());
    }
    match list.send().await {
        Ok(_) => checks.push(Check {
            action: "s3:ListBucket",
            result: CheckResult::Ok(format!("listed s3://{bucket}/{prefix}")),
        }),
        Err(e) => checks.push(failed("s3:ListBucket", bucket, &prefix, &e)),
    }

    // Under `.credvend-verify/` so it is obviously ours and easy to find if a denied
    // DeleteObject leaves it behind.
    let key = format!(
        "{prefix}.credvend-verify/{}.txt",
        crate::policy::new_external_id().to_ascii_lowercase()
    );
    let put = s3
        .put_object()
        .bucket(bucket)
        .key(&key)
        .body(ByteStream::from_static(PROBE_BODY))
        .send()
        .await;
    let written = put.is_ok();
    match put {
        Ok(_) => checks.push(Check {
            action: "s3:PutObject",
            result: CheckResult::Ok(format!("wrote s3://{bucket}/{key}")),
        }),
        Err(e) => checks.push(failed("s3:PutObject", bucket, &prefix, &e)),
    }

    // GetObject and DeleteObject are tested even when PutObject was denied: on a key
    // that does not exist, an allowed GetObject answers NoSuchKey and an allowed
    // DeleteObject succeeds, so each permission is judged on its own.
    match s3.get_object().bucket(bucket).key(&key).send().await {
        Ok(out) => {
            let body = out.body.collect().await.map(|b| b.into_bytes());
            let result = match body {
                Ok(bytes) if bytes.as_ref() == PROBE_BODY => {
                    CheckResult::Ok("read the probe object back".into())
                }
                Ok(_) => CheckResult::Failed {
                    code: "ContentMismatch".into(),
                    fix: "the object read back differs from the one written".into(),
                },
                Err(_) => CheckResult::Failed {
                    code: "ReadError".into(),
                    fix: "retry; the body could not be read".into(),
                },
            };
            checks.push(Check {
                action: "s3:GetObject",
                result,
            });
        }
        Err(e) if !written && error_code(&e) == "NoSuchKey" => checks.push(Check {
            action: "s3:GetObject",
            result: CheckResult::Ok("allowed (no probe object to read: NoSuchKey)".into()),
        }),
        Err(e) => checks.push(failed("s3:GetObject", bucket, &prefix, &e)),
    }
    match s3.delete_object().bucket(bucket).key(&key).send().await {
        Ok(_) => checks.push(Check {
            action: "s3:DeleteObject",
            result: CheckResult::Ok(if written {
                "deleted the probe object".into()
            } else {
                "allowed".into()
            }),
        }),
        Err(e) => {
            let mut check = failed("s3:DeleteObject", bucket, &prefix, &e);
            if let (true, CheckResult::Failed { fix, .. }) = (written, &mut check.result) {
                fix.push_str(&format!("; remove s3://{bucket}/{key} by hand"));
            }
            checks.push(check);
        }
    }
    checks
}
