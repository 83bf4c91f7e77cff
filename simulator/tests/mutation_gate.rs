//! The test command of `ci/mutants.sh`: what a wallet team's CI would run on a
//! changed wallet — `conform` against the reference server (every case, fault
//! cases included; no `--reference`, since a mutant of the reference would sit on
//! both sides) and the quick invariant suite. A mutant of the reference's business
//! modules survives only if both stay green.

mod common;

use common::{ADMIN_TOKEN, load, runtime, workspace_dir};
use simulator::live::conform::{ConformOptions, conform, render};
use simulator::live::serve::{Local, ServeOptions, build};
use simulator::scenario::StoreUrls;
use simulator::suite::{Suite, SuiteOptions, run_suite};

#[test]
fn conform_and_the_quick_suite_pass_on_the_reference() {
    let scenario = load("conform/conform.toml");
    let report = runtime().block_on(async {
        let built = build(
            &scenario,
            &ServeOptions {
                listen: "127.0.0.1:0".parse().expect("an address"),
                admin_token: ADMIN_TOKEN.to_owned(),
                stores: StoreUrls {
                    ledger: "memory".to_owned(),
                    kv: "memory".to_owned(),
                },
                kv_prefix: String::new(),
                rate_scale: 1.0,
                seed: None,
            },
        )
        .await
        .expect("the reference builds");
        let server = Local::start(built.server).await.expect("the server starts");
        let report = conform(
            &scenario,
            &ConformOptions {
                target: server.url.clone(),
                admin_token: ADMIN_TOKEN.to_owned(),
                reference: false,
                only: None,
                drain_ms_max: 20_000,
                process: Default::default(),
            },
        )
        .await
        .expect("conform runs");
        drop(server);
        report
    });
    // Everything runs but the process kill: this server lives in the test's
    // own process (restart_midway restarts its background work instead).
    let skipped: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| c.skipped.is_some())
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        report.passed && skipped == ["process_kill_restart"],
        "{}",
        render(&report)
    );

    let dir = tempfile::tempdir().expect("a temporary directory");
    let suite = Suite::load(&workspace_dir().join("ci/quick.toml")).expect("ci/quick.toml");
    let suite_report = run_suite(
        &suite,
        &SuiteOptions {
            out_dir: Some(dir.path().join("quick")),
            ..SuiteOptions::default()
        },
    )
    .expect("the quick suite runs");
    assert_eq!(
        suite_report.exit_code(),
        0,
        "{}",
        suite_report.render_summary()
    );
}
