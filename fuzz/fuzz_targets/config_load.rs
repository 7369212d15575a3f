//! libFuzzer entry point; the input handling and every check are in
//! `fuzz/checks/config_load.rs`, which `tests/fuzz_seeds.rs` also runs on the committed
//! seeds. Each input is written to `$TMPDIR/credvend-fuzz-config-<pid>/credvend.toml`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

#[path = "../checks/config_load.rs"]
mod checks;

fn main_file() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("credvend-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create fuzz temp dir");
        dir.join("credvend.toml")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(main_file(), data));
