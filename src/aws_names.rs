//! AWS names, each rule written once: partitions, account IDs, ARNs, IAM role and
//! managed-policy ARNs, External IDs, role session names and source identities.
//!
//! A leaf module: it depends on nothing else in the crate, and `config` (validation),
//! `policy` (onboarding documents), `server` (the credential body's `AccountId`) and the
//! tests' fake STS all take their rules from here. The rules are the ones IAM and STS
//! document in their API references (`CreateRole`, `AssumeRole`, the `Role` data type):
//!
//! - partitions: `aws`, `aws-cn`, `aws-us-gov`, `aws-iso`, `aws-iso-b`, `aws-iso-e`,
//!   `aws-iso-f`, `aws-eusc`;
//! - account ID: exactly 12 ASCII digits;
//! - ARN: `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE` (six fields, the resource may
//!   itself contain `:`);
//! - IAM role ARN: `arn:PARTITION:iam::ACCOUNT:role` + PATH + NAME, where PATH is `/` or
//!   `/…/` of printable ASCII (`!` to `~`), at most 512 characters, and NAME is 1–64 of
//!   `[\w+=,.@-]`; a managed policy ARN has `policy` instead, account `aws` or 12 digits,
//!   NAME 1–128;
//! - External ID: 2–1224 of `[\w+=,.@:/-]`;
//! - role session name and source identity: 2–64 of `[\w+=,.@-]` (STS also reserves
//!   the `aws:` prefix for source identities, which this character set already excludes);
//! - region: `us-east-1`, `us-gov-west-1`, `cn-north-1`…: a two-letter prefix, more
//!   lower-case words and a number, joined by `-`.
//!
//! The validated names ([`RoleArn`], [`PolicyArn`], [`SessionName`], [`SourceIdentity`],
//! [`Region`]) keep the text as written (`Display`, `Deref<Target = str>`) and
//! deserialize from a string through `TryFrom<String>`, whose error is the reason in
//! words, naming the value and the expected form: the configuration report's wording.
//!
//! `\w` is ASCII here, as in the AWS patterns: `[A-Za-z0-9_]`. Errors about an External
//! ID never carry the value (it is a shared secret); errors about other names may.

use std::fmt;

/// The AWS partitions credvend accepts in ARNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Partition {
    Aws,
    AwsCn,
    AwsUsGov,
    AwsIso,
    AwsIsoB,
    AwsIsoE,
    AwsIsoF,
    AwsEusc,
}

impl Partition {
    /// Every partition, in the order error messages list them.
    pub const ALL: [Partition; 8] = [
        Partition::Aws,
        Partition::AwsCn,
        Partition::AwsUsGov,
        Partition::AwsIso,
        Partition::AwsIsoB,
        Partition::AwsIsoE,
        Partition::AwsIsoF,
        Partition::AwsEusc,
    ];

    /// The name as it appears in an ARN.
    pub fn as_str(self) -> &'static str {
        match self {
            Partition::Aws => "aws",
            Partition::AwsCn => "aws-cn",
            Partition::AwsUsGov => "aws-us-gov",
            Partition::AwsIso => "aws-iso",
            Partition::AwsIsoB => "aws-iso-b",
            Partition::AwsIsoE => "aws-iso-e",
            Partition::AwsIsoF => "aws-iso-f",
            Partition::AwsEusc => "aws-eusc",
        }
    }

    /// The partition named exactly `name` (ARNs are case-sensitive).
    pub fn parse(name: &str) -> Option<Partition> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A 12-digit AWS account ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    /// Exactly 12 ASCII digits; nothing else (no trimming, no dashes).
    pub fn parse(value: &str) -> Option<AccountId> {
        Self::is_valid(value).then(|| AccountId(value.to_owned()))
    }

    /// Whether `value` is 12 ASCII digits.
    pub fn is_valid(value: &str) -> bool {
        value.len() == 12 && value.bytes().all(|b| b.is_ascii_digit())
    }

    /// The account of any ARN (IAM role, STS assumed role, user…), when its account
    /// field is an account ID: `None` for `arn:aws:s3:::bucket`, a managed policy's
    /// `aws`, or a string that is not an ARN.
    pub fn of_arn(arn: &str) -> Option<AccountId> {
        AccountId::parse(Arn::parse(arn).ok()?.account)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not the ARN asked for. `Display` is the reason in words, without
/// the ARN itself (callers say which value and key it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArnError {
    /// Fewer than six colon-separated fields.
    Shape,
    /// The first field is not `arn`.
    Prefix,
    /// A partition not in [`Partition::ALL`].
    Partition(String),
    /// Not the service asked for (`iam` for role and policy ARNs).
    Service(String),
    /// IAM ARNs have an empty region field.
    Region,
    /// The account field is not 12 digits.
    Account,
    /// A managed policy's account is neither 12 digits nor `aws`.
    PolicyAccount,
    /// The resource is not of the kind asked for; the expected form.
    Resource(&'static str),
    /// The IAM path breaks the path rule; which resource kind (`role`, `policy`).
    Path(&'static str),
    /// The name is empty or too long.
    NameLength { kind: &'static str, max: usize },
    /// The name has a character outside `[\w+=,.@-]`.
    NameCharacter { kind: &'static str, name: String },
}

impl fmt::Display for ArnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArnError::Shape => f.write_str("expected arn:PARTITION:iam::ACCOUNT:RESOURCE"),
            ArnError::Prefix => f.write_str("must start with `arn:`"),
            ArnError::Partition(partition) => {
                let known: Vec<&str> = Partition::ALL.iter().map(|p| p.as_str()).collect();
                write!(
                    f,
                    "unknown partition `{partition}`; expected one of {}",
                    known.join(", ")
                )
            }
            ArnError::Service(service) => write!(f, "service is `{service}`, expected `iam`"),
            ArnError::Region => f.write_str("IAM ARNs have an empty region field (`iam::`)"),
            ArnError::Account => f.write_str("the account ID must be 12 digits"),
            ArnError::PolicyAccount => {
                f.write_str("the account must be 12 digits, or `aws` for a managed policy")
            }
            ArnError::Resource(form) => write!(f, "the resource must be `{form}`"),
            ArnError::Path(kind) => write!(
                f,
                "{kind} path must be `/` or `/…/` of printable ASCII, at most \
                 {IAM_MAX_PATH_LEN} characters"
            ),
            ArnError::NameLength { kind, max } => {
                write!(f, "{kind} name must be 1–{max} characters")
            }
            ArnError::NameCharacter { kind, name } => write!(
                f,
                "{kind} name `{name}` may contain only letters, digits and _+=,.@-"
            ),
        }
    }
}

impl std::error::Error for ArnError {}

/// The six fields of `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`, borrowed and not
/// yet checked (the partition may be unknown, the account not 12 digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arn<'a> {
    pub partition: &'a str,
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    /// Everything after the fifth colon (it may contain colons itself).
    pub resource: &'a str,
}

impl<'a> Arn<'a> {
    /// Splits `value` into its six fields; [`ArnError::Shape`] or [`ArnError::Prefix`]
    /// when it is not an ARN at all.
    pub fn parse(value: &'a str) -> Result<Arn<'a>, ArnError> {
        let fields: Vec<&str> = value.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = fields[..] else {
            return Err(ArnError::Shape);
        };
        if prefix != "arn" {
            return Err(ArnError::Prefix);
        }
        Ok(Arn {
            partition,
            service,
            region,
            account,
            resource,
        })
    }

    /// The partition, if it is a known one.
    pub fn known_partition(&self) -> Result<Partition, ArnError> {
        Partition::parse(self.partition).ok_or_else(|| ArnError::Partition(self.partition.into()))
    }

    /// An IAM ARN: known partition, service `iam`, empty region. The account and the
    /// resource are left to the caller.
    fn iam(value: &'a str) -> Result<(Partition, Arn<'a>), ArnError> {
        let arn = Arn::parse(value)?;
        let partition = arn.known_partition()?;
        if arn.service != "iam" {
            return Err(ArnError::Service(arn.service.into()));
        }
        if !arn.region.is_empty() {
            return Err(ArnError::Region);
        }
        Ok((partition, arn))
    }
}

/// Longest IAM path, leading and trailing `/` included.
pub const IAM_MAX_PATH_LEN: usize = 512;
/// Longest IAM role name.
pub const IAM_MAX_ROLE_NAME_LEN: usize = 64;
/// Longest IAM managed policy name.
pub const IAM_MAX_POLICY_NAME_LEN: usize = 128;

/// `[\w+=,.@-]`: the characters of role names, policy names, role session names and
/// source identities.
pub fn is_iam_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// Whether `path` is an IAM path: `/`, or `/…/` with at least one character between the
/// slashes, all of them printable ASCII (`!` to `~`, so `/` too), at most
/// [`IAM_MAX_PATH_LEN`] characters in all (IAM's pattern
/// `(\u002F)|(\u002F[\u0021-\u007E]+\u002F)`).
pub fn is_iam_path(path: &str) -> bool {
    let printable = |c: char| ('!'..='~').contains(&c);
    path == "/"
        || (path.len() >= 3
            && path.len() <= IAM_MAX_PATH_LEN
            && path.starts_with('/')
            && path.ends_with('/')
            && path.chars().all(printable))
}

/// Splits the part of an IAM resource after `role` / `policy` (`/PATH/NAME` or `/NAME`)
/// into the IAM path and the name, checking both.
fn iam_path_and_name(
    rest: &str,
    kind: &'static str,
    max_name: usize,
) -> Result<(String, String), ArnError> {
    let (path, name) = match rest.rfind('/') {
        Some(slash) => rest.split_at(slash + 1),
        None => ("", rest),
    };
    if !is_iam_path(path) {
        return Err(ArnError::Path(kind));
    }
    if name.is_empty() || name.chars().count() > max_name {
        return Err(ArnError::NameLength {
            kind,
            max: max_name,
        });
    }
    if !name.chars().all(is_iam_name_char) {
        return Err(ArnError::NameCharacter {
            kind,
            name: name.to_owned(),
        });
    }
    Ok((path.to_owned(), name.to_owned()))
}

/// Implements, for a validated name type holding its text in `.text`: `Deref<Target =
/// str>`, `Display` and `Debug` (the text), comparisons with strings, and
/// `Deserialize` through `TryFrom<String>`.
macro_rules! name_as_text {
    ($type:ident) => {
        impl std::ops::Deref for $type {
            type Target = str;
            fn deref(&self) -> &str {
                &self.text
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.text)
            }
        }

        impl fmt::Debug for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.text, f)
            }
        }

        impl PartialEq<str> for $type {
            fn eq(&self, other: &str) -> bool {
                self.text == other
            }
        }

        impl PartialEq<&str> for $type {
            fn eq(&self, other: &&str) -> bool {
                self.text == *other
            }
        }

        impl PartialEq<String> for $type {
            fn eq(&self, other: &String) -> bool {
                &self.text == other
            }
        }

        impl PartialEq<$type> for String {
            fn eq(&self, other: &$type) -> bool {
                *self == other.text
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                $type::try_from(text).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An IAM role ARN: `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`, as written.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoleArn {
    /// `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`, as written; the account and path
    /// are read back out of it (a mapping table holds one per mapping, so no copies).
    text: String,
    partition: Partition,
}

name_as_text!(RoleArn);

impl RoleArn {
    /// Checks every rule of the module doc's "IAM role ARN" item.
    pub fn parse(value: &str) -> Result<RoleArn, ArnError> {
        let (partition, arn) = Arn::iam(value)?;
        let account = AccountId::parse(arn.account).ok_or(ArnError::Account)?;
        let rest = arn
            .resource
            .strip_prefix("role")
            .filter(|rest| rest.starts_with('/'))
            .ok_or(ArnError::Resource("role/[PATH/]NAME"))?;
        iam_path_and_name(rest, "role", IAM_MAX_ROLE_NAME_LEN)?;
        let role = RoleArn {
            text: value.to_owned(),
            partition,
        };
        debug_assert_eq!(role.account_str(), account.as_str());
        Ok(role)
    }

    /// Where the account starts: after `arn:PARTITION:iam::`.
    fn account_start(&self) -> usize {
        "arn:".len() + self.partition.as_str().len() + ":iam::".len()
    }

    fn account_str(&self) -> &str {
        let start = self.account_start();
        &self.text[start..start + 12]
    }

    #[cfg(test)]
    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The account the role belongs to.
    pub fn account(&self) -> AccountId {
        AccountId(self.account_str().to_owned())
    }

    /// The IAM path: `/` for a role without one, else `/a/b/`.
    pub fn path(&self) -> &str {
        // `role` follows `ACCOUNT:`; the path runs from its `/` to the last `/`.
        let start = self.account_start() + "123456789012:role".len();
        let end = self.text.rfind('/').map_or(start + 1, |slash| slash + 1);
        &self.text[start..end]
    }

    /// The role name: the last segment of the ARN.
    pub fn name(&self) -> &str {
        self.text.rsplit('/').next().unwrap_or_default()
    }
}

impl TryFrom<String> for RoleArn {
    type Error = String;

    /// The reason names the value and the expected form.
    fn try_from(value: String) -> Result<RoleArn, String> {
        RoleArn::parse(&value).map_err(|why| {
            format!("`{value}` is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME): {why}")
        })
    }
}

/// A managed policy ARN: `arn:PARTITION:iam::(ACCOUNT|aws):policy/[PATH/]NAME`, as
/// written.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PolicyArn {
    text: String,
}

name_as_text!(PolicyArn);

impl PolicyArn {
    /// An AWS managed policy has the account `aws`; a customer managed one an account ID.
    pub fn parse(value: &str) -> Result<PolicyArn, ArnError> {
        let (_, arn) = Arn::iam(value)?;
        if arn.account != "aws" && !AccountId::is_valid(arn.account) {
            return Err(ArnError::PolicyAccount);
        }
        let rest = arn
            .resource
            .strip_prefix("policy")
            .filter(|rest| rest.starts_with('/'))
            .ok_or(ArnError::Resource("policy/[PATH/]NAME"))?;
        iam_path_and_name(rest, "policy", IAM_MAX_POLICY_NAME_LEN)?;
        Ok(PolicyArn {
            text: value.to_owned(),
        })
    }
}

impl TryFrom<String> for PolicyArn {
    type Error = String;

    /// The reason names the value and the expected form.
    fn try_from(value: String) -> Result<PolicyArn, String> {
        PolicyArn::parse(&value).map_err(|why| {
            format!(
                "`{value}` is not an IAM policy ARN (arn:aws:iam::aws:policy/NAME or \
                 arn:aws:iam::123456789012:policy/NAME): {why}"
            )
        })
    }
}

/// Shortest External ID STS accepts.
pub const EXTERNAL_ID_MIN_LEN: usize = 2;
/// Longest External ID STS accepts.
pub const EXTERNAL_ID_MAX_LEN: usize = 1224;

/// `[\w+=,.@:/-]`: the characters of an External ID.
pub fn is_external_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c)
}

/// Why a value is not an External ID. Never holds the value, nor the offending
/// character (it is part of a secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalIdError {
    /// Not [`EXTERNAL_ID_MIN_LEN`]–[`EXTERNAL_ID_MAX_LEN`] characters long.
    Length { length: usize },
    /// A character outside `[\w+=,.@:/-]` at this 1-based position; `blank` when it is
    /// whitespace or a control character (a stray newline, most often).
    Character { position: usize, blank: bool },
}

/// Checks an External ID: 2–1224 characters of `[\w+=,.@:/-]`.
pub fn check_external_id(value: &str) -> Result<(), ExternalIdError> {
    let length = value.chars().count();
    if !(EXTERNAL_ID_MIN_LEN..=EXTERNAL_ID_MAX_LEN).contains(&length) {
        return Err(ExternalIdError::Length { length });
    }
    match value
        .chars()
        .enumerate()
        .find(|(_, c)| !is_external_id_char(*c))
    {
        Some((index, c)) => Err(ExternalIdError::Character {
            position: index + 1,
            blank: c.is_whitespace() || c.is_control(),
        }),
        None => Ok(()),
    }
}

/// Why a value is not a role session name or source identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionNameError {
    /// Not 2–64 characters long.
    Length { length: usize },
    /// A character outside `[\w+=,.@-]`.
    Character,
}

/// Shortest role session name or source identity.
pub const SESSION_NAME_MIN_LEN: usize = 2;
/// Longest role session name or source identity.
pub const SESSION_NAME_MAX_LEN: usize = 64;

/// Checks a role session name or a source identity: 2–64 characters of `[\w+=,.@-]`.
pub fn check_role_session_name(value: &str) -> Result<(), SessionNameError> {
    let length = value.chars().count();
    if !(SESSION_NAME_MIN_LEN..=SESSION_NAME_MAX_LEN).contains(&length) {
        return Err(SessionNameError::Length { length });
    }
    if !value.chars().all(is_iam_name_char) {
        return Err(SessionNameError::Character);
    }
    Ok(())
}

/// The reason a role session name or source identity (`what`) is refused, naming it.
fn session_name_reason(value: &str, what: &str, err: SessionNameError) -> String {
    match err {
        SessionNameError::Length { length } => format!(
            "`{value}`: a {what} must be {SESSION_NAME_MIN_LEN}–{SESSION_NAME_MAX_LEN} \
             characters, not {length}"
        ),
        SessionNameError::Character => {
            format!("`{value}`: a {what} may contain only letters, digits and _+=,.@-")
        }
    }
}

/// Declares a name type with the rules of a role session name
/// ([`check_role_session_name`]); `$what` names it in reasons.
macro_rules! session_name_type {
    ($(#[$doc:meta])* $type:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $type {
            text: String,
        }

        name_as_text!($type);

        impl TryFrom<String> for $type {
            type Error = String;

            fn try_from(value: String) -> Result<$type, String> {
                match check_role_session_name(&value) {
                    Ok(()) => Ok($type { text: value }),
                    Err(err) => Err(session_name_reason(&value, $what, err)),
                }
            }
        }
    };
}

session_name_type!(
    /// A role session name.
    SessionName,
    "session name"
);

session_name_type!(
    /// A source identity (STS reserves the `aws:` prefix; `:` is not a name character).
    SourceIdentity,
    "source identity"
);

/// An AWS region name: `us-east-1`, `us-gov-west-1`, `cn-north-1`, `eu-central-2`…
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Region {
    text: String,
}

name_as_text!(Region);

impl Region {
    /// Whether `value` is shaped like a region name: a two-letter prefix, one or more
    /// lower-case words and a number, joined by `-`.
    pub fn is_valid(value: &str) -> bool {
        let parts: Vec<&str> = value.split('-').collect();
        parts.len() >= 3
            && parts[0].len() == 2
            && parts[..parts.len() - 1]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
            && parts
                .last()
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    }
}

impl TryFrom<String> for Region {
    type Error = String;

    fn try_from(value: String) -> Result<Region, String> {
        if Region::is_valid(&value) {
            Ok(Region { text: value })
        } else {
            Err(format!(
                "`{value}` is not an AWS region name like `us-east-1`"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "111122223333";

    #[test]
    fn partitions_are_the_eight_aws_partitions() {
        let names: Vec<&str> = Partition::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "aws",
                "aws-cn",
                "aws-us-gov",
                "aws-iso",
                "aws-iso-b",
                "aws-iso-e",
                "aws-iso-f",
                "aws-eusc"
            ]
        );
        for partition in Partition::ALL {
            assert_eq!(
                Partition::parse(partition.as_str()),
                Some(partition),
                "{partition}"
            );
            let arn = format!("arn:{partition}:iam::{ACCOUNT}:role/r");
            assert_eq!(RoleArn::parse(&arn).unwrap().partition(), partition);
        }
        for unknown in ["", "AWS", "aws-mars", "aws-iso-c", " aws"] {
            assert_eq!(Partition::parse(unknown), None, "{unknown:?}");
        }
        let arn = format!("arn:aws-mars:iam::{ACCOUNT}:role/r");
        let err = RoleArn::parse(&arn).unwrap_err();
        assert_eq!(err, ArnError::Partition("aws-mars".into()));
        assert!(err.to_string().contains("aws-eusc"), "{err}");
    }

    #[test]
    fn account_id_is_exactly_twelve_ascii_digits() {
        assert_eq!(AccountId::parse(ACCOUNT).unwrap().as_str(), ACCOUNT);
        for bad in [
            "",
            "11112222333",
            "1111222233334",
            "11112222333a",
            " 111122223333",
            "1111-2222-3333",
            "１１１１２２２２３３３３",
            "aws",
        ] {
            assert_eq!(AccountId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn account_of_any_arn() {
        for arn in [
            "arn:aws:iam::111122223333:role/sync",
            "arn:aws:sts::111122223333:assumed-role/sync/credvend-acme",
            "arn:aws-cn:iam::111122223333:user/a:b",
        ] {
            assert_eq!(
                AccountId::of_arn(arn).as_ref().map(AccountId::as_str),
                Some(ACCOUNT),
                "{arn}"
            );
        }
        for arn in [
            "arn:aws:s3:::bucket",
            "arn:aws:iam::aws:policy/x",
            "arn:aws:iam::111122223333",
            "xarn:aws:sts::111122223333:assumed-role/a/b",
            "not-an-arn",
        ] {
            assert_eq!(AccountId::of_arn(arn), None, "{arn}");
        }
    }

    #[test]
    fn arn_has_six_fields_and_the_prefix() {
        let arn = Arn::parse("arn:aws:sts::111122223333:assumed-role/r/s").unwrap();
        assert_eq!(
            (arn.partition, arn.service, arn.region, arn.account),
            ("aws", "sts", "", ACCOUNT)
        );
        assert_eq!(arn.resource, "assumed-role/r/s");
        assert_eq!(Arn::parse("arn:aws:iam::1"), Err(ArnError::Shape));
        assert_eq!(Arn::parse("nra:aws:iam::1:r"), Err(ArnError::Prefix));
    }

    #[test]
    fn role_arn_fields_and_round_trip() {
        let text = "arn:aws-cn:iam::111122223333:role/a/b/c+=,.@-_";
        let role = RoleArn::parse(text).unwrap();
        assert_eq!(role.partition(), Partition::AwsCn);
        assert_eq!(role.account().as_str(), ACCOUNT);
        assert_eq!(role.path(), "/a/b/");
        assert_eq!(role.name(), "c+=,.@-_");
        assert_eq!(role.to_string(), text);
        let plain = RoleArn::parse("arn:aws:iam::111122223333:role/sync").unwrap();
        assert_eq!((plain.path(), plain.name()), ("/", "sync"));
    }

    #[test]
    fn role_arn_rejects_each_broken_rule() {
        let a = ACCOUNT;
        for (arn, err) in [
            (format!("arn:aws:iam::{a}"), ArnError::Shape),
            (format!("urn:aws:iam::{a}:role/x"), ArnError::Prefix),
            (
                format!("arn:aws:sts::{a}:role/x"),
                ArnError::Service("sts".into()),
            ),
            (
                format!("arn:aws:iam:us-east-1:{a}:role/x"),
                ArnError::Region,
            ),
            ("arn:aws:iam::1111:role/x".to_owned(), ArnError::Account),
            ("arn:aws:iam::aws:role/x".to_owned(), ArnError::Account),
            (
                format!("arn:aws:iam::{a}:user/x"),
                ArnError::Resource("role/[PATH/]NAME"),
            ),
            (
                format!("arn:aws:iam::{a}:roles/x"),
                ArnError::Resource("role/[PATH/]NAME"),
            ),
            (
                format!("arn:aws:iam::{a}:role"),
                ArnError::Resource("role/[PATH/]NAME"),
            ),
        ] {
            assert_eq!(RoleArn::parse(&arn), Err(err), "{arn}");
        }
    }

    #[test]
    fn role_path_is_iams_pattern() {
        for path in [
            "/",
            "/a/",
            "/a/b/",
            "/a//b/",
            "/!~*?/",
            &format!("/{}/", "p".repeat(510)),
        ] {
            assert!(is_iam_path(path), "{path:?}");
        }
        for path in [
            "",
            "//",
            "a/",
            "/a",
            "/a b/",
            "/ä/",
            "/a\u{7f}/",
            &format!("/{}/", "p".repeat(511)),
        ] {
            assert!(!is_iam_path(path), "{path:?}");
        }
        // In an ARN: `role//x` would need the path `//`.
        assert_eq!(
            RoleArn::parse("arn:aws:iam::111122223333:role//x"),
            Err(ArnError::Path("role"))
        );
        let longest = format!("arn:aws:iam::111122223333:role/{}/x", "p".repeat(510));
        assert!(RoleArn::parse(&longest).is_ok());
        let too_long = format!("arn:aws:iam::111122223333:role/{}/x", "p".repeat(511));
        assert_eq!(RoleArn::parse(&too_long), Err(ArnError::Path("role")));
    }

    #[test]
    fn role_name_charset_and_length() {
        let arn = |name: &str| format!("arn:aws:iam::111122223333:role/{name}");
        assert!(RoleArn::parse(&arn(&"n".repeat(64))).is_ok());
        assert!(RoleArn::parse(&arn("Az09_+=,.@-")).is_ok());
        let too_long = ArnError::NameLength {
            kind: "role",
            max: 64,
        };
        assert_eq!(RoleArn::parse(&arn(&"n".repeat(65))), Err(too_long.clone()));
        assert_eq!(RoleArn::parse(&arn("")), Err(too_long.clone()));
        assert_eq!(RoleArn::parse(&arn("path/")), Err(too_long));
        for name in ["bad name", "a*", "a:b", "ä", "a#b"] {
            assert_eq!(
                RoleArn::parse(&arn(name)),
                Err(ArnError::NameCharacter {
                    kind: "role",
                    name: name.into()
                }),
                "{name}"
            );
        }
    }

    #[test]
    fn policy_arn_account_and_name() {
        for ok in [
            "arn:aws:iam::aws:policy/service-role/AmazonS3Thing",
            "arn:aws:iam::111122223333:policy/mine",
            "arn:aws-iso-b:iam::aws:policy/x",
        ] {
            assert_eq!(PolicyArn::parse(ok).unwrap(), ok);
        }
        let name = "n".repeat(128);
        assert!(PolicyArn::parse(&format!("arn:aws:iam::aws:policy/{name}")).is_ok());
        assert_eq!(
            PolicyArn::parse(&format!("arn:aws:iam::aws:policy/{name}n")),
            Err(ArnError::NameLength {
                kind: "policy",
                max: 128
            })
        );
        assert_eq!(
            PolicyArn::parse("arn:aws:iam::someone:policy/mine"),
            Err(ArnError::PolicyAccount)
        );
        assert_eq!(
            PolicyArn::parse("arn:aws:iam::aws:role/x"),
            Err(ArnError::Resource("policy/[PATH/]NAME"))
        );
    }

    #[test]
    fn external_id_length_and_charset() {
        assert_eq!(check_external_id("ab"), Ok(()));
        assert_eq!(check_external_id(&"a".repeat(1224)), Ok(()));
        assert_eq!(check_external_id("Az09_+=,.@:/-"), Ok(()));
        for (value, length) in [("", 0), ("a", 1), (&"a".repeat(1225) as &str, 1225)] {
            assert_eq!(
                check_external_id(value),
                Err(ExternalIdError::Length { length })
            );
        }
        for (value, position, blank) in [
            ("abc def", 4, true),
            ("new\n\n", 4, true),
            ("tab\there", 4, true),
            ("abc*", 4, false),
            ("\"quoted\"", 1, false),
            ("ümlaut", 1, false),
            ("a#b", 2, false),
        ] {
            assert_eq!(
                check_external_id(value),
                Err(ExternalIdError::Character { position, blank }),
                "{value:?}"
            );
        }
    }

    #[test]
    fn session_name_and_source_identity() {
        assert_eq!(check_role_session_name("ab"), Ok(()));
        assert_eq!(check_role_session_name(&"s".repeat(64)), Ok(()));
        assert_eq!(check_role_session_name("Az09_+=,.@-"), Ok(()));
        assert_eq!(
            check_role_session_name("a"),
            Err(SessionNameError::Length { length: 1 })
        );
        assert_eq!(
            check_role_session_name(&"s".repeat(65)),
            Err(SessionNameError::Length { length: 65 })
        );
        for bad in ["a b", "a:b", "a/b", "ä-x"] {
            assert_eq!(
                check_role_session_name(bad),
                Err(SessionNameError::Character),
                "{bad}"
            );
        }
        // STS reserves `aws:` for source identities; `:` is not a name character.
        assert_eq!(
            check_role_session_name("aws:x"),
            Err(SessionNameError::Character)
        );
    }

    #[test]
    fn validated_names_keep_their_text_and_word_their_reasons() {
        let session = SessionName::try_from("credvend-acme".to_owned()).unwrap();
        assert_eq!(
            (session.to_string(), &*session, format!("{session:?}")),
            (
                "credvend-acme".to_owned(),
                "credvend-acme",
                "\"credvend-acme\"".to_owned()
            )
        );
        assert_eq!(
            Region::try_from("eu-west-1".to_owned()).unwrap(),
            "eu-west-1"
        );
        for (reason, expected) in [
            (
                SessionName::try_from("a".to_owned()).unwrap_err(),
                "`a`: a session name must be 2–64 characters, not 1",
            ),
            (
                SourceIdentity::try_from("aws:x".to_owned()).unwrap_err(),
                "`aws:x`: a source identity may contain only letters, digits and _+=,.@-",
            ),
            (
                Region::try_from("moon-1".to_owned()).unwrap_err(),
                "`moon-1` is not an AWS region name like `us-east-1`",
            ),
        ] {
            assert_eq!(reason, expected);
        }
        for ok in ["us-east-1", "us-gov-west-1", "cn-north-1", "us-isob-east-1"] {
            assert!(Region::is_valid(ok), "{ok}");
        }
        for bad in [
            "us-east",
            "useast1",
            "us-east-1a",
            "x-east-1",
            "US-EAST-1",
            "",
        ] {
            assert!(!Region::is_valid(bad), "{bad}");
        }
        // Deserializing is `TryFrom<String>`: the error is the reason itself.
        let role: RoleArn = serde_json::from_str("\"arn:aws:iam::111122223333:role/r\"").unwrap();
        assert_eq!(role, "arn:aws:iam::111122223333:role/r");
        let err = serde_json::from_str::<PolicyArn>("\"arn:aws:iam::aws:role/x\"").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "`arn:aws:iam::aws:role/x` is not an IAM policy ARN \
                 (arn:aws:iam::aws:policy/NAME or arn:aws:iam::123456789012:policy/NAME): \
                 the resource must be `policy/[PATH/]NAME`"
            ),
            "{err}"
        );
    }
}
