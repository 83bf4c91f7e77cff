//! The run report as ONE self-contained HTML file: inline CSS, inline SVG
//! charts, no script, no external URL, so it can be mailed, attached to a CI
//! run or opened offline years later.
//!
//! Order is the reader's: what run this is, whether its invariants held (with
//! counterexamples and the reproduce command when not), then the charts, then
//! the key figures. Every piece of record text is escaped; nothing here reads
//! or writes files.

use std::fmt::Write as _;

use crate::figures::{KEY_FIGURES, format_value, key_figures};
use crate::{RunRecord, charts};

/// Text for HTML element content and double-quoted attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The SVG namespace plotters writes for standalone files. Inline SVG in
/// HTML5 needs no namespace, and dropping it keeps the page free of URLs.
const SVG_NAMESPACE: &str = " xmlns=\"http://www.w3.org/2000/svg\"";

/// A chart's SVG ready to sit inside an HTML page.
pub(crate) fn inline_svg(svg: &str) -> String {
    let svg = svg.replacen(SVG_NAMESPACE, "", 1);
    // `<svg ` is how every plotters document starts; label it for screen readers.
    svg.replacen("<svg ", "<svg role=\"img\" ", 1)
}

const CSS: &str = "
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif;
  color: #1e1e1e; margin: 0 auto; padding: 1.5rem 2rem 3rem; max-width: 1080px; }
h1 { font-size: 1.6rem; margin: 0 0 .4rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .4rem 0 1rem; }
th, td { padding: .25rem .7rem; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
th { background: #f6f6f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.meta th { background: none; color: #666; font-weight: normal; white-space: nowrap; }
code, pre { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: .9em; }
pre { background: #f6f6f6; padding: .6rem .8rem; overflow-x: auto; border-radius: 4px; }
.pass { color: #2f7d32; font-weight: 600; }
.fail { color: #c62828; font-weight: 700; }
p.banner { display: inline-block; padding: .3rem .8rem; border-radius: 4px; margin: .6rem 0; }
p.banner.pass { background: #e8f5e9; }
p.banner.fail { background: #ffebee; }
tr.examples td { background: #fff8f8; border-bottom: 1px solid #f3d6d6; }
tr.examples ul { margin: .2rem 0 .4rem; padding-left: 1.2rem; }
figure { margin: 1.2rem 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #eee; }
.a { color: #4e79a7; font-weight: 600; }
.b { color: #f28e2b; font-weight: 600; }
footer { margin-top: 2rem; color: #888; font-size: .85rem; }
";

/// A complete page around `body` (already HTML).
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// A table with a text first column and right-aligned figures after it;
/// cells are plain text (escaped here).
pub(crate) fn figure_table_html<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> String {
    let mut out = String::from("<table>\n<thead><tr>");
    for (index, cell) in header.iter().enumerate() {
        let class = if index == 0 { "" } else { " class=\"num\"" };
        let _ = write!(out, "<th{class}>{}</th>", escape(cell));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for (index, cell) in row.as_ref().iter().enumerate() {
            if index == 0 {
                let _ = write!(out, "<td><code>{}</code></td>", escape(cell));
            } else {
                let _ = write!(out, "<td class=\"num\">{}</td>", escape(cell));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// The run report: header, invariant verdicts, charts, key figures, outcomes.
pub fn render_html(record: &RunRecord) -> String {
    let mut body = String::new();
    header(&mut body, record);
    verdicts(&mut body, record);
    chart_section(&mut body, record);
    figures(&mut body, record);
    outcomes(&mut body, record);
    let _ = writeln!(
        body,
        "<footer>RunRecord v{} · rendered by the <code>reports</code> crate</footer>",
        record.version
    );
    page(&format!("redrain run · {}", record.scenario.name), &body)
}

fn meta_row(out: &mut String, key: &str, value_html: &str) {
    let _ = writeln!(
        out,
        "<tr><th>{}</th><td>{value_html}</td></tr>",
        escape(key)
    );
}

fn code(text: &str) -> String {
    format!("<code>{}</code>", escape(text))
}

fn header(out: &mut String, record: &RunRecord) {
    let s = &record.scenario;
    let _ = writeln!(out, "<header>\n<h1>redrain run · {}</h1>", escape(&s.name));
    let _ = writeln!(out, "<table class=\"meta\">");
    meta_row(out, "scenario file", &code(&s.file));
    meta_row(out, "seed", &s.seed.to_string());
    meta_row(
        out,
        "requests",
        &format!(
            "{} over {} s (virtual)",
            s.requests,
            format_value(s.duration_ms as f64 / 1000.0)
        ),
    );
    let sample = if record.sample_rate < 1.0 && record.sample_rate > 0.0 {
        format!(
            "{} — counts are of the sample; ×{:.0} for everyone",
            record.sample_rate,
            1.0 / record.sample_rate
        )
    } else {
        format!("{} (every user)", record.sample_rate)
    };
    meta_row(out, "sample rate", &escape(&sample));
    let t = &record.trace;
    let shard = t
        .shard
        .as_deref()
        .map(|s| format!(", shard {s}"))
        .unwrap_or_default();
    meta_row(
        out,
        "trace hash",
        &format!(
            "{} ({} ops from {}{})",
            code(&t.hash),
            t.ops,
            escape(&t.source),
            escape(&shard)
        ),
    );
    meta_row(out, "history hash", &code(&record.history_hash));
    meta_row(out, "build", &escape(&record.build));
    meta_row(out, "ledger", &code(&record.ledger_url));
    meta_row(out, "kv", &code(&record.kv_url));
    if record.shadow {
        meta_row(out, "traffic", "shadow (served from the shadow stores)");
    }
    meta_row(
        out,
        "wall",
        &escape(&format!(
            "{} s · {} requests/s (not deterministic)",
            format_value(record.wall.elapsed_ms as f64 / 1000.0),
            format_value(record.wall.requests_per_s.round())
        )),
    );
    meta_row(out, "reproduce", &code(&record.reproduce));
    let _ = writeln!(out, "</table>\n</header>");
}

fn verdicts(out: &mut String, record: &RunRecord) {
    let failed = record.invariants.iter().filter(|v| !v.passed).count();
    let _ = writeln!(out, "<section id=\"verdicts\">\n<h2>Invariants</h2>");
    if record.invariants.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"banner fail\">No invariant was checked.</p>"
        );
    } else if failed == 0 {
        let _ = writeln!(
            out,
            "<p class=\"banner pass\">PASS: all {} invariants held</p>",
            record.invariants.len()
        );
    } else {
        let _ = writeln!(
            out,
            "<p class=\"banner fail\">FAIL: {failed} of {} invariants violated</p>",
            record.invariants.len()
        );
    }
    let _ = writeln!(
        out,
        "<table>\n<thead><tr><th>id</th><th>invariant</th><th>verdict</th><th class=\"num\">violations</th></tr></thead>\n<tbody>"
    );
    for v in &record.invariants {
        let (class, word) = if v.passed {
            ("pass", "pass")
        } else {
            ("fail", "FAIL")
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{word}</td><td class=\"num\">{}</td></tr>",
            escape(&v.id),
            escape(&v.name),
            v.violations
        );
        if !v.passed && !v.examples.is_empty() {
            let _ = writeln!(
                out,
                "<tr class=\"examples\"><td></td><td colspan=\"3\">counterexamples ({} of {}):<ul>",
                v.examples.len(),
                v.violations
            );
            for example in &v.examples {
                let _ = writeln!(out, "<li>{}</li>", code(example));
            }
            let _ = writeln!(out, "</ul></td></tr>");
        }
    }
    let _ = writeln!(out, "</tbody>\n</table>");
    if !record.midway_checks.is_empty() {
        let checks: Vec<String> = record
            .midway_checks
            .iter()
            .map(|c| format!("at {} s: {} violation(s)", c.t_s, c.violations))
            .collect();
        let _ = writeln!(
            out,
            "<p>Mid-run checks (on store snapshots; their violations also count above): {}.</p>",
            escape(&checks.join(" · "))
        );
    }
    if !record.passed() {
        let _ = writeln!(
            out,
            "<p>Reproduce with:</p>\n<pre>{}</pre>",
            escape(&record.reproduce)
        );
    }
    let _ = writeln!(out, "</section>");
}

fn chart_section(out: &mut String, record: &RunRecord) {
    let _ = writeln!(out, "<section id=\"charts\">\n<h2>Charts</h2>");
    let charts = charts::charts(record);
    if charts.is_empty() {
        let _ = writeln!(out, "<p>This record has no per-second series to chart.</p>");
    }
    for chart in &charts {
        let _ = writeln!(
            out,
            "<figure id=\"chart-{}\">\n{}</figure>",
            chart.id,
            inline_svg(&chart.svg)
        );
    }
    let _ = writeln!(out, "</section>");
}

fn figures(out: &mut String, record: &RunRecord) {
    let values = key_figures(record);
    let _ = writeln!(out, "<section id=\"figures\">\n<h2>Key figures</h2>");
    let _ = writeln!(
        out,
        "<table>\n<thead><tr><th>metric</th><th class=\"num\">value</th><th>meaning</th></tr></thead>\n<tbody>"
    );
    for figure in KEY_FIGURES {
        if let Some(value) = values.get(figure.name) {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                code(figure.name),
                format_value(*value),
                escape(figure.meaning)
            );
        }
    }
    let _ = writeln!(out, "</tbody>\n</table>\n</section>");
}

fn outcomes(out: &mut String, record: &RunRecord) {
    if record.outcomes.is_empty() {
        return;
    }
    let total = record.scenario.requests.max(1) as f64;
    let _ = writeln!(out, "<section id=\"outcomes\">\n<h2>Outcomes</h2>");
    let rows: Vec<[String; 3]> = record
        .outcomes
        .iter()
        .map(|(kind, n)| {
            [
                kind.clone(),
                n.to_string(),
                format!("{:.1}%", *n as f64 * 100.0 / total),
            ]
        })
        .collect();
    out.push_str(&figure_table_html(
        &["answer", "count", "share of requests"],
        &rows,
    ));
    let _ = writeln!(out, "</section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain · text"), "plain · text");
    }

    #[test]
    fn inline_svg_drops_the_namespace_url() {
        let svg = "<svg width=\"1\" height=\"1\" viewBox=\"0 0 1 1\" xmlns=\"http://www.w3.org/2000/svg\">\n</svg>";
        let inline = inline_svg(svg);
        assert!(!inline.contains("http"), "{inline}");
        assert!(
            inline.starts_with("<svg role=\"img\" width=\"1\""),
            "{inline}"
        );
    }
}
