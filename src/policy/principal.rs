//! The vendor principal a trust policy names, and the AWS services it may add.

use std::fmt;
use std::str::FromStr;

use super::PolicyError;
use crate::aws_names::{AccountId, Arn, Partition, RoleArn};

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
        match RoleArn::parse(input).map_err(|why| why.to_string()) {
            Ok(role) => role_principal(&role).or_else(fail),
            Err(reason) => fail(reason),
        }
    }

    /// A role ARN already checked (`sts.source_role_arn`) as the principal.
    pub fn role(role: &RoleArn) -> Result<Self, PolicyError> {
        role_principal(role).map_err(|reason| PolicyError::Principal {
            input: role.to_string(),
            reason,
        })
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

/// A role principal: [`RoleArn`]'s rules, and no wildcard in the path. IAM allows `*`
/// and `?` in a role's path, but a principal is matched literally: a wildcard there is
/// refused by IAM and must not reach the policy.
fn role_principal(role: &RoleArn) -> Result<Principal, String> {
    match role.path().chars().find(|c| matches!(c, '*' | '?')) {
        Some(c) => Err(format!(
            "a role principal may not contain the wildcard {c:?}"
        )),
        None => Ok(Principal::Role(role.to_string())),
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

/// AWS services the trust policy can additionally let assume the role; also the
/// `--service` values of `credvend policy trust` and `credvend onboard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum TrustService {
    // Redshift (Serverless or provisioned) running COPY/UNLOAD with this role. A plain
    // comment: a doc comment here would become per-value help in `--help`.
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

/// What the vendor principal does besides `sts:AssumeRole` when it assumes the role, each
/// of which IAM checks against the trust policy as an action of its own: a mapping with
/// `tags` sends session tags (`sts:TagSession`), one with `source_identity` sets a source
/// identity (`sts:SetSourceIdentity`). Without the action in the trust policy, AWS
/// refuses the whole AssumeRole. Also the `--session-action` values of `credvend policy
/// trust`; `credvend onboard` takes them from the mapping ([`SessionAction::needed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum SessionAction {
    TagSession,
    SetSourceIdentity,
}

impl SessionAction {
    /// The IAM action.
    pub fn action(self) -> &'static str {
        match self {
            Self::TagSession => "sts:TagSession",
            Self::SetSourceIdentity => "sts:SetSourceIdentity",
        }
    }

    /// The actions an AssumeRole call needs beyond `sts:AssumeRole`: with session tags,
    /// with a source identity.
    pub fn needed(tags: bool, source_identity: bool) -> Vec<SessionAction> {
        let mut actions = Vec::new();
        if tags {
            actions.push(Self::TagSession);
        }
        if source_identity {
            actions.push(Self::SetSourceIdentity);
        }
        actions
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
