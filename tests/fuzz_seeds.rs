//! Replays every committed fuzz seed (`fuzz/seeds/<target>/*`) through the checks its
//! cargo-fuzz target runs, without a fuzzing engine, so a crash or contract violation
//! that was fixed stays fixed (e.g. `regress-http10-response`).
//!
//! The checks live in `fuzz/checks/<target>.rs`. The fuzz targets in
//! `fuzz/fuzz_targets/` are one-line wrappers that include the same file, and so does
//! this test: a seed goes through exactly the code the fuzzer runs, here under
//! `cargo test`. Every seed is run even after one fails; the failure names each failing
//! seed file with its panic message. A target whose seed directory is missing or empty,
//! a seed directory without a target, or a target that no longer calls its shared
//! checks fails the test rather than passing with nothing replayed.

mod support;

#[path = "../fuzz/checks/access_checks.rs"]
mod access_checks;
#[path = "../fuzz/checks/config_load.rs"]
mod config_load;
#[path = "../fuzz/checks/http_request.rs"]
mod http_request;

use std::any::Any;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use support::e2e::{TempDir, repo_root};

/// Every fuzz target, each with a test below.
const TARGETS: [&str; 3] = ["access_checks", "config_load", "http_request"];

#[test]
fn access_checks_seeds_pass_the_fuzz_checks() {
    replay("access_checks", |_, data| access_checks::check(data));
}

#[test]
fn config_load_seeds_pass_the_fuzz_checks() {
    replay("config_load", |_, data| {
        // A directory of its own per seed: a seed's `include` globs and External ID
        // paths resolve next to the main file, as in the fuzz target.
        let dir = TempDir::new("fuzz-seed-config");
        config_load::check(&dir.path().join("credvend.toml"), data);
    });
}

/// What the credential handler answers to each HTTP seed, in order. Beyond the fuzz
/// checks (which accept any documented answer, or none), this pins that each seed
/// reaches the handler as intended: a harness that drops responses before they are
/// checked, or a seed that stops exercising its case, fails here.
const HTTP_SEED_STATUSES: &[(&str, &[u16])] = &[
    // Absolute-form target, `Transfer-Encoding: chunked` with an empty body.
    ("absolute_uri_chunked", &[400]),
    ("bad_host", &[403]),
    ("get_ok", &[200]),
    // Half a request head, then EOF: nothing to answer.
    ("half", &[]),
    // An absolute-form target naming us, and a `Host` that is not UTF-8: the Host is
    // what is checked (refused), not the target.
    ("host_not_utf8", &[403]),
    ("http10", &[200]),
    // Wrong token on a configured Host with trailing dot; unknown mapping without a
    // token; a path that is not a credentials path.
    ("mixed", &[403, 401, 404]),
    ("pipelined_head", &[200, 200]),
    ("post_body", &[400]),
    ("proxied", &[403]),
    // Valid Host and token, each with one more proxy header: Via, X-Forwarded-Host,
    // X-Forwarded-Proto.
    ("proxied_via_forwarded_host_proto", &[403, 403, 403]),
    // HTTP/1.0 request, mangled Authorization: answered in HTTP/1.0.
    ("regress-http10-response", &[403]),
    // Not HTTP: hyper answers 400 itself; the handler never runs.
    ("tls_hello", &[]),
];

#[test]
fn http_request_seeds_pass_the_fuzz_checks() {
    let answered = std::sync::Mutex::new(Vec::new());
    replay("http_request", |name, data| {
        let statuses = http_request::check(data);
        answered.lock().unwrap().push((name.to_owned(), statuses));
    });
    let answered = answered.into_inner().unwrap();
    let expected: Vec<(String, Vec<u16>)> = HTTP_SEED_STATUSES
        .iter()
        .map(|(name, statuses)| ((*name).to_owned(), statuses.to_vec()))
        .collect();
    assert_eq!(
        answered, expected,
        "handler statuses per seed (left: this run, right: HTTP_SEED_STATUSES); a new \
         seed needs an entry"
    );
}

/// The replay covers the fuzz crate: one seed directory per fuzz target, a test above
/// for each, and each target runs the shared checks rather than a copy of them.
#[test]
fn every_fuzz_target_and_seed_directory_is_replayed() {
    let fuzz = repo_root().join("fuzz");
    let targets = file_names(&fuzz.join("fuzz_targets"))
        .into_iter()
        .map(|name| {
            name.strip_suffix(".rs")
                .unwrap_or_else(|| panic!("fuzz/fuzz_targets/{name} is not a .rs file"))
                .to_owned()
        })
        .collect::<Vec<_>>();
    assert_eq!(
        targets, TARGETS,
        "fuzz/fuzz_targets/ and the targets tests/fuzz_seeds.rs replays differ: add a test \
         and a TARGETS entry for a new target"
    );
    assert_eq!(
        file_names(&fuzz.join("seeds")),
        TARGETS,
        "fuzz/seeds/ must hold exactly one directory per fuzz target"
    );
    for target in TARGETS {
        let path = fuzz.join("fuzz_targets").join(format!("{target}.rs"));
        let source =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let include = format!("#[path = \"../checks/{target}.rs\"]");
        assert!(
            source.contains(&include) && source.contains("checks::check("),
            "{} must run the checks shared with this test ({include} mod checks; \
             ... checks::check(..)), or the seeds replayed here are not checked the way \
             the fuzzer checks them",
            path.display()
        );
    }
}

/// Runs `check(name, bytes)` on every file in `fuzz/seeds/<target>`, in name order, and
/// fails naming each seed whose check panicked.
fn replay(target: &str, check: impl Fn(&str, &[u8])) {
    let dir = repo_root().join("fuzz/seeds").join(target);
    let names = file_names(&dir);
    assert!(
        !names.is_empty(),
        "{} holds no seeds: every fuzz target keeps at least one committed seed",
        dir.display()
    );
    let mut failures = Vec::new();
    for name in &names {
        let seed = dir.join(name);
        assert!(
            seed.is_file(),
            "{} is not a file: seed directories are flat",
            seed.display()
        );
        let data = fs::read(&seed).unwrap_or_else(|e| panic!("read {}: {e}", seed.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(name, &data))) {
            failures.push(format!(
                "fuzz/seeds/{target}/{name}: {}",
                panic_message(&*panic)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds fail the {target} fuzz checks (fuzz/checks/{target}.rs):\n  {}",
        failures.len(),
        names.len(),
        failures.join("\n  ")
    );
    println!(
        "{target}: {} seeds replayed: {}",
        names.len(),
        names.join(", ")
    );
}

/// Entry names in `dir`, sorted; panics when it cannot be read.
fn file_names(dir: &Path) -> Vec<String> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|entry| {
            let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
            entry.file_name().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    names
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(panic without a message)".to_owned())
}
