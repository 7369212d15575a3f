//! The request-path checks on their own, without HTTP framing in the way: `Host`
//! matching (`AccessTable::host_allowed`) and token authorisation
//! (`AccessTable::authorize`) on arbitrary strings and bytes.
//!
//! Input layout: `[selector byte][host bytes] 0xFF [requested name] 0xFF [token bytes]`.
//! Checked: nothing panics; a request is authorised only with a token configured for
//! the mapping it gets; an unknown mapping and a wrong token fail alike (`Denied`);
//! the `Host` check accepts only loopback names, listen/local addresses and the
//! configured allowed host, whatever the port, case or trailing dot.
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/access_checks.rs`) and the seed replay
//! in the main crate's tests (`tests/fuzz_seeds.rs`), so a committed seed is checked in
//! CI exactly as the fuzzer checks it.

use std::net::SocketAddr;
use std::sync::OnceLock;

use credvend::server::access::{AccessTable, AuthFailure};

const TOKENS: [(&str, &str); 2] = [("acme-s3", "tok-acme"), ("beta", "tok-beta")];

fn table() -> &'static AccessTable {
    static TABLE: OnceLock<AccessTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut config = credvend::testing::config(
            "http://127.0.0.1:9",
            TOKENS
                .iter()
                .map(|(name, token)| credvend::testing::mapping(name, name, None, token))
                .collect(),
        );
        config.server.allowed_hosts = vec!["credvend.internal".to_owned()];
        AccessTable::new(&config)
    })
}

/// Runs one input through the checks; panics on a violation.
pub fn check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == 0xFF);
    let host = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let requested = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let token = parts.next();
    let table = table();

    let local = SocketAddr::from(([127, 0, 0, 1], 8901));
    let allowed = table.host_allowed(&host, local);
    if allowed {
        // Strip one `:port`, brackets, one trailing dot, case: what remains must be ours.
        let lower = host.to_ascii_lowercase();
        let name = match lower.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => lower.as_str(),
        };
        let name = name.trim_start_matches('[');
        let name = name.split(']').next().unwrap_or(name).trim_end_matches('.');
        assert!(
            ["localhost", "127.0.0.1", "::1", "credvend.internal"].contains(&name),
            "Host {host:?} accepted as {name:?}"
        );
    }

    let requested = (selector & 1 == 1).then_some(requested.as_ref());
    match table.authorize(requested, token) {
        Ok(mapping) => {
            let token = token.expect("authorised without a token");
            let (_, expected) = TOKENS
                .iter()
                .find(|(name, _)| *name == mapping)
                .expect("authorised for a mapping that does not exist");
            assert_eq!(token, expected.as_bytes(), "wrong token accepted");
            if let Some(requested) = requested {
                assert_eq!(requested, mapping);
            }
        }
        Err(AuthFailure::MissingToken) => assert!(token.is_none()),
        Err(AuthFailure::UnknownMapping) => {
            let requested = requested.expect("an unknown mapping, but none was requested");
            assert!(
                token.is_some(),
                "an unknown mapping reported before the token check"
            );
            assert!(
                !TOKENS.iter().any(|(name, _)| *name == requested),
                "configured mapping {requested:?} reported unknown"
            );
        }
        Err(AuthFailure::Denied) => {
            assert!(
                requested.is_none_or(|r| TOKENS.iter().any(|(name, _)| *name == r)),
                "an unknown mapping reported as a wrong token"
            );
            if let Some(token) = token {
                let valid = TOKENS
                    .iter()
                    .any(|(name, t)| t.as_bytes() == token && requested.is_none_or(|r| r == *name));
                assert!(!valid, "a valid token was denied");
            }
        }
    }
}
