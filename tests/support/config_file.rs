//! Config files for tests that run the `credvend` binary: the sections most of them
//! share, as TOML text to put together with the sections a test is about.
#![allow(dead_code)]

use credvend::secret::TokenHash;

/// `[server]` listening on 127.0.0.1: credentials on `port`, admin on `admin`.
pub fn loopback_server_toml(port: u16, admin: u16) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
admin_listen = "127.0.0.1:{admin}"
"#
    )
}

/// `[sts]` with the primary region's (us-east-1) endpoint URL, and mapping `acme-s3` → role
/// `arn:aws:iam::111122223333:role/vendor-sync` with `external_id`, for `token` only.
pub fn sts_and_acme_toml(endpoint_url: &str, external_id: &str, token: &str) -> String {
    format!(
        r#"
[sts]
endpoint_urls = {{ us-east-1 = "{endpoint_url}" }}

[mappings.acme-s3]
role_arn = "arn:aws:iam::111122223333:role/vendor-sync"
external_id = "{external_id}"
token_sha256 = ["{hash}"]
"#,
        hash = TokenHash::of_token(token.as_bytes()).to_hex()
    )
}
