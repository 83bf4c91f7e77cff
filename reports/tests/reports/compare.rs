//! Key figures, comparison of two runs, and thresholds.

use std::collections::BTreeMap;

use reports::{KEY_FIGURES, ThresholdOutcome, compare, key_figures, parse_threshold};

use crate::fixture;

#[test]
fn key_figure_names_are_unique_and_snake_case() {
    let mut seen = std::collections::BTreeSet::new();
    for figure in KEY_FIGURES {
        assert!(seen.insert(figure.name), "{} twice", figure.name);
        assert!(
            figure
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{}",
            figure.name
        );
        assert!(
            !figure.meaning.is_empty() && !figure.present_when.is_empty(),
            "{}",
            figure.name
        );
    }
}

#[test]
fn the_fixture_has_every_key_figure_with_the_right_values() {
    let record = fixture::record();
    let figures = key_figures(&record);
    let names: Vec<&str> = KEY_FIGURES.iter().map(|f| f.name).collect();
    assert_eq!(
        figures
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        names.iter().copied().collect()
    );
    let rejected: u64 = record.series.iter().flat_map(|s| s.rejected.values()).sum();
    let check =
        |name: &str, expected: f64| assert_eq!(figures.get(name), Some(&expected), "{name}");
    check("requests", record.scenario.requests as f64);
    check("duration_s", 240.0);
    check("credit_delay_ms_p50", 20_000.0);
    check("credit_delay_ms_p99", 66_000.0);
    check("credit_delay_ms_p999", 85_000.0);
    check("credit_delay_ms_max", 106_500.0);
    check("drain_s", 14.0);
    check("coupon_credit_delay_ms_p99", 2_400.0);
    check("rejected", rejected as f64);
    check("views_short", 0.0);
    check("plain_async_views_short", 3_100.0);
    check("sync_db_instances_needed", 9.0);
    check("capacity_refused", 4_000.0);
    check("violations", 2.0);
    check("invariants_failed", 1.0);
    check("wall_elapsed_ms", 8_400.0);
}

#[test]
fn absent_parts_lack_their_figures() {
    let figures = key_figures(&fixture::bare_record());
    for absent in [
        "credit_delay_ms_p99",
        "coupon_credit_delay_ms_p99",
        "backlog_peak",
        "drain_s",
        "counter_error_pct",
        "views_short",
        "sync_db_instances_needed",
        "capacity_refused",
    ] {
        assert!(!figures.contains_key(absent), "{absent} present");
    }
    for present in [
        "requests",
        "awarded",
        "kv_calls",
        "violations",
        "wall_requests_per_s",
    ] {
        assert!(figures.contains_key(present), "{present} absent");
    }
}

#[test]
fn compare_computes_deltas_b_minus_a() {
    let (a, b) = (fixture::record(), fixture::slower_record());
    let cmp = compare(&a, &b);
    let row = |name: &str| match cmp.row(name) {
        Some(row) => *row,
        None => panic!("no row {name}"),
    };
    let p99 = row("credit_delay_ms_p99");
    assert_eq!((p99.a, p99.b), (Some(66_000.0), Some(72_600.0)));
    assert_eq!(p99.delta(), Some(6_600.0));
    assert_eq!(p99.delta_pct(), Some(10.0));
    assert_eq!(row("drain_s").delta(), Some(4.0));
    assert_eq!(row("requests").delta_pct(), Some(0.0));
    assert_eq!(cmp.label_a(), "A: spring-ramp/42");
    assert_eq!(cmp.label_b(), "B: spring-ramp/43");

    let bare = fixture::bare_record();
    let cmp = compare(&bare, &a);
    let p99 = *cmp.row("credit_delay_ms_p99").expect("B has it");
    assert_eq!((p99.a, p99.delta(), p99.delta_pct()), (None, None, None));
    let kv = *cmp.row("kv_calls").expect("both have it");
    assert_eq!(kv.a, Some(0.0));
    assert_eq!(
        kv.delta_pct(),
        Some(f64::INFINITY),
        "0 → n is an infinite regression"
    );
}

#[test]
fn comparison_text_is_one_screen() {
    let (a, b) = (fixture::record(), fixture::slower_record());
    let text = reports::render_comparison_text(&compare(&a, &b));
    assert!(
        text.starts_with("redrain compare · A: spring-ramp/42 vs B: spring-ramp/43"),
        "{text}"
    );
    assert!(text.contains("Δ (B − A)"), "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("credit_delay_ms_p99 "))
        .expect("a p99 line");
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells,
        ["credit_delay_ms_p99", "66000", "72600", "+6600", "+10.0%"],
        "{line}"
    );
    // One screen: the fixture is a live record, nine figures more than a simulated one.
    assert!(text.lines().count() <= 60, "{} lines", text.lines().count());
    assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
}

#[test]
fn comparison_html_overlays_both_runs() {
    let (a, b) = (fixture::record(), fixture::slower_record());
    let page = reports::render_comparison_html(&compare(&a, &b));
    let at = |needle: &str| {
        page.find(needle)
            .unwrap_or_else(|| panic!("`{needle}` missing"))
    };
    assert!(
        at("id=\"figures\"") < at("id=\"charts\""),
        "table after the charts"
    );
    for id in [
        "throughput",
        "backlog",
        "credit-delay-p99",
        "kv-ops",
        "db-ops",
    ] {
        assert!(
            page.contains(&format!("<figure id=\"chart-{id}\">")),
            "no overlay {id}"
        );
    }
    assert!(page.contains("A: spring-ramp/42 · awarded/s"), "A legend");
    assert!(page.contains("B: spring-ramp/43 · awarded/s"), "B legend");
    assert!(page.contains("<td class=\"num\">+10.0%</td>"), "delta cell");
}

// --- thresholds -------------------------------------------------------------

/// `text` parses and prints back as `canonical`.
fn parses(text: &str, canonical: &str) {
    match parse_threshold(text) {
        Ok(threshold) => assert_eq!(threshold.to_string(), canonical, "{text}"),
        Err(error) => panic!("{text}: {error}"),
    }
}

/// `text` is refused with a message containing every one of `parts`.
fn refused(text: &str, parts: &[&str]) {
    match parse_threshold(text) {
        Ok(threshold) => panic!("{text}: parsed as {threshold}"),
        Err(error) => {
            let message = error.to_string();
            for part in parts {
                assert!(message.contains(part), "{text}: `{part}` not in: {message}");
            }
        }
    }
}

#[test]
fn thresholds_parse() {
    parses("credit_delay_ms_p99 > 500", "credit_delay_ms_p99 > 500");
    parses("  credit_delay_ms_p99>500  ", "credit_delay_ms_p99 > 500");
    parses("drain_s >= 30.5", "drain_s >= 30.5");
    parses("violations != 0", "violations != 0");
    parses("violations == 0", "violations == 0");
    parses("kv_peak_per_s < 1e6", "kv_peak_per_s < 1000000");
    parses("kv_calls <= 1_000_000", "kv_calls <= 1000000");
    parses("counter_error_pct < -1", "counter_error_pct < -1");
    parses(
        "delta.credit_delay_ms_p99 > 100",
        "delta.credit_delay_ms_p99 > 100",
    );
    parses(
        "delta_pct.credit_delay_ms_p99 > 10",
        "delta_pct.credit_delay_ms_p99 > 10",
    );
}

#[test]
fn bad_thresholds_say_what_where_and_why() {
    refused("", &["empty threshold", "<metric> <op> <number>"]);
    refused("   ", &["empty threshold"]);
    refused(
        "> 500",
        &["expected a metric name at column 1", "found `>`"],
    );
    refused(
        "credit_delay_p99 > 500",
        &[
            "unknown metric `credit_delay_p99` at column 1",
            "valid metrics: requests, duration_s",
            "credit_delay_ms_p99",
            "delta_pct.<metric>",
        ],
    );
    refused("delta.nope > 1", &["unknown metric `delta.nope`"]);
    refused("deltas.drain_s > 1", &["unknown metric `deltas.drain_s`"]);
    refused(
        "drain_s >> 5",
        &[
            "expected an operator (< <= > >= == !=) at column 9",
            "found `>>`",
        ],
    );
    refused("drain_s = 5", &["found `=`"]);
    refused("drain_s 5", &["at column 9", "found `5`"]);
    refused("drain_s", &["found `end of text`"]);
    refused(
        "drain_s >",
        &["expected a number at column 10", "the limit is missing"],
    );
    refused(
        "drain_s > 5 s",
        &["found `5 s`", "the unit is in the metric's name"],
    );
    refused("drain_s > ten", &["found `ten`"]);
    refused("drain_s > inf", &["must be a finite number"]);
    refused("drain_s > NaN", &["must be a finite number"]);
}

fn figures(pairs: &[(&'static str, f64)]) -> BTreeMap<&'static str, f64> {
    pairs.iter().copied().collect()
}

/// `text` evaluated against `values` gives `expected` (Passed/Failed with the
/// actual value; Missing matched by a fragment of its reason).
fn evaluates(text: &str, values: &[(&'static str, f64)], expected: Result<(bool, f64), &str>) {
    let threshold = parse_threshold(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let outcome = threshold.evaluate(&figures(values));
    match (expected, &outcome) {
        (Ok((true, want)), ThresholdOutcome::Failed { actual }) => {
            assert_eq!(*actual, want, "{text}")
        }
        (Ok((false, want)), ThresholdOutcome::Passed { actual }) => {
            assert_eq!(*actual, want, "{text}")
        }
        (Err(fragment), ThresholdOutcome::Missing { reason }) => {
            assert!(reason.contains(fragment), "{text}: {reason}")
        }
        _ => panic!("{text}: {outcome:?}, expected {expected:?}"),
    }
}

const FAIL: bool = true;
const PASS: bool = false;

#[test]
fn thresholds_evaluate() {
    let p99 = [("credit_delay_ms_p99", 812.0)];
    evaluates("credit_delay_ms_p99 > 500", &p99, Ok((FAIL, 812.0)));
    evaluates("credit_delay_ms_p99 > 812", &p99, Ok((PASS, 812.0)));
    evaluates("credit_delay_ms_p99 >= 812", &p99, Ok((FAIL, 812.0)));
    evaluates("credit_delay_ms_p99 < 1000", &p99, Ok((FAIL, 812.0)));
    evaluates("credit_delay_ms_p99 <= 811", &p99, Ok((PASS, 812.0)));
    evaluates("credit_delay_ms_p99 == 812", &p99, Ok((FAIL, 812.0)));
    evaluates("credit_delay_ms_p99 != 812", &p99, Ok((PASS, 812.0)));
    evaluates("violations != 0", &[("violations", 0.0)], Ok((PASS, 0.0)));
    evaluates(
        "drain_s > 30",
        &p99,
        Err("the record has no `drain_s` (present only when the scenario credits by token)"),
    );
    evaluates(
        "delta.credit_delay_ms_p99 > 1",
        &p99,
        Err("difference between two runs"),
    );
}

#[test]
fn thresholds_on_a_record_and_their_description() {
    let record = fixture::record();
    let figures = key_figures(&record);
    let threshold = parse_threshold("credit_delay_ms_p99 > 500").expect("valid");
    let outcome = threshold.evaluate(&figures);
    assert_eq!(outcome, ThresholdOutcome::Failed { actual: 66_000.0 });
    assert!(!outcome.passed());
    assert_eq!(
        threshold.describe(&outcome),
        "FAIL credit_delay_ms_p99 > 500 (actual 66000)"
    );
    let missing = parse_threshold("counter_error_pct > 1")
        .expect("valid")
        .evaluate(&key_figures(&fixture::bare_record()));
    assert!(
        matches!(missing, ThresholdOutcome::Missing { .. }) && !missing.passed(),
        "{missing:?}"
    );
}

#[test]
fn thresholds_on_a_comparison() {
    let (a, b) = (fixture::record(), fixture::slower_record());
    let cmp = compare(&a, &b);
    let check = |text: &str, expected: ThresholdOutcome| {
        let outcome = parse_threshold(text)
            .expect("valid")
            .evaluate_comparison(&cmp);
        assert_eq!(outcome, expected, "{text}");
    };
    check(
        "delta_pct.credit_delay_ms_p99 > 5",
        ThresholdOutcome::Failed { actual: 10.0 },
    );
    check(
        "delta_pct.credit_delay_ms_p99 > 10",
        ThresholdOutcome::Passed { actual: 10.0 },
    );
    check(
        "delta.credit_delay_ms_p99 > 7000",
        ThresholdOutcome::Passed { actual: 6_600.0 },
    );
    check(
        "credit_delay_ms_p99 > 70000",
        ThresholdOutcome::Failed { actual: 72_600.0 },
    );
    check(
        "delta.drain_s > 0",
        ThresholdOutcome::Failed { actual: 4.0 },
    );

    let bare = fixture::bare_record();
    let cmp = compare(&bare, &a);
    let outcome = parse_threshold("delta_pct.credit_delay_ms_p99 > 10")
        .expect("valid")
        .evaluate_comparison(&cmp);
    match outcome {
        ThresholdOutcome::Missing { reason } => assert!(
            reason.contains("run A has no `credit_delay_ms_p99`"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn long_delays_overlay_in_seconds() {
    let (a, b) = (fixture::record(), fixture::slower_record());
    let page = reports::render_comparison_html(&compare(&a, &b));
    assert!(
        page.contains("credit delay p99 (s, virtual)"),
        "delay overlay not in seconds"
    );
}
