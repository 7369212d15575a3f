//! libFuzzer entry point; the input handling and every check are in
//! `fuzz/checks/access_checks.rs`, which `tests/fuzz_seeds.rs` also runs on the committed
//! seeds.
#![no_main]

#[path = "../checks/access_checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
