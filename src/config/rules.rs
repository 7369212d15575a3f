//! Format rules for single values that have no type of their own (External IDs, mapping
//! names, URLs, token hashes…), as pure functions.
//!
//! Each returns `Err(reason)` with a sentence an operator can act on. The other AWS
//! names (ARNs, session names, source identities, regions) are types in
//! [`crate::aws_names`] that the raw config decodes into, worded there. The External ID
//! takes its rule from there too (the one STS enforces); this module words the reason,
//! which never includes the value.

use std::net::Ipv6Addr;

use crate::aws_names::{
    EXTERNAL_ID_MAX_LEN, EXTERNAL_ID_MIN_LEN, ExternalIdError, check_external_id,
};
use crate::secret::TokenHash;

/// Words that mark a value as a placeholder to be replaced, compared case-insensitively
/// with `-`, `_` and `.` left out (`replace-me`, `REPLACE_ME`, `change.me` …). A hex
/// hash cannot contain one (each has a letter beyond `f`); a generated External ID (40
/// random alphanumerics) does by a chance of about one in a billion.
const PLACEHOLDER_WORDS: &[&str] = &["replaceme", "changeme", "placeholder", "example"];

/// External IDs shorter than this get a warning. credvend generates 40 characters;
/// the vendor guide asks for at least 32 (a UUID has 36).
pub(super) const STRONG_EXTERNAL_ID_LEN: usize = 32;
/// External IDs with fewer different characters than this get a warning (a generated
/// one has about 30; a UUID about 16; `aaaa…` or `1234512345…` far fewer).
pub(super) const STRONG_EXTERNAL_ID_DISTINCT: usize = 10;

/// The placeholder word `value` contains, if any ([`PLACEHOLDER_WORDS`]).
pub(super) fn placeholder_word(value: &str) -> Option<&'static str> {
    let folded: String = value
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    PLACEHOLDER_WORDS
        .iter()
        .copied()
        .find(|word| folded.contains(word))
}

/// Refuses a placeholder External ID. The reason names the placeholder word, never
/// the value.
pub(super) fn external_id_placeholder(value: &str) -> Result<(), String> {
    match placeholder_word(value) {
        Some(word) => Err(format!(
            "a placeholder, not an External ID (it contains \"{word}\"): generate one \
             with `credvend external-id new` (or write the whole mapping with `credvend \
             mapping new`) and give it to the customer for their trust policy"
        )),
        None => Ok(()),
    }
}

/// Why an External ID that STS would accept is still weak, if it is: shorter than
/// [`STRONG_EXTERNAL_ID_LEN`] or with fewer than [`STRONG_EXTERNAL_ID_DISTINCT`]
/// different characters. A warning, not a refusal: an ID a customer's trust policy
/// already holds cannot be changed on credvend's side alone. The reason never shows
/// the value.
pub(super) fn external_id_weakness(value: &str) -> Option<String> {
    let length = value.chars().count();
    let mut distinct: Vec<char> = value.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let why = if length < STRONG_EXTERNAL_ID_LEN {
        format!("it has {length} characters, fewer than {STRONG_EXTERNAL_ID_LEN}")
    } else if distinct.len() < STRONG_EXTERNAL_ID_DISTINCT {
        format!(
            "it uses only {} different characters (low entropy)",
            distinct.len()
        )
    } else {
        return None;
    };
    Some(format!(
        "weak External ID: {why}; another customer who guesses it could point you at \
         this customer's role (confused deputy). credvend generates 40 random characters \
         (`credvend external-id new`); agree a new one with the customer (value not shown)"
    ))
}

/// The External ID rules of [`check_external_id`]. The reason never shows the value.
pub(super) fn external_id(value: &str) -> Result<(), String> {
    check_external_id(value).map_err(|err| match err {
        ExternalIdError::Length { length } => format!(
            "an External ID must be {EXTERNAL_ID_MIN_LEN}–{EXTERNAL_ID_MAX_LEN} characters; \
             this one has {length} (value not shown)"
        ),
        ExternalIdError::Character { position, blank } => format!(
            "an External ID may contain only A-Z a-z 0-9 and +=,.@:/_-; character \
             {position} is not allowed{} (value not shown)",
            if blank {
                " (whitespace or a control character: a second trailing newline?)"
            } else {
                ""
            }
        ),
    })
}

/// Mapping names appear in URL paths and metric labels: `[A-Za-z0-9_.-]`, 1–64.
pub(super) fn mapping_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a mapping name must be 1–64 characters".to_owned());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(
            "a mapping name may contain only A-Z a-z 0-9 _ . - (it appears in URL paths and \
             metric labels)"
                .to_owned(),
        );
    }
    Ok(())
}

/// `http://` or `https://` followed by a host, optionally a port and a path.
pub(super) fn endpoint_url(value: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{value}` is not an http(s) URL: {why}"));
    let Some(rest) = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
    else {
        return bad("it must start with http:// or https://");
    };
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return bad("credentials in the URL are not supported");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return bad("unterminated IPv6 address");
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return bad("invalid IPv6 address");
        }
        (addr, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("it has no host");
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return bad("the port must be a number from 0 to 65535");
    }
    Ok(())
}

/// SHA-256 of the empty token: a request with an empty `Authorization` header would
/// match it.
const EMPTY_TOKEN_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// 64 hex digits that can be the SHA-256 of a real token: not a placeholder word, not
/// the hash of the empty token, and not a short pattern repeated (`000…0`,
/// `deadbeef` × 8, `0123456789abcdef` × 4: a period of at most 16 digits, which a
/// SHA-256 output has by a chance of about 2⁻¹⁹²).
pub(super) fn token_hash(value: &str) -> Result<TokenHash, String> {
    const WHERE: &str = "`credvend token new` prints a token and its hash";
    if let Some(word) = placeholder_word(value) {
        return Err(format!(
            "a placeholder, not a token hash (it contains \"{word}\"): {WHERE}"
        ));
    }
    let hash = parse_token_hash(value)?;
    let lower = value.to_ascii_lowercase();
    if lower == EMPTY_TOKEN_SHA256 {
        return Err(format!(
            "the SHA-256 of the empty token: any request with an empty Authorization \
             header would match it; {WHERE}"
        ));
    }
    if let Some(period) = (1..=16).find(|&p| {
        lower.as_bytes()[p..]
            .iter()
            .zip(lower.as_bytes())
            .all(|(a, b)| a == b)
    }) {
        return Err(format!(
            "a placeholder, not the SHA-256 of a token (it repeats a pattern of \
             {period} hex digit{}); {WHERE}",
            if period == 1 { "" } else { "s" }
        ));
    }
    Ok(hash)
}

/// 64 hex digits.
fn parse_token_hash(value: &str) -> Result<TokenHash, String> {
    TokenHash::from_hex(value).ok_or_else(|| {
        format!(
            "a token hash must be exactly 64 hex digits (the SHA-256 of the token), \
             found {} characters{}",
            value.chars().count(),
            if value.len() == 64 {
                " with a non-hex digit"
            } else {
                ""
            }
        )
    })
}

/// JSON object, at most 2048 characters (STS's limit on the inline session policy).
pub(super) fn session_policy(value: &str) -> Result<(), String> {
    let len = value.chars().count();
    if len > 2048 {
        return Err(format!(
            "a session policy may be at most 2048 characters, this one has {len}"
        ));
    }
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err("a session policy must be a JSON object".to_owned()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// A tracing `EnvFilter` directive string (`info`, `credvend=debug,hyper=warn`).
pub(super) fn log_level(value: &str) -> Result<(), String> {
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(value) {
        return Err(format!("`{value}` is not a tracing filter directive: {e}"));
    }
    // EnvFilter accepts a bare word as a *target*, which enables that target only and
    // silences everything else: `level = "information"` would turn logging off.
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', ':']);
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}` is not a level; use trace, debug, info, warn, error or off, \
                 or TARGET=LEVEL (e.g. `credvend=debug`)"
            ));
        }
    }
    Ok(())
}

/// An extra `Host` header value: a host name or IP, without port or scheme.
pub(super) fn allowed_host(value: &str) -> Result<(), String> {
    if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(drop)
            .map_err(|_| format!("`{value}` is not a bracketed IPv6 address"));
    }
    if value.is_empty()
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
    {
        return Err(format!(
            "`{value}` is not a host name; give the host only, without scheme or port \
             (e.g. `credvend.internal`)"
        ));
    }
    Ok(())
}
