//! The two documents: the permissions policy and the trust policy, rendered as pretty
//! JSON in IAM's conventional key order.

use serde::Serialize;
use serde_json::{Value, json};

use super::{
    PolicyError, Principal, SessionAction, TrustService, validate_bucket_name,
    validate_external_id, validate_prefix,
};

/// IAM policy language version; `2012-10-17` is the only one that supports policy
/// variables and conditions as we use them, and what every AWS guide prints.
pub const POLICY_VERSION: &str = "2012-10-17";

/// The five S3 actions the sync workers need, in the order of the vendor's IAM-role guide.
pub const S3_ACTIONS: [&str; 5] = [
    "s3:GetObject",
    "s3:ListBucket",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:GetBucketLocation",
];

/// Object-level subset of [`S3_ACTIONS`]: these apply to `arn:aws:s3:::BUCKET/KEY`.
const S3_OBJECT_ACTIONS: [&str; 3] = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"];

/// Service principals Redshift Serverless needs in the trust policy. AWS, "Granting
/// permissions to Amazon Redshift Serverless"
/// (<https://docs.aws.amazon.com/redshift/latest/mgmt/serverless-security-other-services.html>):
/// "When changing the trust relationship for the IAM role ... make sure that it
/// contains redshift-serverless.amazonaws.com and redshift.amazonaws.com as principal
/// service names." Provisioned clusters only need `redshift.amazonaws.com`
/// ("Authorizing Amazon Redshift to access AWS services on your behalf"), so listing
/// both covers either deployment.
pub const REDSHIFT_SERVICE_PRINCIPALS: [&str; 2] = [
    "redshift.amazonaws.com",
    "redshift-serverless.amazonaws.com",
];

/// One IAM policy document. A struct rather than `json!` so serialisation keeps IAM's
/// conventional key order (see the module docs).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyDocument {
    version: &'static str,
    statement: Vec<Statement>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Statement {
    sid: &'static str,
    effect: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<Value>,
    /// A single string or a list, as the guide prints it.
    action: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    condition: Option<Value>,
}

impl PolicyDocument {
    fn new(statement: Vec<Statement>) -> Self {
        Self {
            version: POLICY_VERSION,
            statement,
        }
    }

    fn to_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("policy documents always serialise")
    }
}

/// The permissions policy the customer attaches to the role
/// (docs/onboarding.md, "Onboarding a customer"), as pretty JSON in IAM's conventional key
/// order, ready to paste into the IAM console.
///
/// Without a prefix: one statement, the five actions on `arn:aws:s3:::NAME` and
/// `arn:aws:s3:::NAME/*`. With a prefix (validated and normalised by
/// [`validate_prefix`]): three statements, object actions on `NAME/PATH/*`,
/// `s3:ListBucket` on `NAME` with an `s3:prefix` condition, and
/// `s3:GetBucketLocation` on `NAME` (the comments in the body say why three).
pub fn render_permissions_policy(
    bucket: &str,
    prefix: Option<&str>,
) -> Result<String, PolicyError> {
    Ok(permissions_document(bucket, prefix)?.to_pretty())
}

fn permissions_document(bucket: &str, prefix: Option<&str>) -> Result<PolicyDocument, PolicyError> {
    validate_bucket_name(bucket)?;
    let prefix = prefix.map(validate_prefix).transpose()?;
    Ok(permissions_statements(bucket, prefix.as_deref()))
}

/// The permissions policy as a JSON value for `bucket` and the normalised `prefix`,
/// unchecked: the templates (`super::template`) pass placeholders that stand for a
/// CloudFormation parameter or a Terraform variable, so that their documents are
/// built by the same code as `policy permissions` prints.
pub(super) fn permissions_value(bucket: &str, prefix: Option<&str>) -> Value {
    serde_json::to_value(permissions_statements(bucket, prefix))
        .expect("policy documents always serialise")
}

/// The trust policy as a JSON value, the External ID unchecked (see
/// [`permissions_value`]).
pub(super) fn trust_value(
    principal: &Principal,
    external_id: &str,
    services: &[TrustService],
    session: &[SessionAction],
) -> Value {
    serde_json::to_value(trust_statements(principal, external_id, services, session))
        .expect("policy documents always serialise")
}

/// [`permissions_document`] after validation: `bucket` checked, `prefix` normalised.
fn permissions_statements(bucket: &str, prefix: Option<&str>) -> PolicyDocument {
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let Some(prefix) = prefix else {
        // The guide's document, exactly: every action on both resources. IAM only
        // evaluates the action/resource pairs that make sense (object actions on
        // `NAME/*`, bucket actions on `NAME`), so one statement is enough.
        return PolicyDocument::new(vec![Statement {
            sid: "CredvendSyncBucketAccess",
            effect: "Allow",
            principal: None,
            action: json!(S3_ACTIONS),
            resource: Some(json!([bucket_arn, format!("{bucket_arn}/*")])),
            condition: None,
        }]);
    };
    // With a prefix one statement cannot express the grant, because a statement's
    // Condition applies to every action in it:
    // - ListBucket must carry `s3:prefix` so listing is confined to PATH. Object
    //   requests (Get/Put/DeleteObject) and GetBucketLocation carry no `s3:prefix`
    //   key, so the same condition would deny them: they need statements without it.
    // - Object actions are scoped by resource (`NAME/PATH/*`), GetBucketLocation
    //   needs the bucket ARN unconditionally (SDKs call it to find the region).
    // Hence three statements; each one's Sid says what it is for, which is also what
    // `credvend verify` points at when a check fails.
    PolicyDocument::new(vec![
        Statement {
            sid: "CredvendSyncObjectAccess",
            effect: "Allow",
            principal: None,
            action: json!(S3_OBJECT_ACTIONS),
            resource: Some(json!([format!("{bucket_arn}/{prefix}/*")])),
            condition: None,
        },
        Statement {
            sid: "CredvendSyncListPrefix",
            effect: "Allow",
            principal: None,
            action: json!(["s3:ListBucket"]),
            resource: Some(json!([bucket_arn])),
            // `PATH/*` for listing inside the prefix (`*` also matches the empty
            // string, so `PATH/` itself is covered); `PATH` for SDKs and tools that
            // list with the bare prefix, e.g. to test whether the "folder" exists.
            condition: Some(json!({
                "StringLike": { "s3:prefix": [format!("{prefix}/*"), prefix] }
            })),
        },
        Statement {
            sid: "CredvendSyncBucketLocation",
            effect: "Allow",
            principal: None,
            action: json!(["s3:GetBucketLocation"]),
            resource: Some(json!([bucket_arn])),
            condition: None,
        },
    ])
}

/// The trust policy the customer sets on the role (docs/onboarding.md, "Onboarding a customer"),
/// as pretty JSON in IAM's conventional key order: the vendor principal may
/// `sts:AssumeRole` only with `sts:ExternalId` equal to `external_id`, which is
/// validated first. `session` adds the actions the vendor's AssumeRole call also
/// needs (session tags, a source identity) to the same statement, under the same
/// condition.
pub fn render_trust_policy(
    principal: &Principal,
    external_id: &str,
    services: &[TrustService],
    session: &[SessionAction],
) -> Result<String, PolicyError> {
    Ok(trust_document(principal, external_id, services, session)?.to_pretty())
}

fn trust_document(
    principal: &Principal,
    external_id: &str,
    services: &[TrustService],
    session: &[SessionAction],
) -> Result<PolicyDocument, PolicyError> {
    validate_external_id(external_id)?;
    Ok(trust_statements(principal, external_id, services, session))
}

/// [`trust_document`] after validation.
fn trust_statements(
    principal: &Principal,
    external_id: &str,
    services: &[TrustService],
    session: &[SessionAction],
) -> PolicyDocument {
    let mut session = session.to_vec();
    session.sort_unstable();
    session.dedup();
    // A single action stays a string, as IAM's own examples write it.
    let action = if session.is_empty() {
        json!("sts:AssumeRole")
    } else {
        let mut actions = vec!["sts:AssumeRole"];
        actions.extend(session.iter().map(|a| a.action()));
        json!(actions)
    };
    let mut statements = vec![Statement {
        sid: "CredvendAssumeWithExternalId",
        effect: "Allow",
        principal: Some(json!({ "AWS": principal.arn() })),
        action,
        resource: None,
        // StringEquals, not StringLike: the value must match exactly, with no
        // wildcard interpretation of characters in the ID.
        condition: Some(json!({ "StringEquals": { "sts:ExternalId": external_id } })),
    }];
    let mut services = services.to_vec();
    services.sort_unstable();
    services.dedup();
    for service in services {
        match service {
            // No External ID condition here: AWS services never send one, so the
            // condition would block Redshift outright. The confused-deputy risk is
            // bounded differently: Redshift only uses a role the customer associated
            // with their own namespace/cluster and names in IAM_ROLE.
            TrustService::Redshift => statements.push(Statement {
                sid: "CredvendRedshiftServiceAssume",
                effect: "Allow",
                principal: Some(json!({ "Service": REDSHIFT_SERVICE_PRINCIPALS })),
                action: json!("sts:AssumeRole"),
                resource: None,
                condition: None,
            }),
        }
    }
    PolicyDocument::new(statements)
}
