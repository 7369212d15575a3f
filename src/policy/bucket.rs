//! S3 bucket names and key prefixes, checked before they go into a policy.

use std::fmt;

use super::PolicyError;

/// Maximum S3 object key length in bytes; a prefix longer than this can match nothing.
const S3_MAX_KEY_BYTES: usize = 1024;

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

/// Suffixes S3 reserves for other bucket-shaped resources (S3 "General purpose bucket
/// naming rules").
pub(super) const RESERVED_BUCKET_SUFFIXES: [&str; 5] =
    ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"];

/// Prefixes S3 reserves (same source).
pub(super) const RESERVED_BUCKET_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];

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
