//! Onboarding documents: External IDs, and the permission and trust policies a
//! customer installs on the IAM role credvend assumes (README.md, "Onboarding a customer").
//!
//! Everything here is pure: no I/O, no clock, no AWS calls. The CLI (`credvend
//! external-id new`, `credvend policy permissions|trust`, `credvend onboard`) feeds it
//! arguments and prints what comes back; the daemon's own identity reaches it only as
//! the ARN string `sts:GetCallerIdentity` returned ([`Principal::from_caller_arn`]).
//!
//! What the customer does with the output:
//!
//! 1. The vendor generates an External ID with [`new_external_id`] (40 characters of
//!    `[A-Za-z0-9]` from the OS CSPRNG) and stores it in the mapping's config. The
//!    customer never chooses it: a guessable or reused value would defeat its purpose,
//!    which is to stop *another* customer of the vendor from pointing the vendor at
//!    this customer's role (the confused-deputy problem).
//! 2. The customer creates an IAM role and attaches the **permissions policy**
//!    ([`render_permissions_policy`]): the five S3 actions credvend's workers need on the
//!    bucket, optionally narrowed to one key prefix.
//! 3. The customer sets the role's **trust policy** ([`render_trust_policy`]): the vendor's
//!    account root (or one vendor role) may call `sts:AssumeRole`, but only when it
//!    presents the External ID. With `--service redshift` a second statement lets the
//!    Redshift service assume the role for Redshift Serverless COPY/UNLOAD.
//! 4. The customer sends the role ARN back; `credvend verify` proves the role enforces
//!    the External ID and grants the five permissions.
//!
//! Both documents are rendered as pretty JSON in IAM's conventional key order
//! (`Version` before `Statement`, `Sid` and `Effect` first), which a
//! `serde_json::Value` cannot keep: without serde_json's `preserve_order` feature its
//! maps sort keys alphabetically. The tests parse the rendered text back into a
//! `Value` to compare documents structurally.
//!
//! ARNs are rendered for the commercial `aws` partition (`arn:aws:s3:::`,
//! `arn:aws:iam::ACCOUNT:root`); role principals in any partition credvend knows
//! ([`crate::aws_names::Partition`]) are passed through as given.
//!
//! Error messages never contain an External ID (it is a shared secret between the
//! vendor and one customer); they name the rule that failed and, for a bad character,
//! its 1-based position. Bucket names, prefixes and ARNs are not secret and are echoed
//! so the operator can see what was rejected.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use serde::Serialize;
use serde_json::{Value, json};

use crate::aws_names::{
    AccountId, Arn, EXTERNAL_ID_MAX_LEN, EXTERNAL_ID_MIN_LEN, ExternalIdError, Partition, RoleArn,
    check_external_id,
};

/// IAM policy language version; `2012-10-17` is the only one that supports policy
/// variables and conditions as we use them, and what every AWS guide prints.
pub const POLICY_VERSION: &str = "2012-10-17";

/// Length of the External IDs credvend generates. The vendor's IAM-role guide asks for at
/// least 32; 40 alphanumerics carry about 238 bits, far beyond guessing, and stay well
/// inside STS's 1224-character limit.
pub const GENERATED_EXTERNAL_ID_LEN: usize = 40;

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

/// Maximum S3 object key length in bytes; a prefix longer than this can match nothing.
const S3_MAX_KEY_BYTES: usize = 1024;

/// Everything this module can reject. Messages never contain an External ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// External ID shorter than 2 or longer than 1224 characters.
    #[error(
        "External ID is {length} characters long; STS accepts {EXTERNAL_ID_MIN_LEN} to \
         {EXTERNAL_ID_MAX_LEN} (value not shown: it is a secret)"
    )]
    ExternalIdLength { length: usize },

    /// External ID contains a character STS does not accept.
    #[error(
        "External ID has a character outside [A-Za-z0-9+=,.@:/_-] at position {position} \
         (1-based; value not shown: it is a secret)"
    )]
    ExternalIdCharacter { position: usize },

    /// Bucket name breaks one of the S3 general-purpose bucket naming rules.
    #[error("invalid S3 bucket name {name:?}: {rule}")]
    BucketName { name: String, rule: BucketNameRule },

    /// Key prefix unusable in a policy.
    #[error("invalid key prefix {prefix:?}: {reason}")]
    Prefix { prefix: String, reason: PrefixRule },

    /// `--principal` is not an account ID, account root ARN or IAM role ARN.
    #[error("invalid vendor principal {input:?}: {reason}")]
    Principal { input: String, reason: String },

    /// The caller ARN from GetCallerIdentity could not be turned into an account.
    #[error("cannot derive the vendor account from caller ARN {arn:?}: {reason}")]
    CallerArn { arn: String, reason: String },
}

/// Which S3 bucket naming rule a name broke. `Display` is the rule, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketNameRule {
    /// 3 to 63 characters.
    Length { length: usize },
    /// Only lowercase letters, digits, dots and hyphens.
    Character { position: usize, character: char },
    /// Must begin with a letter or digit.
    Start,
    /// Must end with a letter or digit.
    End,
    /// No two adjacent dots.
    AdjacentDots { position: usize },
    /// Must not look like an IPv4 address.
    IpAddress,
    /// Must not start with a prefix S3 reserves.
    ReservedPrefix { prefix: &'static str },
    /// Must not end with a suffix S3 reserves (access point aliases, Object Lambda,
    /// Multi-Region Access Points, directory buckets, table buckets).
    ReservedSuffix { suffix: &'static str },
}

impl fmt::Display for BucketNameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { length } => {
                write!(f, "must be 3 to 63 characters long, is {length}")
            }
            Self::Character {
                position,
                character,
            } => write!(
                f,
                "may contain only lowercase letters, digits, dots and hyphens; \
                 {character:?} at position {position} is not allowed"
            ),
            Self::Start => f.write_str("must begin with a lowercase letter or a digit"),
            Self::End => f.write_str("must end with a lowercase letter or a digit"),
            Self::AdjacentDots { position } => write!(
                f,
                "must not contain two adjacent dots (at position {position})"
            ),
            Self::IpAddress => {
                f.write_str("must not be formatted as an IP address (like 192.168.5.4)")
            }
            Self::ReservedPrefix { prefix } => {
                write!(f, "must not start with {prefix:?}, which S3 reserves")
            }
            Self::ReservedSuffix { suffix } => {
                write!(f, "must not end with {suffix:?}, which S3 reserves")
            }
        }
    }
}

/// Which rule a key prefix broke. `Display` is the rule, in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixRule {
    /// Nothing left after trimming whitespace and trailing slashes.
    Empty,
    /// Starts with `/`: S3 keys are not absolute paths, and `NAME//x` is almost
    /// certainly not what the customer meant.
    LeadingSlash,
    /// `*` or `?` would become wildcards in both the ARN and the `StringLike`
    /// condition, granting more than the named prefix.
    Wildcard,
    /// `$` starts an IAM policy variable (`${aws:username}`) in policy version
    /// 2012-10-17, so it would not be matched literally.
    PolicyVariable,
    /// A `.` or `..` segment: S3 does not resolve them, so such a prefix is a mistake
    /// (or an attempt to look like a traversal) rather than a real folder.
    DotSegment,
    /// An empty segment (`a//b`).
    EmptySegment,
    /// A control character.
    ControlCharacter,
    /// Longer than an S3 key can be.
    TooLong,
}

impl fmt::Display for PrefixRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "must not be empty",
            Self::LeadingSlash => "must not start with '/' (S3 keys are relative)",
            Self::Wildcard => "must not contain '*' or '?' (they would act as wildcards)",
            Self::PolicyVariable => "must not contain '$' (IAM would read it as a policy variable)",
            Self::DotSegment => "must not contain '.' or '..' path segments",
            Self::EmptySegment => "must not contain empty segments ('//')",
            Self::ControlCharacter => "must not contain control characters",
            Self::TooLong => "must be at most 1024 bytes (the S3 key length limit)",
        })
    }
}

/// Generates a fresh External ID: [`GENERATED_EXTERNAL_ID_LEN`] characters of
/// `[A-Za-z0-9]` from the operating system's CSPRNG.
///
/// `Alphanumeric` samples by rejection, so each of the 62 characters is equally
/// likely (no modulo bias); `OsRng` reads the kernel's generator directly, so there is
/// no user-space PRNG state to leak or fork.
pub fn new_external_id() -> String {
    OsRng
        .sample_iter(&Alphanumeric)
        .take(GENERATED_EXTERNAL_ID_LEN)
        .map(char::from)
        .collect()
}

/// Checks an External ID against STS's rules ([`check_external_id`]: 2–1224
/// characters of `[A-Za-z0-9+=,.@:/_-]`). Customer-supplied legacy IDs may use the
/// punctuation; generated ones are alphanumeric.
pub fn validate_external_id(s: &str) -> Result<(), PolicyError> {
    check_external_id(s).map_err(|err| match err {
        ExternalIdError::Length { length } => PolicyError::ExternalIdLength { length },
        ExternalIdError::Character { position, .. } => {
            PolicyError::ExternalIdCharacter { position }
        }
    })
}

/// Suffixes S3 reserves for other bucket-shaped resources (S3 "General purpose bucket
/// naming rules").
const RESERVED_BUCKET_SUFFIXES: [&str; 5] =
    ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"];

/// Prefixes S3 reserves (same source).
const RESERVED_BUCKET_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];

/// Checks a bucket name against the S3 general-purpose bucket naming rules, reporting
/// the first rule it breaks. Dotted names are valid (though virtual-hosted HTTPS to
/// them needs path-style addressing; that is the SDK's concern, not the policy's).
pub fn validate_bucket_name(name: &str) -> Result<(), PolicyError> {
    bucket_name_rule(name).map_or(Ok(()), |rule| {
        Err(PolicyError::BucketName {
            name: name.to_owned(),
            rule,
        })
    })
}

fn bucket_name_rule(name: &str) -> Option<BucketNameRule> {
    let length = name.chars().count();
    if !(3..=63).contains(&length) {
        return Some(BucketNameRule::Length { length });
    }
    if let Some((index, character)) = name
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-'))
    {
        return Some(BucketNameRule::Character {
            position: index + 1,
            character,
        });
    }
    // From here on the name is ASCII, so byte indexing is character indexing.
    let bytes = name.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() {
        return Some(BucketNameRule::Start);
    }
    if !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Some(BucketNameRule::End);
    }
    if let Some(index) = name.find("..") {
        return Some(BucketNameRule::AdjacentDots {
            position: index + 1,
        });
    }
    if looks_like_ipv4(name) {
        return Some(BucketNameRule::IpAddress);
    }
    if let Some(prefix) = RESERVED_BUCKET_PREFIXES
        .into_iter()
        .find(|p| name.starts_with(p))
    {
        return Some(BucketNameRule::ReservedPrefix { prefix });
    }
    if let Some(suffix) = RESERVED_BUCKET_SUFFIXES
        .into_iter()
        .find(|s| name.ends_with(s))
    {
        return Some(BucketNameRule::ReservedSuffix { suffix });
    }
    None
}

/// "Formatted as an IP address": four dot-separated groups of 1–3 digits. Deliberately
/// looser than `Ipv4Addr` parsing (which rejects `999.1.1.1` or leading zeros), because
/// S3 rejects anything of that shape.
fn looks_like_ipv4(name: &str) -> bool {
    let groups: Vec<&str> = name.split('.').collect();
    groups.len() == 4
        && groups
            .iter()
            .all(|g| (1..=3).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_digit()))
}

/// Validates a key prefix and returns its normal form: surrounding whitespace and
/// trailing slashes removed (`"exports/daily/"` → `"exports/daily"`), so the policy can
/// append `/*` exactly once.
pub fn validate_prefix(prefix: &str) -> Result<String, PolicyError> {
    let reject = |reason| {
        Err(PolicyError::Prefix {
            prefix: prefix.to_owned(),
            reason,
        })
    };
    let trimmed = prefix.trim();
    if trimmed.starts_with('/') {
        return reject(PrefixRule::LeadingSlash);
    }
    let normalised = trimmed.trim_end_matches('/');
    if normalised.is_empty() {
        return reject(PrefixRule::Empty);
    }
    if normalised.contains(['*', '?']) {
        return reject(PrefixRule::Wildcard);
    }
    if normalised.contains('$') {
        return reject(PrefixRule::PolicyVariable);
    }
    if normalised.chars().any(char::is_control) {
        return reject(PrefixRule::ControlCharacter);
    }
    for segment in normalised.split('/') {
        match segment {
            "" => return reject(PrefixRule::EmptySegment),
            "." | ".." => return reject(PrefixRule::DotSegment),
            _ => {}
        }
    }
    // Room for at least "/x" after the prefix, or no key could ever match.
    if normalised.len() + 2 > S3_MAX_KEY_BYTES {
        return reject(PrefixRule::TooLong);
    }
    Ok(normalised.to_owned())
}

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
/// (README.md, "Onboarding a customer"), as pretty JSON in IAM's conventional key
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
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let Some(prefix) = prefix else {
        // The guide's document, exactly: every action on both resources. IAM only
        // evaluates the action/resource pairs that make sense (object actions on
        // `NAME/*`, bucket actions on `NAME`), so one statement is enough.
        return Ok(PolicyDocument::new(vec![Statement {
            sid: "CredvendSyncBucketAccess",
            effect: "Allow",
            principal: None,
            action: json!(S3_ACTIONS),
            resource: Some(json!([bucket_arn, format!("{bucket_arn}/*")])),
            condition: None,
        }]));
    };
    let prefix = validate_prefix(prefix)?;
    // With a prefix one statement cannot express the grant, because a statement's
    // Condition applies to every action in it:
    // - ListBucket must carry `s3:prefix` so listing is confined to PATH. Object
    //   requests (Get/Put/DeleteObject) and GetBucketLocation carry no `s3:prefix`
    //   key, so the same condition would deny them: they need statements without it.
    // - Object actions are scoped by resource (`NAME/PATH/*`), GetBucketLocation
    //   needs the bucket ARN unconditionally (SDKs call it to find the region).
    // Hence three statements; each one's Sid says what it is for, which is also what
    // `credvend verify` points at when a check fails.
    Ok(PolicyDocument::new(vec![
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
    ]))
}

/// The vendor principal a trust policy names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A 12-digit AWS account ID, rendered as `arn:aws:iam::ACCOUNT:root`: any
    /// principal in the vendor account whose own policies allow `sts:AssumeRole`.
    /// This is the guide's default.
    Account(String),
    /// One specific vendor IAM role ARN ("restrict assumption to a role"), kept as
    /// given: `arn:PARTITION:iam::ACCOUNT:role/[path/]name` ([`RoleArn`]'s rules, and no
    /// wildcard in the path).
    Role(String),
}

impl Principal {
    /// Parses `--principal`: a 12-digit account ID, `arn:aws:iam::ACCOUNT:root`, or an
    /// IAM role ARN (with optional path) in any partition of
    /// [`crate::aws_names::Partition`]. Surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let input = s.trim();
        let fail = |reason: String| {
            Err(PolicyError::Principal {
                input: s.to_owned(),
                reason,
            })
        };
        if AccountId::is_valid(input) {
            return Ok(Self::Account(input.to_owned()));
        }
        let Ok(arn) = Arn::parse(input) else {
            return fail(
                "expected a 12-digit account ID, arn:aws:iam::ACCOUNT:root or \
                 arn:aws:iam::ACCOUNT:role/NAME"
                    .to_owned(),
            );
        };
        let partition = match arn.known_partition() {
            Ok(partition) => partition,
            Err(why) => return fail(why.to_string()),
        };
        if arn.service != "iam" || !arn.region.is_empty() {
            return fail(format!(
                "expected an IAM ARN (arn:PARTITION:iam::ACCOUNT:...), got service {:?}",
                arn.service
            ));
        }
        if !AccountId::is_valid(arn.account) {
            return fail("the account field must be exactly 12 digits".to_owned());
        }
        if arn.resource == "root" {
            return account_root(partition, arn.account).map_err(|reason| PolicyError::Principal {
                input: s.to_owned(),
                reason,
            });
        }
        if !arn.resource.starts_with("role/") {
            return fail(format!(
                "only an account root or a role can be trusted, not {:?}",
                arn.resource
            ));
        }
        let role = match RoleArn::parse(input) {
            Ok(role) => role,
            Err(why) => return fail(why.to_string()),
        };
        // IAM allows `*` and `?` in a role's path, but a principal is matched
        // literally: a wildcard there is refused by IAM and must not reach the policy.
        if let Some(c) = role.path().chars().find(|c| matches!(c, '*' | '?')) {
            return fail(format!(
                "a role principal may not contain the wildcard {c:?}"
            ));
        }
        Ok(Self::Role(input.to_owned()))
    }

    /// The daemon's own identity, as returned by `sts:GetCallerIdentity`, turned into
    /// the default trust principal: the caller's account root. Trusting the root (not
    /// the exact caller) is the documented default because the caller is often an
    /// assumed-role *session*, which cannot be a principal, and the vendor may rotate
    /// the underlying identity without every customer editing their trust policy.
    ///
    /// Accepts any `arn:aws:{iam,sts}::ACCOUNT:...` caller: `user/x`, `root`,
    /// `assumed-role/R/S`, `federated-user/x`.
    pub fn from_caller_arn(arn: &str) -> Result<Self, PolicyError> {
        let fail = |reason: String| {
            Err(PolicyError::CallerArn {
                arn: arn.to_owned(),
                reason,
            })
        };
        let Ok(parsed) = Arn::parse(arn.trim()) else {
            return fail("not an ARN".to_owned());
        };
        let partition = match parsed.known_partition() {
            Ok(partition) => partition,
            Err(why) => return fail(why.to_string()),
        };
        if !matches!(parsed.service, "iam" | "sts") || !parsed.region.is_empty() {
            return fail(format!(
                "expected an IAM or STS identity ARN, got service {:?}",
                parsed.service
            ));
        }
        if !AccountId::is_valid(parsed.account) {
            return fail("the account field must be exactly 12 digits".to_owned());
        }
        if parsed.resource.is_empty() {
            return fail("the ARN names no identity".to_owned());
        }
        account_root(partition, parsed.account).map_err(|reason| PolicyError::CallerArn {
            arn: arn.to_owned(),
            reason,
        })
    }

    /// The value of `Principal.AWS` in the trust policy.
    pub fn arn(&self) -> String {
        match self {
            Self::Account(account) => format!("arn:aws:iam::{account}:root"),
            Self::Role(arn) => arn.clone(),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn())
    }
}

impl FromStr for Principal {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An account root principal. Only the `aws` partition: [`Principal::Account`] renders
/// as `arn:aws:iam::...:root`, and silently printing the wrong partition would give the
/// customer a policy that never matches. Other partitions name a role instead.
fn account_root(partition: Partition, account: &str) -> Result<Principal, String> {
    if partition == Partition::Aws {
        Ok(Principal::Account(account.to_owned()))
    } else {
        Err(format!(
            "account principals are supported only in the aws partition; in {partition} \
             pass a role ARN (arn:{partition}:iam::{account}:role/NAME) with --principal"
        ))
    }
}

/// AWS services the trust policy can additionally let assume the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrustService {
    /// Redshift (Serverless or provisioned) running COPY/UNLOAD with this role.
    Redshift,
}

impl TrustService {
    /// Every service, for CLI help.
    pub const ALL: [TrustService; 1] = [TrustService::Redshift];

    /// The `--service` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redshift => "redshift",
        }
    }
}

impl fmt::Display for TrustService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TrustService {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|service| service.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown service {s:?}; known: redshift"))
    }
}

/// The trust policy the customer sets on the role (README.md, "Onboarding a customer"),
/// as pretty JSON in IAM's conventional key order: the vendor principal may
/// `sts:AssumeRole` only with `sts:ExternalId` equal to `external_id`, which is
/// validated first.
pub fn render_trust_policy(
    principal: &Principal,
    external_id: &str,
    services: &[TrustService],
) -> Result<String, PolicyError> {
    Ok(trust_document(principal, external_id, services)?.to_pretty())
}

fn trust_document(
    principal: &Principal,
    external_id: &str,
    services: &[TrustService],
) -> Result<PolicyDocument, PolicyError> {
    validate_external_id(external_id)?;
    let mut statements = vec![Statement {
        sid: "CredvendAssumeWithExternalId",
        effect: "Allow",
        principal: Some(json!({ "AWS": principal.arn() })),
        action: json!("sts:AssumeRole"),
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
    Ok(PolicyDocument::new(statements))
}

#[cfg(test)]
mod tests {
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
        render_trust_policy(principal, external_id, services).map(|text| parsed(&text))
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
        let text = render_trust_policy(&principal, "0000", &[]).unwrap();
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
        let rendered = render_trust_policy(&principal, "0000", &[]).unwrap();
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
            render_trust_policy(&principal, "ab cd", &[]),
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
}
