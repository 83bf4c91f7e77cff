//! The HTML and Markdown reports: order, completeness, escaping, no URLs.

use crate::fixture;

fn position(page: &str, needle: &str) -> usize {
    match page.find(needle) {
        Some(at) => at,
        None => panic!("`{needle}` not in the page"),
    }
}

#[test]
fn html_has_the_header_then_verdicts_then_charts_then_figures() {
    let record = fixture::record();
    let page = reports::render_html(&record);
    assert!(page.starts_with("<!DOCTYPE html>"), "not a page");
    for fact in [
        "redrain run · spring-ramp",
        "scenarios/spring-ramp.toml",
        "<td>42</td>",
        "0.01 — counts are of the sample; ×100 for everyone",
        &record.trace.hash,
        &record.history_hash,
        "redrain 0.1.0 (fixture)",
        "postgres://redrain:***@db.internal/redrain",
        "redis://kv.internal:6379",
    ] {
        assert!(page.contains(fact), "header lacks `{fact}`");
    }
    let verdicts = position(&page, "id=\"verdicts\"");
    let charts = position(&page, "id=\"charts\"");
    let figures = position(&page, "id=\"figures\"");
    assert!(
        position(&page, "<header>") < verdicts,
        "header after the verdicts"
    );
    assert!(
        verdicts < charts && charts < figures,
        "sections out of order"
    );
    assert!(
        verdicts < position(&page, "<svg"),
        "a chart before the verdicts"
    );
}

#[test]
fn html_inlines_every_chart() {
    let record = fixture::record();
    let page = reports::render_html(&record);
    let charts = reports::charts(&record);
    assert_eq!(charts.len(), reports::CHART_IDS.len());
    for chart in &charts {
        assert!(
            page.contains(&format!("<figure id=\"chart-{}\">", chart.id)),
            "{}",
            chart.id
        );
        // Everything after the root tag is inlined as is.
        let body = &chart.svg[position(&chart.svg, ">")..];
        assert!(page.contains(body), "{}: SVG not inlined whole", chart.id);
    }
    assert_eq!(page.matches("<svg ").count(), charts.len());
}

#[test]
fn html_shows_failing_invariants_with_counterexamples_and_the_command() {
    let page = reports::render_html(&fixture::record());
    assert!(page.contains("FAIL: 1 of 2 invariants violated"), "banner");
    assert!(
        page.contains("<td class=\"fail\">FAIL</td>"),
        "verdict cell"
    );
    assert!(
        page.contains("counterexamples (2 of 2)"),
        "examples heading"
    );
    assert!(
        page.contains("pending after drain (&lt; 1 s left) &amp; never credited"),
        "escaped example"
    );
    assert!(
        page.contains("<pre>redrain run scenarios/spring-ramp.toml --seed 42 --sample 0.01</pre>"),
        "reproduce command"
    );
    let mut passing = fixture::record();
    passing.invariants.retain(|v| v.passed);
    let page = reports::render_html(&passing);
    assert!(page.contains("PASS: all 1 invariants held"), "pass banner");
    assert!(
        !page.contains("Reproduce with"),
        "reproduce shown for a pass"
    );
}

#[test]
fn html_escapes_record_text() {
    let page = reports::render_html(&fixture::record_named("<script>alert(\"x\")</script> & co"));
    assert!(!page.contains("<script"), "raw script tag");
    assert!(
        page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co"),
        "escaped name"
    );
}

#[test]
fn html_is_self_contained() {
    for page in [
        reports::render_html(&fixture::record()),
        reports::render_html(&fixture::bare_record()),
        reports::render_comparison_html(&reports::compare(
            &fixture::record(),
            &fixture::slower_record(),
        )),
    ] {
        for external in [
            "http://", "https://", "<script", "<link", " src=", "@import", "url(",
        ] {
            assert!(
                !page.contains(external),
                "`{external}` in a self-contained page"
            );
        }
        assert!(page.contains("<style>"), "no inline CSS");
        assert!(page.trim_end().ends_with("</html>"), "unterminated page");
    }
}

#[test]
fn html_lists_the_key_figures() {
    let page = reports::render_html(&fixture::record());
    assert!(
        page.contains("<code>credit_delay_ms_p99</code></td><td class=\"num\">66000</td>"),
        "p99 row"
    );
    assert!(
        page.contains("<code>violations</code></td><td class=\"num\">2</td>"),
        "violations row"
    );
    let bare = reports::render_html(&fixture::bare_record());
    assert!(
        !bare.contains("credit_delay_ms_p99"),
        "an absent metric listed"
    );
    assert!(
        bare.contains("<figure id=\"chart-throughput\">") && !bare.contains("chart-counter"),
        "bare charts"
    );
}

#[test]
fn markdown_has_verdicts_then_chart_links_then_figures() {
    let record = fixture::record();
    let text = reports::render_markdown(&record, "run-42");
    let verdicts = position(&text, "## Invariants: **FAIL**, 1 of 2 violated");
    let figures = position(&text, "## Key figures");
    let charts = position(&text, "## Charts");
    assert!(
        verdicts < charts && charts < figures,
        "sections out of order: verdicts, charts, key figures"
    );
    assert!(
        text.contains("| I4 | drain | **FAIL** | 2 |"),
        "verdict row"
    );
    assert!(
        text.contains("```text\ntoken 9f3a for user 17"),
        "counterexamples block"
    );
    assert!(
        text.contains("```sh\nredrain run scenarios/spring-ramp.toml --seed 42 --sample 0.01\n```"),
        "reproduce"
    );
    assert!(
        text.contains("| `credit_delay_ms_p99` | 66000 |"),
        "figure row"
    );
    for id in reports::CHART_IDS {
        assert!(
            text.contains(&format!("(run-42-{id}.svg)")),
            "no link to {id}"
        );
    }
    let bare = reports::render_markdown(&fixture::bare_record(), "bare");
    assert!(
        bare.contains("(bare-throughput.svg)") && !bare.contains("bare-counter.svg"),
        "bare links"
    );
}

#[test]
fn markdown_escapes_record_text() {
    let text = reports::render_markdown(&fixture::record_named("a|b <i>*x*</i>"), "r");
    assert!(
        text.contains("# redrain run · a\\|b \\<i\\>\\*x\\*\\</i\\>"),
        "{}",
        text.lines().next().unwrap_or("")
    );
}

#[test]
fn older_records_without_the_newest_fields_still_render() {
    let mut json = serde_json::to_value(fixture::record()).expect("serialize");
    for field in [
        "coupon_delay",
        "midway_checks",
        "kv_url",
        "sample_rate",
        "trace",
    ] {
        json.as_object_mut().map(|o| o.remove(field));
    }
    for sample in json["series"].as_array_mut().expect("a series") {
        for field in [
            "stock",
            "delay_p999_ms",
            "db_writes",
            "db_limit",
            "kv_limit",
            "pipeline_depth",
        ] {
            sample.as_object_mut().map(|o| o.remove(field));
        }
    }
    let old: reports::RunRecord = serde_json::from_value(json).expect("an older record parses");
    let ids: Vec<&str> = reports::charts(&old).iter().map(|c| c.id).collect();
    assert!(!ids.contains(&"coupon-stock"), "{ids:?}");
    let page = reports::render_html(&old);
    assert!(
        page.contains("no DB limit set") && page.contains("no KV limit set"),
        "limits"
    );
    assert!(!page.contains("p99.9"), "a p99.9 line without data");
    assert!(
        !page.contains("Mid-run checks"),
        "mid-run checks without data"
    );
}
