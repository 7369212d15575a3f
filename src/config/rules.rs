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

/// 64 hex digits.
pub(super) fn token_hash(value: &str) -> Result<TokenHash, String> {
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
