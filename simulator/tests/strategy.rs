//! Crediting strategies side by side on the red-packet rain (seed 000): sync
//! crediting needs over a thousand DB instances at the 1.8M peak, plain async
//! crediting lags for minutes, and the token scheme hides the lag.

mod common;

use common::{runtime, scenarios_dir};

use simulator::options::RunOptions;
use simulator::plan::strategy::{
    Strategy, StrategyRow, compare_strategies, render_strategy_markdown, render_strategy_table,
};
use simulator::scenario::Scenario;

#[test]
fn rain_table_shows_sync_cost_async_lag_and_the_token_scheme_hiding_it() {
    let scenario = Scenario::load(&scenarios_dir().join("red-packet-rain.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let options = RunOptions {
        sample_rate: Some(0.0002),
        ..RunOptions::default()
    };
    let table = runtime()
        .block_on(compare_strategies(&scenario, &options))
        .expect("strategies run");
    let text = render_strategy_table(&table);
    println!("{text}");
    assert!(
        table
            .sync_record
            .reproduce
            .starts_with("redrain strategies "),
        "the sync copy is reproduced by the strategies command: {}",
        table.sync_record.reproduce
    );
    assert!(
        table.queued_record.reproduce.starts_with("redrain run "),
        "{}",
        table.queued_record.reproduce
    );
    println!("{}", render_strategy_markdown(&table));
    let row = |strategy: Strategy| -> &StrategyRow {
        table
            .rows
            .iter()
            .find(|r| r.strategy == strategy)
            .expect("a row per strategy")
    };
    let (sync, plain, token) = (
        row(Strategy::Sync),
        row(Strategy::PlainAsync),
        row(Strategy::Token),
    );

    assert!(
        sync.db_instances_needed.is_some_and(|n| n >= 1152),
        "sync needs {:?} DB instances for {:.0}/s",
        sync.db_instances_needed,
        sync.db_instances_for_tps
    );
    assert!(
        sync.db_instances_for_tps >= 1_800_000.0,
        "{}",
        sync.db_instances_for_tps
    );
    assert!(
        sync.refused_by_capacity > 0,
        "152 instances cannot credit the rain"
    );
    assert_eq!(sync.backlog_peak, 0, "sync crediting leaves nothing behind");
    assert_eq!(sync.visible_lag_max_ms, Some(0));

    assert_eq!(
        plain.db_instances_needed,
        Some(152),
        "300k TPS of crediting"
    );
    let p99 = plain.visible_lag_p99_ms.expect("credit delays measured");
    assert!(p99 >= 60_000, "plain async p99 lag {p99} ms");
    assert!(plain.pages_short > 0, "plain async would show pages short");
    assert!(plain.backlog_peak > 0);

    assert_eq!(token.pages_short, 0, "the token scheme shows every award");
    assert_eq!(token.visible_lag_max_ms, Some(0));
    assert!(token.backlog_peak > 0);
    assert_eq!(
        token.backlog_peak, plain.backlog_peak,
        "one run serves both"
    );
    assert!(token.drain_s > 0.0);

    for row in &table.rows {
        assert!(row.invariants_passed, "{:?}", row.strategy);
        assert!(row.kv_peak_per_s > 0 && row.db_peak_per_s > 0, "{row:?}");
    }
    assert!(text.contains("sample 0.0002 (×5000)"), "{text}");
    assert!(text.contains("×5000 for the full population"), "{text}");
}
