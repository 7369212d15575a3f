//! Onboarding documents: External IDs, and the permission and trust policies a
//! customer installs on the IAM role credvend assumes (docs/onboarding.md, "Onboarding a customer").
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

mod bucket;
mod document;
mod external_id;
mod principal;
mod template;
#[cfg(test)]
mod tests;

pub use bucket::{BucketNameRule, PrefixRule, validate_bucket_name, validate_prefix};
pub use document::{
    POLICY_VERSION, REDSHIFT_SERVICE_PRINCIPALS, S3_ACTIONS, render_permissions_policy,
    render_trust_policy,
};
pub use external_id::{GENERATED_EXTERNAL_ID_LEN, new_external_id, validate_external_id};
pub use principal::{Principal, SessionAction, TrustService};
pub use template::{
    CKV_AWS_61_SKIP_REASON, PERMISSIONS_POLICY_NAME, QUICK_CREATE_BASE, RoleTemplate,
    TerraformModule,
};

use crate::aws_names::{EXTERNAL_ID_MAX_LEN, EXTERNAL_ID_MIN_LEN};

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
