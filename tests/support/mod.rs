//! Shared helpers for integration tests. Each test file declares `mod support;` and uses
//! what it needs; unused items in a given test binary are expected, hence the
//! `dead_code` allowances inside the modules.

pub mod config_file;
pub mod control;
pub mod daemon;
pub mod e2e;
pub mod fake_sts;
pub mod http;
