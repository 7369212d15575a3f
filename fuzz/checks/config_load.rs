//! Config parsing and validation from an arbitrary file: the fuzz input is written as
//! the main TOML file and loaded with `Config::load`, exactly as `credvend serve` and
//! `check-config` do (includes, External ID files, validation, problem attribution).
//!
//! Checked on every input:
//! - nothing panics;
//! - a rejected config lists at least one problem, each naming a file and a non-empty
//!   reason; when the file is valid TOML, every problem attributed to the main file
//!   also names a key (only a file that cannot be parsed at all has no key to name);
//! - an accepted config satisfies the configuration invariants the rest of the daemon
//!   relies on (every mapping has a token, durations in range, lifetime arithmetic
//!   holds).
//!
//! Environment overrides are not fuzzed: the environment is process-wide and the
//! config tests cover them with figment's `Jail`.
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/config_load.rs`) and the seed replay
//! in the main crate's tests (`tests/fuzz_seeds.rs`), so a committed seed is checked in
//! CI exactly as the fuzzer checks it.

use std::path::Path;
use std::time::Duration;

use credvend::config::Config;

/// Writes `data` to `path` (the main config file; its directory is the input's to
/// name `include`s and External ID files in) and runs it through the checks; panics on
/// a violation. The file is 0600 whatever the umask: one that group or others could
/// write is refused whole, before any of its content is looked at.
pub fn check(path: &Path, data: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(data))
        .expect("write fuzz config");
    let parses_as_toml = std::str::from_utf8(data)
        .ok()
        .is_some_and(|text| text.parse::<toml::Table>().is_ok());
    let main = path.display().to_string();
    match Config::load(path) {
        Err(error) => {
            assert!(!error.problems.is_empty(), "an error without problems");
            for problem in &error.problems {
                assert!(
                    !problem.file.is_empty(),
                    "problem without a file: {problem:?}"
                );
                assert!(
                    !problem.reason.trim().is_empty(),
                    "problem without a reason: {problem:?}"
                );
                if parses_as_toml && problem.file == main {
                    assert!(
                        !problem.key.is_empty(),
                        "problem in a parseable file without a key: {problem:?}"
                    );
                }
            }
        }
        Ok(config) => {
            assert!(!config.server.listen.is_empty(), "no listen address");
            let refresh = &config.refresh;
            assert!(refresh.min_remaining < refresh.refresh_before);
            for mapping in config.mappings.values() {
                assert!(
                    !mapping.token_sha256.is_empty(),
                    "{} has no token",
                    mapping.name
                );
                assert!(
                    (Duration::from_secs(900)..=Duration::from_secs(43200))
                        .contains(&mapping.session_duration),
                    "{}: session_duration out of range",
                    mapping.name
                );
                assert!(
                    refresh.refresh_before < mapping.session_duration,
                    "{}: refresh_before >= session_duration",
                    mapping.name
                );
                assert!(
                    mapping.session_name.len() <= 64,
                    "{}: session name",
                    mapping.name
                );
            }
            // The summary is what `check-config` prints; it must render.
            let _ = config.summary();
        }
    }
}
