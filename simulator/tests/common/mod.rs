//! What the simulator's integration tests share: where the scenarios are, a
//! scenario loaded by name, the single-thread runtime simulated runs use, the
//! `redrain` binary run as a user runs it, the admin token of in-process servers,
//! and the planted broken stores (`broken`). Each test file takes `mod common;`
//! and uses the part it needs.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod broken;

use std::path::{Path, PathBuf};
use std::process::Command;

use simulator::scenario::Scenario;

/// The admin bearer token of the servers tests start in-process.
pub const ADMIN_TOKEN: &str = "simulator-test-admin-token";

/// The workspace's root folder.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `scenarios/` folder.
pub fn scenarios_dir() -> PathBuf {
    workspace_dir().join("scenarios")
}

/// `scenarios/<name>`, loaded (a failure names file, line and key).
pub fn load(name: &str) -> Scenario {
    Scenario::load(&scenarios_dir().join(name)).unwrap_or_else(|e| panic!("{e}"))
}

/// The current-thread runtime simulated runs use (as `redrain run` does: time
/// and IO drivers both, so real servers can be reached too).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `redrain ARGS` with `CI=true`, from the simulator's folder (as cargo runs
/// tests): exit code, stdout, stderr.
pub fn redrain(args: &[&str]) -> (i32, String, String) {
    redrain_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

/// `redrain ARGS` with `CI=true`, from the workspace root (as a user types the
/// README's commands): exit code, stdout, stderr.
pub fn redrain_at_root(args: &[&str]) -> (i32, String, String) {
    redrain_in(&workspace_dir(), args)
}

fn redrain_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_redrain"))
        .args(args)
        .current_dir(dir)
        .env("CI", "true")
        .output()
        .expect("redrain runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
