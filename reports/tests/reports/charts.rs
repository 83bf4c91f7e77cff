//! Charts: each one's text, when it is left out, and its PNG.

use std::io::Cursor;

use reports::{CHART_HEIGHT_PX, CHART_IDS, CHART_WIDTH_PX, RunRecord, SecondSample};

use crate::fixture;

fn svg_of(record: &RunRecord, id: &str) -> String {
    match reports::charts(record).into_iter().find(|c| c.id == id) {
        Some(chart) => chart.svg,
        None => panic!("no chart {id}"),
    }
}

fn ids(record: &RunRecord) -> Vec<&'static str> {
    reports::charts(record).iter().map(|c| c.id).collect()
}

/// The chart `id` of the fixture shows its title, every legend label, its y
/// axis and the shared x axis.
fn check(id: &str, title: &str, legend: &[&str], y_axes: &[&str]) {
    let svg = svg_of(&fixture::record(), id);
    assert!(svg.starts_with("<svg "), "{id}: not an SVG document");
    assert!(
        svg.contains(&format!(">\n{title}\n<")) || svg.contains(title),
        "{id}: no title `{title}`"
    );
    for label in legend {
        assert!(svg.contains(label), "{id}: no legend label `{label}`");
    }
    for axis in y_axes {
        assert!(svg.contains(axis), "{id}: no y axis `{axis}`");
    }
    assert!(svg.contains("virtual time (s)"), "{id}: no x axis");
}

#[test]
fn every_chart_shows_title_legend_and_axes() {
    check(
        "throughput",
        "Offered vs awarded vs credited",
        &[
            "offered (requests/s)",
            "awarded (first successes/s)",
            "credited (ledger credits/s)",
        ],
        &["per second (requests, credits)"],
    );
    check(
        "backlog",
        "Token backlog and coupon pipeline depth",
        &[
            "pending tokens (pending + inflight)",
            "coupon orders in the pipeline",
            "drain: 14 s after the last request",
            "last request",
        ],
        &["pending tokens", "orders queued"],
    );
    check(
        "credit-delay",
        "Credit delay (award to ledger credit)",
        &["p50", "p99", "p99.9", "max"],
        &["credit delay (s, virtual)"],
    );
    check(
        "rejections",
        "Rejections by reason (stacked)",
        &[
            "out_of_stock (",
            "per_user_limit (",
            "rate_limited (",
            "group_hold (",
            "budget_exhausted (",
            "other: 2 reasons (",
            " in all)",
        ],
        &["requests turned away per second"],
    );
    check(
        "coupon-stock",
        "Coupon stock consumed per template",
        &[
            "tpl-gold (stock 150000)",
            "tpl-silver (stock 400000)",
            "90% consumed: offering stops below 10% left",
        ],
        &["stock consumed (% of total)"],
    );
    check(
        "counter",
        "Hot counter: shown vs true (plan split)",
        &["true total", "shown (highest reader value)", "±1% of true"],
        &["counter (cents)", "error (%)"],
    );
    check(
        "kv-ops",
        "KV calls per second",
        &["KV calls/s", "KV limit (calls/s)"],
        &["KV calls/s"],
    );
    check(
        "db-ops",
        "DB calls and write transactions per second",
        &[
            "DB calls/s (ledger calls)",
            "DB write transactions/s (gated)",
            "DB limit (write transactions/s)",
        ],
        &["per second (calls, transactions)"],
    );
}

#[test]
fn the_fixture_has_every_chart_in_order() {
    assert_eq!(ids(&fixture::record()), CHART_IDS.to_vec());
    let index: Vec<&str> = reports::chart_index(&fixture::record())
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(index, CHART_IDS.to_vec());
}

#[test]
fn count_charts_say_how_to_scale_the_sample() {
    let record = fixture::record();
    for id in [
        "throughput",
        "backlog",
        "rejections",
        "kv-ops",
        "db-ops",
        "counter",
    ] {
        assert!(
            svg_of(&record, id).contains("counts are of the 1% sample (×100 for everyone)"),
            "{id}"
        );
    }
    let mut full = fixture::record();
    full.sample_rate = 1.0;
    assert!(!svg_of(&full, "throughput").contains("for everyone"));
}

#[test]
fn charts_without_data_are_left_out() {
    assert_eq!(ids(&fixture::bare_record()), vec!["throughput", "db-ops"]);
    let without = |change: fn(&mut RunRecord), gone: &str| {
        let mut record = fixture::record();
        change(&mut record);
        let left = ids(&record);
        assert!(!left.contains(&gone), "{gone} drawn: {left:?}");
        assert_eq!(left.len(), CHART_IDS.len() - 1, "{gone}: {left:?}");
        assert!(reports::chart_png(&record, gone).is_none(), "{gone}");
    };
    without(|r| r.counter = None, "counter");
    without(|r| r.live = None, "latency");
    without(
        |r| r.series.iter_mut().for_each(|s| s.stock.clear()),
        "coupon-stock",
    );
    without(
        |r| r.series.iter_mut().for_each(|s| s.rejected.clear()),
        "rejections",
    );
    without(
        |r| {
            r.crediting = None;
            r.series
                .iter_mut()
                .for_each(|s| (s.backlog, s.pipeline_depth) = (0, 0));
        },
        "backlog",
    );
    without(
        |r| {
            r.series
                .iter_mut()
                .for_each(|s| (s.kv_ops, s.kv_limit) = (0, 0))
        },
        "kv-ops",
    );
    let mut empty = fixture::record();
    empty.series.clear();
    assert!(reports::charts(&empty).is_empty());
    assert!(reports::chart_png(&fixture::record(), "no-such-chart").is_none());
}

#[test]
fn the_backlog_chart_drops_the_pipeline_panel_when_nothing_was_queued() {
    let mut record = fixture::record();
    record.series.iter_mut().for_each(|s| s.pipeline_depth = 0);
    let svg = svg_of(&record, "backlog");
    assert!(svg.contains("Token backlog"), "title");
    assert!(
        !svg.contains("coupon orders in the pipeline"),
        "pipeline drawn"
    );
}

#[test]
fn no_limit_line_where_the_limit_is_unlimited() {
    let mut record = fixture::record();
    record
        .series
        .iter_mut()
        .for_each(|s| (s.kv_limit, s.db_limit) = (0, 0));
    let kv = svg_of(&record, "kv-ops");
    assert!(
        !kv.contains("KV limit (calls/s)") && kv.contains("no KV limit set"),
        "kv"
    );
    let db = svg_of(&record, "db-ops");
    assert!(
        !db.contains("DB limit (write transactions/s)") && db.contains("no DB limit set"),
        "db"
    );
}

#[test]
fn small_delays_stay_in_milliseconds() {
    let mut record = fixture::record();
    for s in &mut record.series {
        (
            s.delay_p50_ms,
            s.delay_p99_ms,
            s.delay_p999_ms,
            s.delay_max_ms,
        ) = (3, 8, 9, 12);
    }
    assert!(svg_of(&record, "credit-delay").contains("credit delay (ms, virtual)"));
}

#[test]
fn record_text_is_escaped_in_the_svg() {
    let record = fixture::record_named("ramp <b>&co</b>");
    let svg = svg_of(&record, "throughput");
    assert!(
        svg.contains("ramp &lt;b&gt;&amp;co&lt;/b&gt;"),
        "not escaped"
    );
    assert!(!svg.contains("<b>"), "raw markup in the SVG");
}

#[test]
fn long_runs_are_thinned_to_a_bounded_size() {
    let mut record = fixture::record();
    let template = record.series[120].clone();
    record.series = (0..6_000)
        .map(|t| SecondSample {
            t_s: t,
            ..template.clone()
        })
        .collect();
    let svg = svg_of(&record, "throughput");
    assert!(svg.contains("each point: max of 5 s"), "no thinning note");
    assert!(svg.len() < 400_000, "SVG of {} bytes", svg.len());
}

#[test]
fn odd_records_still_draw() {
    let mut one = fixture::record();
    one.series.truncate(1);
    let mut zeros = fixture::record();
    zeros.series.iter_mut().for_each(|s| {
        *s = SecondSample {
            t_s: s.t_s,
            ..SecondSample::default()
        }
    });
    let mut huge = fixture::record();
    huge.series
        .iter_mut()
        .for_each(|s| (s.offered, s.counter_true) = (u64::MAX / 4, u64::MAX / 2));
    for record in [one, zeros, huge] {
        for chart in reports::charts(&record) {
            assert!(chart.svg.contains(&chart.title), "{}", chart.id);
            assert!(chart.png().starts_with(PNG_SIGNATURE), "{}", chart.id);
        }
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

#[test]
fn png_charts_decode_to_the_chart_size_with_text_drawn() {
    let record = fixture::record();
    let Some(bytes) = reports::chart_png(&record, "throughput") else {
        panic!("no throughput PNG");
    };
    assert!(bytes.starts_with(PNG_SIGNATURE), "not a PNG");
    let decoder = png::Decoder::new(Cursor::new(&bytes));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sane size")];
    let info = reader.next_frame(&mut pixels).expect("one frame");
    assert_eq!((info.width, info.height), (CHART_WIDTH_PX, CHART_HEIGHT_PX));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    // The title, drawn with the embedded font, darkens the top band: with
    // no glyphs it would be blank white.
    let row_bytes = CHART_WIDTH_PX as usize * 3;
    let dark = pixels[..row_bytes * 40]
        .chunks(3)
        .filter(|p| p.iter().all(|c| *c < 100))
        .count();
    assert!(dark > 500, "only {dark} dark pixels where the title is");
    // Every chart of the record draws as a PNG, the same one `Chart::png` gives.
    for chart in reports::charts(&record) {
        assert_eq!(
            Some(chart.png()),
            reports::chart_png(&record, chart.id),
            "{}",
            chart.id
        );
    }
}
