//! The run report as Markdown (GitHub-flavoured), for pull requests, issues
//! and CI summaries: the same order as the HTML report — verdicts, the charts
//! as links to `<stem>-<id>.svg` files the caller writes beside it, then the
//! key figures. Record text is escaped; nothing here touches files.

use std::fmt::Write as _;

use crate::figures::{KEY_FIGURES, format_value, key_figures};
use crate::{RunRecord, charts};

/// Text in a Markdown table cell or paragraph: inline markup and `|` escaped.
fn text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '~' | '&' | '!'
        ) {
            out.push('\\');
        }
        // A line break would end a table row or a list item.
        out.push(if c == '\n' { ' ' } else { c });
    }
    out
}

/// A code span that survives any backticks in `value`; `|` escaped because
/// GitHub splits table cells on it even inside code.
fn code(value: &str) -> String {
    let value = value.replace('\n', " ").replace('|', "\\|");
    let longest = longest_run(&value, '`');
    let fence = "`".repeat(longest + 1);
    let pad = if value.starts_with('`') || value.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{value}{pad}{fence}")
}

/// A fenced block that survives any backtick fences in `value`.
fn block(value: &str, info: &str) -> String {
    let fence = "`".repeat(longest_run(value, '`').max(2) + 1);
    format!("{fence}{info}\n{value}\n{fence}\n")
}

fn longest_run(value: &str, c: char) -> usize {
    let (mut longest, mut run) = (0, 0);
    for ch in value.chars() {
        run = if ch == c { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

/// A link target, in angle brackets when it has spaces or brackets.
fn target(file: &str) -> String {
    if file
        .chars()
        .any(|c| c.is_whitespace() || "()<>".contains(c))
    {
        format!("<{}>", file.replace('<', "%3C").replace('>', "%3E"))
    } else {
        file.to_owned()
    }
}

/// The run report in Markdown; charts are linked as `<stem>-<id>.svg`.
pub fn render_markdown(record: &RunRecord, stem: &str) -> String {
    let mut out = String::new();
    let s = &record.scenario;
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# redrain run · {}\n", text(&s.name));
    let sample = if record.sample_rate < 1.0 && record.sample_rate > 0.0 {
        format!(
            "{} (counts are of the sample; ×{:.0} for everyone)",
            record.sample_rate,
            1.0 / record.sample_rate
        )
    } else {
        format!("{} (every user)", record.sample_rate)
    };
    let _ = writeln!(
        out,
        "- **scenario** {} · **seed** {} · **sample** {}",
        code(&s.file),
        s.seed,
        text(&sample)
    );
    let _ = writeln!(
        out,
        "- **requests** {} over {} s (virtual) · **wall** {} s",
        s.requests,
        format_value(s.duration_ms as f64 / 1000.0),
        format_value(record.wall.elapsed_ms as f64 / 1000.0)
    );
    let _ = writeln!(
        out,
        "- **trace** {} ({} ops from {}) · **history** {}",
        code(&record.trace.hash),
        record.trace.ops,
        text(&record.trace.source),
        code(&record.history_hash)
    );
    let _ = writeln!(
        out,
        "- **build** {} · **ledger** {} · **kv** {}{}\n",
        text(&record.build),
        code(&record.ledger_url),
        code(&record.kv_url),
        if record.shadow {
            " · shadow traffic"
        } else {
            ""
        }
    );
    verdicts(&mut out, record);
    let index = charts::chart_index(record);
    if !index.is_empty() {
        let _ = writeln!(out, "## Charts\n");
        for (id, title) in index {
            let _ = writeln!(
                out,
                "![{}]({})\n",
                text(&title),
                target(&format!("{stem}-{id}.svg"))
            );
        }
    }
    figures(&mut out, record);
    out
}

fn verdicts(out: &mut String, record: &RunRecord) {
    let failed: Vec<_> = record.invariants.iter().filter(|v| !v.passed).collect();
    let verdict = if record.invariants.is_empty() {
        "no invariant was checked".to_owned()
    } else if failed.is_empty() {
        format!("PASS, all {} held", record.invariants.len())
    } else {
        format!(
            "**FAIL**, {} of {} violated",
            failed.len(),
            record.invariants.len()
        )
    };
    let _ = writeln!(out, "## Invariants: {verdict}\n");
    if !record.invariants.is_empty() {
        let _ = writeln!(
            out,
            "| id | invariant | verdict | violations |\n|---|---|---|---:|"
        );
        for v in &record.invariants {
            let word = if v.passed { "pass" } else { "**FAIL**" };
            let _ = writeln!(
                out,
                "| {} | {} | {word} | {} |",
                text(&v.id),
                text(&v.name),
                v.violations
            );
        }
        out.push('\n');
    }
    if !record.midway_checks.is_empty() {
        let checks: Vec<String> = record
            .midway_checks
            .iter()
            .map(|c| format!("at {} s: {} violation(s)", c.t_s, c.violations))
            .collect();
        let _ = writeln!(
            out,
            "Mid-run checks (on store snapshots; their violations also count above): {}.\n",
            checks.join(" · ")
        );
    }
    for v in failed {
        if v.examples.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "### {} {}: counterexamples ({} of {})\n",
            text(&v.id),
            text(&v.name),
            v.examples.len(),
            v.violations
        );
        out.push_str(&block(&v.examples.join("\n"), "text"));
        out.push('\n');
    }
    if !record.passed() {
        let _ = writeln!(out, "Reproduce with:\n");
        out.push_str(&block(&record.reproduce, "sh"));
        out.push('\n');
    }
}

fn figures(out: &mut String, record: &RunRecord) {
    let values = key_figures(record);
    let _ = writeln!(
        out,
        "## Key figures\n\n| metric | value | meaning |\n|---|---:|---|"
    );
    for figure in KEY_FIGURES {
        if let Some(value) = values.get(figure.name) {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                code(figure.name),
                format_value(*value),
                text(figure.meaning)
            );
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_pipes() {
        assert_eq!(text("a|b *c* <d>"), "a\\|b \\*c\\* \\<d\\>");
        assert_eq!(code("x|y"), "`x\\|y`");
        assert_eq!(code("a ``b`` c"), "```a ``b`` c```");
        assert_eq!(code("`edge"), "`` `edge ``");
        assert_eq!(
            block("```\ninside\n```", ""),
            "````\n```\ninside\n```\n````\n"
        );
        assert_eq!(target("run one-throughput.svg"), "<run one-throughput.svg>");
        assert_eq!(target("run-throughput.svg"), "run-throughput.svg");
    }
}
