//! The comparison of two runs over the key figures (`crate::figures`), its text
//! table and overlay HTML, and k6-like thresholds over either
//! (`credit_delay_ms_p99 > 500` fails a run whose p99 is above 500).
//! Nothing here reads files or the clock: records in, values and text out.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use crate::charts::{self, Kind, PALETTE, Plot};
use crate::figures::{KEY_FIGURES, format_value, key_figure, key_figures};
use crate::html::{escape, figure_table_html, inline_svg, page};
use crate::{RunRecord, SecondSample};

fn format_signed(value: f64) -> String {
    let text = format_value(value);
    if value > 0.0 && !text.starts_with('+') {
        format!("+{text}")
    } else {
        text
    }
}

fn format_pct(value: f64) -> String {
    if value.is_infinite() {
        return format!("{}%", format_value(value));
    }
    let text = format!("{value:+.1}%");
    if text == "-0.0%" || text == "+0.0%" {
        "0.0%".to_owned()
    } else {
        text
    }
}

// ---------------------------------------------------------------------------
// Comparison.

/// Two runs side by side: the first (A) is the baseline, the second (B) the
/// candidate; deltas are B − A.
#[derive(Clone, Debug)]
pub struct Comparison<'r> {
    /// The baseline.
    pub a: &'r RunRecord,
    /// The candidate.
    pub b: &'r RunRecord,
    /// One row per metric either run has, in [`KEY_FIGURES`] order.
    pub rows: Vec<MetricDelta>,
}

/// One metric of a comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricDelta {
    /// A [`KEY_FIGURES`] name.
    pub metric: &'static str,
    /// The baseline's value, if it has the metric.
    pub a: Option<f64>,
    /// The candidate's value, if it has the metric.
    pub b: Option<f64>,
}

impl MetricDelta {
    /// B − A, when both runs have the metric.
    pub fn delta(&self) -> Option<f64> {
        Some(self.b? - self.a?)
    }

    /// (B − A) / |A| in percent, when both runs have the metric; 0 when both
    /// are 0, ±∞ when only A is 0 (a new cost is an infinite regression).
    pub fn delta_pct(&self) -> Option<f64> {
        let (a, b) = (self.a?, self.b?);
        Some(if a == 0.0 {
            if b == 0.0 {
                0.0
            } else {
                f64::INFINITY.copysign(b)
            }
        } else {
            (b - a) * 100.0 / a.abs()
        })
    }
}

/// Compares two runs, metric by metric.
pub fn compare<'r>(a: &'r RunRecord, b: &'r RunRecord) -> Comparison<'r> {
    let (fa, fb) = (key_figures(a), key_figures(b));
    let rows = KEY_FIGURES
        .iter()
        .filter_map(|f| {
            let row = MetricDelta {
                metric: f.name,
                a: fa.get(f.name).copied(),
                b: fb.get(f.name).copied(),
            };
            (row.a.is_some() || row.b.is_some()).then_some(row)
        })
        .collect();
    Comparison { a, b, rows }
}

impl Comparison<'_> {
    /// The row of `metric`, if either run has it.
    pub fn row(&self, metric: &str) -> Option<&MetricDelta> {
        self.rows.iter().find(|r| r.metric == metric)
    }

    /// `A: <scenario>/<seed>`, told apart from B by build or history when
    /// scenario and seed are the same.
    pub fn label_a(&self) -> String {
        format!("A: {}", self.names().0)
    }

    /// `B: <scenario>/<seed>`, like [`Comparison::label_a`].
    pub fn label_b(&self) -> String {
        format!("B: {}", self.names().1)
    }

    fn names(&self) -> (String, String) {
        let name = |r: &RunRecord| format!("{}/{}", r.scenario.name, r.scenario.seed);
        let (mut a, mut b) = (name(self.a), name(self.b));
        if a == b {
            if self.a.build != self.b.build {
                a = format!("{a} ({})", self.a.build);
                b = format!("{b} ({})", self.b.build);
            } else {
                let short = |h: &str| h.chars().take(8).collect::<String>();
                a = format!("{a} (history {})", short(&self.a.history_hash));
                b = format!("{b} (history {})", short(&self.b.history_hash));
            }
        }
        (a, b)
    }
}

fn table_rows(cmp: &Comparison<'_>) -> Vec<[String; 5]> {
    let opt = |v: Option<f64>| v.map_or("—".to_owned(), format_value);
    cmp.rows
        .iter()
        .map(|r| {
            [
                r.metric.to_owned(),
                opt(r.a),
                opt(r.b),
                r.delta().map_or("—".to_owned(), format_signed),
                r.delta_pct().map_or("—".to_owned(), format_pct),
            ]
        })
        .collect()
}

/// The comparison as a one-screen text table.
pub fn render_comparison_text(cmp: &Comparison<'_>) -> String {
    let mut out = String::new();
    let (a, b) = (cmp.label_a(), cmp.label_b());
    // Writing to a String cannot fail.
    let _ = writeln!(out, "redrain compare · {a} vs {b}");
    if cmp.a.sample_rate != cmp.b.sample_rate {
        let _ = writeln!(
            out,
            "  sample rates differ (A {}, B {}): counts are of each run's sample, not scaled",
            cmp.a.sample_rate, cmp.b.sample_rate
        );
    }
    let header = ["metric", "A", "B", "Δ (B − A)", "Δ%"].map(str::to_owned);
    let rows = table_rows(cmp);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 5]| {
        let mut text = format!("  {:<w$}", cells[0], w = widths[0]);
        for (cell, width) in cells.iter().zip(widths).skip(1) {
            let pad = width.saturating_sub(cell.chars().count());
            text.push_str(&" ".repeat(pad + 2));
            text.push_str(cell);
        }
        text
    };
    let _ = writeln!(out, "{}", line(&header));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    out
}

/// The comparison as one self-contained HTML page: the table, then each
/// series of both runs overlaid on the same axes.
pub fn render_comparison_html(cmp: &Comparison<'_>) -> String {
    let (a, b) = (cmp.label_a(), cmp.label_b());
    let mut body = String::new();
    let _ = writeln!(body, "<header><h1>redrain compare</h1>");
    let _ = writeln!(
        body,
        "<p><span class=\"a\">{}</span> ({}) vs <span class=\"b\">{}</span> ({}); Δ is B − A.</p></header>",
        escape(&a),
        escape(&cmp.a.scenario.file),
        escape(&b),
        escape(&cmp.b.scenario.file)
    );
    let _ = writeln!(body, "<section id=\"figures\"><h2>Key figures</h2>");
    let rows = table_rows(cmp);
    let header = ["metric", "A", "B", "Δ (B − A)", "Δ%"];
    body.push_str(&figure_table_html(&header, &rows));
    let _ = writeln!(
        body,
        "</section>\n<section id=\"charts\"><h2>Series, A against B</h2>"
    );
    let plots = overlays(cmp);
    if plots.is_empty() {
        let _ = writeln!(body, "<p>Neither record has a per-second series.</p>");
    }
    for plot in &plots {
        let _ = writeln!(
            body,
            "<figure id=\"chart-{}\">{}</figure>",
            plot.id,
            inline_svg(&charts::render_svg(plot))
        );
    }
    let _ = writeln!(body, "</section>");
    page(&format!("redrain compare · {a} vs {b}"), &body)
}

/// What the overlay charts show: (id, title, y axis, lines).
type Overlay = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, fn(&SecondSample) -> f64)],
);

const OVERLAYS: &[Overlay] = &[
    (
        "throughput",
        "Throughput",
        "per second (requests, credits)",
        &[
            ("offered/s", |s| s.offered as f64),
            ("awarded/s", |s| s.awarded as f64),
            ("credited/s", |s| s.credited as f64),
        ],
    ),
    (
        "backlog",
        "Token backlog",
        "pending tokens",
        &[("pending tokens", |s| s.backlog as f64)],
    ),
    (
        "credit-delay-p99",
        "Credit delay p99",
        "credit delay p99 (virtual)",
        &[("p99", |s| {
            if s.credited > 0 {
                s.delay_p99_ms as f64
            } else {
                f64::NAN
            }
        })],
    ),
    (
        "kv-ops",
        "KV calls per second",
        "KV calls/s",
        &[("KV calls/s", |s| s.kv_ops as f64)],
    ),
    // Plan 1 against plan 2 of the hot counter is two runs: their error side by side.
    (
        "counter-error",
        "Hot counter: shown vs true",
        "shown − true (% of true; ±1% allowed)",
        &[("error %", |s| {
            if s.counter_true > 0 && s.counter_shown > 0 {
                (s.counter_shown as f64 - s.counter_true as f64) * 100.0 / s.counter_true as f64
            } else {
                f64::NAN
            }
        })],
    ),
    (
        "db-ops",
        "DB calls per second",
        "per second (calls, transactions)",
        &[
            ("DB calls/s", |s| s.db_ops as f64),
            ("DB write transactions/s", |s| s.db_writes as f64),
        ],
    ),
];

fn overlays(cmp: &Comparison<'_>) -> Vec<Plot> {
    let (label_a, label_b) = (cmp.label_a(), cmp.label_b());
    let mut subtitle = format!("{label_a} solid, {label_b} dashed");
    if cmp.a.sample_rate != cmp.b.sample_rate {
        subtitle.push_str(" · sample rates differ: counts are not scaled");
    } else {
        subtitle.push_str(&charts::sample_note(cmp.a));
    }
    let has_data = |f: fn(&SecondSample) -> f64| {
        cmp.a.series.iter().chain(&cmp.b.series).any(|s| {
            let v = f(s);
            v.is_finite() && v != 0.0
        })
    };
    OVERLAYS
        .iter()
        .filter(|(_, _, _, lines)| lines.iter().any(|(_, f)| has_data(*f)))
        .map(|(id, title, y_desc, lines)| {
            let mut plot = Plot::new(
                id,
                format!("{title}: A vs B"),
                subtitle.clone(),
                (*y_desc).to_owned(),
            );
            for (index, (name, f)) in lines.iter().enumerate() {
                let color = PALETTE[index % PALETTE.len()];
                plot.layer(
                    format!("{label_a} · {name}"),
                    color,
                    Kind::Line,
                    charts::column(&cmp.a.series, f),
                );
                plot.layer(
                    format!("{label_b} · {name}"),
                    color,
                    Kind::Dashed,
                    charts::column(&cmp.b.series, f),
                );
            }
            if *id == "credit-delay-p99" {
                in_delay_unit(&mut plot);
            }
            plot
        })
        .collect()
}

/// The delay overlay in seconds when its delays are long, as in the run report.
fn in_delay_unit(plot: &mut Plot) {
    let peak_ms = plot
        .layers_mut()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (divisor, unit) = charts::delay_unit(peak_ms);
    for layer in plot.layers_mut() {
        layer.points.iter_mut().for_each(|p| p.1 /= divisor);
    }
    for panel in &mut plot.panels {
        panel.y_desc = format!("credit delay p99 ({unit}, virtual)");
    }
}

// ---------------------------------------------------------------------------
// Thresholds.

/// What a threshold looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The metric's value (of run B when comparing).
    Value(&'static str),
    /// `delta.<metric>`: B − A.
    Delta(&'static str),
    /// `delta_pct.<metric>`: (B − A) / |A| in percent.
    DeltaPct(&'static str),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(m) => write!(f, "{m}"),
            Self::Delta(m) => write!(f, "delta.{m}"),
            Self::DeltaPct(m) => write!(f, "delta_pct.{m}"),
        }
    }
}

/// A comparison operator of a threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==` (exact: the figures are mostly integers)
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    const ALL: [(&'static str, Op); 6] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];

    /// How it is written.
    pub fn symbol(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, op)| *op == self)
            .map_or("?", |(s, _)| s)
    }

    fn holds(self, actual: f64, limit: f64) -> bool {
        match self {
            Self::Lt => actual < limit,
            Self::Le => actual <= limit,
            Self::Gt => actual > limit,
            Self::Ge => actual >= limit,
            Self::Eq => actual == limit,
            Self::Ne => actual != limit,
        }
    }
}

/// `<metric> <op> <number>`: the run FAILS when the condition holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// The metric, or its delta between two runs.
    pub target: Target,
    /// The comparison.
    pub op: Op,
    /// The number compared against.
    pub limit: f64,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.target,
            self.op.symbol(),
            format_value(self.limit)
        )
    }
}

/// A threshold's result.
#[derive(Clone, Debug, PartialEq)]
pub enum ThresholdOutcome {
    /// The condition did not hold: this threshold passes.
    Passed {
        /// The metric's value.
        actual: f64,
    },
    /// The condition held: this threshold fails the run.
    Failed {
        /// The metric's value.
        actual: f64,
    },
    /// There is no value to compare: the record lacks the metric, or a delta
    /// was asked of a single run. Neither a pass nor a fail; callers that gate
    /// on thresholds should treat it as a failure.
    Missing {
        /// Why, in a sentence.
        reason: String,
    },
}

impl ThresholdOutcome {
    /// Only a real pass: [`ThresholdOutcome::Missing`] is not one.
    pub fn passed(&self) -> bool {
        matches!(self, Self::Passed { .. })
    }
}

impl Threshold {
    /// Evaluates against one run's [`key_figures`]; a `delta.` target is
    /// [`ThresholdOutcome::Missing`] here (it needs two runs).
    pub fn evaluate(&self, figures: &BTreeMap<&'static str, f64>) -> ThresholdOutcome {
        match self.target {
            Target::Value(metric) => match figures.get(metric) {
                Some(actual) => self.judge(*actual),
                None => missing_metric("the record", metric),
            },
            Target::Delta(_) | Target::DeltaPct(_) => ThresholdOutcome::Missing {
                reason: format!(
                    "`{}` is a difference between two runs; use it when comparing",
                    self.target
                ),
            },
        }
    }

    /// Evaluates against a comparison: a plain metric is run B's value, a
    /// `delta.` or `delta_pct.` target is B against A.
    pub fn evaluate_comparison(&self, cmp: &Comparison<'_>) -> ThresholdOutcome {
        let metric = match self.target {
            Target::Value(m) | Target::Delta(m) | Target::DeltaPct(m) => m,
        };
        let row = cmp.row(metric);
        let (a, b) = (row.and_then(|r| r.a), row.and_then(|r| r.b));
        let needs_a = !matches!(self.target, Target::Value(_));
        if b.is_none() {
            return missing_metric("run B", metric);
        }
        if needs_a && a.is_none() {
            return missing_metric("run A", metric);
        }
        let value = row.and_then(|r| match self.target {
            Target::Value(_) => r.b,
            Target::Delta(_) => r.delta(),
            Target::DeltaPct(_) => r.delta_pct(),
        });
        match value {
            Some(actual) => self.judge(actual),
            None => missing_metric("the comparison", metric),
        }
    }

    fn judge(&self, actual: f64) -> ThresholdOutcome {
        if self.op.holds(actual, self.limit) {
            ThresholdOutcome::Failed { actual }
        } else {
            ThresholdOutcome::Passed { actual }
        }
    }

    /// One line for a report: `FAIL credit_delay_ms_p99 > 500 (actual 812)`.
    pub fn describe(&self, outcome: &ThresholdOutcome) -> String {
        match outcome {
            ThresholdOutcome::Passed { actual } => {
                format!("pass {self} (actual {})", format_value(*actual))
            }
            ThresholdOutcome::Failed { actual } => {
                format!("FAIL {self} (actual {})", format_value(*actual))
            }
            ThresholdOutcome::Missing { reason } => format!("MISSING {self}: {reason}"),
        }
    }
}

fn missing_metric(whose: &str, metric: &str) -> ThresholdOutcome {
    let when = key_figure(metric).map_or("", |f| f.present_when);
    ThresholdOutcome::Missing {
        reason: format!("{whose} has no `{metric}` (present only when {when})"),
    }
}

/// Why a threshold's text was refused. Columns count characters from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdError {
    /// The text was empty or blank.
    #[error("empty threshold: expected `<metric> <op> <number>`, e.g. `credit_delay_ms_p99 > 500`")]
    Empty,
    /// The text does not start with a metric name.
    #[error(
        "threshold `{text}`: expected a metric name at column {column}, found `{found}`; write `<metric> <op> <number>`, e.g. `credit_delay_ms_p99 > 500`"
    )]
    MissingMetric {
        /// The whole threshold.
        text: String,
        /// Where the name should start.
        column: usize,
        /// What is there instead.
        found: String,
    },
    /// The metric is not one of [`KEY_FIGURES`].
    #[error(
        "threshold `{text}`: unknown metric `{metric}` at column {column}; valid metrics: {valid} (each also as `delta.<metric>` or `delta_pct.<metric>` when comparing)"
    )]
    UnknownMetric {
        /// The whole threshold.
        text: String,
        /// The name given.
        metric: String,
        /// Where it starts.
        column: usize,
        /// Every valid name, comma-separated.
        valid: String,
    },
    /// No operator after the metric, or not one of the six.
    #[error(
        "threshold `{text}`: expected an operator (< <= > >= == !=) at column {column}, found `{found}`"
    )]
    BadOperator {
        /// The whole threshold.
        text: String,
        /// Where the operator should be.
        column: usize,
        /// What is there instead.
        found: String,
    },
    /// The limit is missing or not a finite number.
    #[error("threshold `{text}`: expected a number at column {column}, found `{found}`: {why}")]
    BadNumber {
        /// The whole threshold.
        text: String,
        /// Where the number should be.
        column: usize,
        /// What is there instead.
        found: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Parses `<metric> <op> <number>` (spaces optional), e.g.
/// `credit_delay_ms_p99 > 500` or `delta_pct.kv_peak_per_s >= 10`.
pub fn parse_threshold(text: &str) -> Result<Threshold, ThresholdError> {
    let chars: Vec<char> = text.chars().collect();
    if chars.iter().all(|c| c.is_whitespace()) {
        return Err(ThresholdError::Empty);
    }
    let skip_space = |mut at: usize| {
        while at < chars.len() && chars[at].is_whitespace() {
            at += 1;
        }
        at
    };
    let take = |from: usize, keep: &dyn Fn(char) -> bool| {
        let mut to = from;
        while to < chars.len() && keep(chars[to]) {
            to += 1;
        }
        (chars[from..to].iter().collect::<String>(), to)
    };
    let word_at = |at: usize| {
        let word = take(at, &|c| !c.is_whitespace()).0;
        if word.is_empty() {
            "end of text".to_owned()
        } else {
            word
        }
    };

    let metric_at = skip_space(0);
    let (name, after_name) = take(metric_at, &|c| {
        c.is_ascii_alphanumeric() || c == '_' || c == '.'
    });
    if name.is_empty() {
        return Err(ThresholdError::MissingMetric {
            text: text.to_owned(),
            column: metric_at + 1,
            found: word_at(metric_at),
        });
    }
    let target = resolve_target(&name).ok_or_else(|| ThresholdError::UnknownMetric {
        text: text.to_owned(),
        metric: name.clone(),
        column: metric_at + 1,
        valid: KEY_FIGURES
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
            .join(", "),
    })?;

    let op_at = skip_space(after_name);
    let (symbol, after_op) = take(op_at, &|c| "<>=!".contains(c));
    let op = Op::ALL
        .iter()
        .find(|(s, _)| *s == symbol)
        .map(|(_, op)| *op)
        .ok_or_else(|| ThresholdError::BadOperator {
            text: text.to_owned(),
            column: op_at + 1,
            found: if symbol.is_empty() {
                word_at(op_at)
            } else {
                symbol.clone()
            },
        })?;

    let number_at = skip_space(after_op);
    let number: String = chars[number_at..]
        .iter()
        .collect::<String>()
        .trim_end()
        .to_owned();
    let bad = |found: &str, why| ThresholdError::BadNumber {
        text: text.to_owned(),
        column: number_at + 1,
        found: if found.is_empty() {
            "end of text".to_owned()
        } else {
            found.to_owned()
        },
        why,
    };
    if number.is_empty() {
        return Err(bad("", "the limit is missing"));
    }
    let limit: f64 = number.replace('_', "").parse().map_err(|_| {
        bad(
            &number,
            "write a plain number like 500, 0.5 or 1e6; the unit is in the metric's name",
        )
    })?;
    if !limit.is_finite() {
        return Err(bad(&number, "the limit must be a finite number"));
    }
    Ok(Threshold { target, op, limit })
}

fn resolve_target(name: &str) -> Option<Target> {
    let known = |m: &str| key_figure(m).map(|f| f.name);
    if let Some(m) = name.strip_prefix("delta_pct.") {
        return known(m).map(Target::DeltaPct);
    }
    if let Some(m) = name.strip_prefix("delta.") {
        return known(m).map(Target::Delta);
    }
    known(name).map(Target::Value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_for_people() {
        let check =
            |value: f64, expected: &str| assert_eq!(format_value(value), expected, "{value}");
        check(0.0, "0");
        check(1500.0, "1500");
        check(-3.0, "-3");
        check(0.125, "0.125");
        check(2.5, "2.5");
        check(1.0 / 3.0, "0.333");
        check(f64::INFINITY, "+∞");
        let pct = |value: f64, expected: &str| assert_eq!(format_pct(value), expected, "{value}");
        pct(4.16, "+4.2%");
        pct(-10.0, "-10.0%");
        pct(-0.01, "0.0%");
        pct(f64::INFINITY, "+∞%");
    }
}
