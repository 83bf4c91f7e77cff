//! The benchmarks run end to end at a tiny size, so they cannot rot. Their figures
//! are printed by `redrain bench …`, never asserted here.

use simulator::bench::{bench_ledger, bench_tokens, render, render_tokens};

#[test]
fn the_benchmarks_run_and_print_every_path() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = runtime
        .block_on(bench_ledger(50, dir.path()))
        .expect("ledger bench");
    assert_eq!(ledger.len(), 6);
    assert!(ledger.iter().all(|r| r.credits >= 50 && r.per_s() > 0.0));
    assert!(render(&ledger).contains("sqlite file (WAL, synchronous=NORMAL)"));
    let tokens = runtime
        .block_on(bench_tokens(50, dir.path()))
        .expect("token bench");
    let table = render_tokens(&tokens);
    for path in [
        "ed25519 sign",
        "ed25519 verify_strict",
        "token mode",
        "worker drain",
        "wallet.issue sync",
    ] {
        assert!(table.contains(path), "{path} missing:\n{table}");
    }
}
