//! Charts of a run: one per question a reader asks of a [`RunRecord`]'s
//! per-second series, each as an SVG string and as PNG bytes.
//!
//! Building a chart is two steps. A pure builder turns the record into a
//! `Plot` — titles, axis descriptions and layers of points, no drawing — and
//! decides whether the record has data for it at all (no coupons, no coupon
//! chart). One renderer then draws any `Plot` on plotters' SVG backend or on
//! its RGB bitmap backend (PNG-encoded with `png`). The comparison report in
//! [`crate::compare`](mod@crate::compare) builds its overlay charts the same way.
//!
//! This module never touches the file system and never asks the system for
//! fonts: text is drawn with the DejaVu Sans embedded from `assets/`
//! (registered with plotters' `ab_glyph` text backend), so a chart looks the
//! same on every machine and needs no fontconfig or freetype.

use std::collections::BTreeMap;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{RunRecord, SecondSample};

/// Width of every chart, SVG and PNG alike.
pub const CHART_WIDTH_PX: u32 = 1000;
/// Height of every chart, SVG and PNG alike.
pub const CHART_HEIGHT_PX: u32 = 600;

/// Every chart id [`charts`] can produce, in report order. The id is the file
/// stem suffix: callers write `<stem>-<id>.svg` and `<stem>-<id>.png`.
pub const CHART_IDS: [&str; 9] = [
    "throughput",
    "latency",
    "backlog",
    "credit-delay",
    "rejections",
    "coupon-stock",
    "counter",
    "kv-ops",
    "db-ops",
];

/// The x axis of every chart.
pub(crate) const X_DESC: &str = "virtual time (s)";

/// Lines longer than this are thinned to one point per bucket of seconds (the
/// bucket's maximum, so peaks survive); a 1000 px chart shows no more anyway,
/// and it bounds the SVG's size for day-long runs.
const POINTS_PER_LINE_MAX: usize = 1200;
/// Rejection reasons drawn on their own; the rest are stacked as "other".
const REASONS_MAX: usize = 5;
/// Coupon templates drawn on their own; the rest are grouped as "other".
const TEMPLATES_MAX: usize = 6;
/// Delays at or above this (any percentile, any second) are shown in seconds.
const DELAY_SECONDS_FROM_MS: u64 = 10_000;

const FONT_FAMILY: &str = "sans-serif";
/// DejaVu Sans 2.37; its license is `assets/DejaVuSans-LICENSE.txt`.
static FONT_TTF: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

const TITLE_PX: u32 = 26;
const SUBTITLE_PX: u32 = 16;
const LEGEND_PX: u32 = 16;
const TICK_PX: u32 = 15;
const AXIS_DESC_PX: u32 = 17;
const MARGIN_PX: i32 = 16;
const HEADER_PX: u32 = 66;
const LEGEND_ROW_PX: u32 = 24;
const SWATCH_PX: i32 = 28;

/// Colours that stay apart for colour-blind readers (Tableau 10).
pub(crate) const PALETTE: [RGBColor; 8] = [
    RGBColor(78, 121, 167),  // blue
    RGBColor(242, 142, 43),  // orange
    RGBColor(89, 161, 79),   // green
    RGBColor(176, 122, 161), // purple
    RGBColor(118, 183, 178), // teal
    RGBColor(237, 201, 72),  // yellow
    RGBColor(156, 117, 95),  // brown
    RGBColor(255, 157, 167), // pink
];
/// Limits, thresholds and other lines a reader must not cross.
pub(crate) const LIMIT_COLOR: RGBColor = RGBColor(214, 39, 40);
const GREY: RGBColor = RGBColor(140, 140, 140);
const INK: RGBColor = RGBColor(30, 30, 30);

/// One rendered chart.
#[derive(Clone, Debug)]
pub struct Chart {
    /// One of [`CHART_IDS`]; the file stem suffix.
    pub id: &'static str,
    /// The chart's title, as drawn on it.
    pub title: String,
    /// The chart as a standalone SVG document.
    pub svg: String,
    /// Kept to draw the PNG on demand: most callers want only one format.
    plot: Plot,
}

impl Chart {
    /// The same chart as a PNG ([`CHART_WIDTH_PX`] × [`CHART_HEIGHT_PX`], RGB).
    pub fn png(&self) -> Vec<u8> {
        render_png(&self.plot)
    }
}

/// Every chart the record has data for, in [`CHART_IDS`] order.
pub fn charts(record: &RunRecord) -> Vec<Chart> {
    plots(record)
        .into_iter()
        .map(|plot| Chart {
            id: plot.id,
            title: plot.title.clone(),
            svg: render_svg(&plot),
            plot,
        })
        .collect()
}

/// One chart as PNG bytes; `None` when `id` is unknown or the record has no
/// data for it.
pub fn chart_png(record: &RunRecord, id: &str) -> Option<Vec<u8>> {
    plot(record, id).map(|plot| render_png(&plot))
}

/// One chart as an SVG document; `None` when `id` is unknown or the record has
/// no data for it.
pub fn chart_svg(record: &RunRecord, id: &str) -> Option<String> {
    plot(record, id).map(|plot| render_svg(&plot))
}

/// The ids and titles of the charts the record has data for, without drawing
/// them (for reports that only link to chart files).
pub fn chart_index(record: &RunRecord) -> Vec<(&'static str, String)> {
    plots(record).into_iter().map(|p| (p.id, p.title)).collect()
}

fn plots(record: &RunRecord) -> Vec<Plot> {
    CHART_IDS.iter().filter_map(|id| plot(record, id)).collect()
}

fn plot(record: &RunRecord, id: &str) -> Option<Plot> {
    match id {
        "throughput" => throughput(record),
        "latency" => latency(record),
        "backlog" => backlog(record),
        "credit-delay" => credit_delay(record),
        "rejections" => rejections(record),
        "coupon-stock" => coupon_stock(record),
        "counter" => counter(record),
        "kv-ops" => kv_ops(record),
        "db-ops" => db_ops(record),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The plot model: what to draw, no drawing.

/// A chart before drawing: a header, a legend, and one or more panels
/// stacked on a shared time axis (a second panel when one scale cannot show
/// both quantities, e.g. 14k pending tokens over 100 queued orders).
#[derive(Clone, Debug)]
pub(crate) struct Plot {
    pub(crate) id: &'static str,
    pub(crate) title: String,
    /// Which run, and how to read the counts (sample rate).
    pub(crate) subtitle: String,
    /// Top to bottom; never empty.
    pub(crate) panels: Vec<Panel>,
    /// Shaded stretches of time (the drain), behind every panel's layers.
    pub(crate) spans: Vec<Span>,
    /// Vertical lines at a moment (the last request), in front of every panel.
    pub(crate) marks: Vec<Mark>,
}

/// One y axis and what is drawn against it.
#[derive(Clone, Debug)]
pub(crate) struct Panel {
    /// The y axis, with its unit.
    pub(crate) y_desc: String,
    /// The y axis reaches at least this (100 for a percentage).
    pub(crate) y_max_at_least: f64,
    /// Drawn in order: the first is at the back.
    pub(crate) layers: Vec<Layer>,
}

/// One named line, area or band.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub(crate) label: String,
    pub(crate) color: RGBColor,
    pub(crate) kind: Kind,
    /// `(t_s, value)`; a NaN value is "no value this second" and breaks the line.
    pub(crate) points: Vec<(f64, f64)>,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Line,
    /// Limits and the second run of a comparison.
    Dashed,
    /// Filled down to zero with an opaque tint (stacks draw the tallest first).
    Area,
    /// Filled between these lower points and the layer's points.
    Band {
        lower: Vec<(f64, f64)>,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Span {
    pub(crate) from_s: f64,
    pub(crate) to_s: f64,
    pub(crate) label: String,
    pub(crate) color: RGBColor,
}

#[derive(Clone, Debug)]
pub(crate) struct Mark {
    pub(crate) at_s: f64,
    pub(crate) label: String,
    pub(crate) color: RGBColor,
}

impl Plot {
    /// A plot with one panel whose y axis is `y_desc`.
    pub(crate) fn new(id: &'static str, title: String, subtitle: String, y_desc: String) -> Self {
        Self {
            id,
            title,
            subtitle,
            panels: vec![Panel::new(y_desc)],
            spans: Vec::new(),
            marks: Vec::new(),
        }
    }

    /// Starts another panel below; later layers go there.
    pub(crate) fn panel(&mut self, y_desc: impl Into<String>) {
        self.panels.push(Panel::new(y_desc.into()));
    }

    fn current(&mut self) -> &mut Panel {
        if self.panels.is_empty() {
            self.panels.push(Panel::new(String::new()));
        }
        let last = self.panels.len() - 1;
        &mut self.panels[last]
    }

    /// Adds a layer to the current (lowest) panel.
    pub(crate) fn layer(
        &mut self,
        label: impl Into<String>,
        color: RGBColor,
        kind: Kind,
        points: Vec<(f64, f64)>,
    ) {
        self.current().layers.push(Layer {
            label: label.into(),
            color,
            kind,
            points,
        });
    }

    /// The current panel's y axis reaches at least `value`.
    pub(crate) fn y_max_at_least(&mut self, value: f64) {
        self.current().y_max_at_least = value;
    }

    /// Every layer of every panel, for unit changes after building.
    pub(crate) fn layers_mut(&mut self) -> impl Iterator<Item = &mut Layer> {
        self.panels.iter_mut().flat_map(|p| &mut p.layers)
    }

    fn layers(&self) -> impl Iterator<Item = &Layer> {
        self.panels.iter().flat_map(|p| &p.layers)
    }
}

impl Panel {
    fn new(y_desc: String) -> Self {
        Self {
            y_desc,
            y_max_at_least: 0.0,
            layers: Vec::new(),
        }
    }
}

/// `(t_s, f(sample))` for every second.
pub(crate) fn column(series: &[SecondSample], f: impl Fn(&SecondSample) -> f64) -> Vec<(f64, f64)> {
    series.iter().map(|s| (s.t_s as f64, f(s))).collect()
}

fn any(series: &[SecondSample], f: impl Fn(&SecondSample) -> bool) -> bool {
    series.iter().any(f)
}

/// A lighter, opaque version of `color` (`keep` of it over white).
fn tint(color: RGBColor, keep: f64) -> RGBColor {
    let mix = |c: u8| (f64::from(c) * keep + 255.0 * (1.0 - keep)).round() as u8;
    RGBColor(mix(color.0), mix(color.1), mix(color.2))
}

/// `name · seed N · file`, plus how to read counts when only a sample ran.
pub(crate) fn run_line(record: &RunRecord, counts: bool) -> String {
    let s = &record.scenario;
    let mut line = format!("{} · seed {} · {}", s.name, s.seed, s.file);
    if counts {
        line.push_str(&sample_note(record));
    }
    line
}

/// Empty for a full run; else how to scale the sample's counts.
pub(crate) fn sample_note(record: &RunRecord) -> String {
    if record.sample_rate < 1.0 && record.sample_rate > 0.0 {
        format!(
            " · counts are of the {}% sample (×{:.0} for everyone)",
            short_number(record.sample_rate * 100.0),
            1.0 / record.sample_rate
        )
    } else {
        String::new()
    }
}

/// The end of the last second in which requests arrived (the drain starts there).
fn last_request_s(record: &RunRecord) -> Option<f64> {
    let last = record.series.iter().rev().find(|s| s.offered > 0)?;
    let end_s = (last.t_s + 1) as f64;
    let duration_s = record.scenario.duration_ms as f64 / 1000.0;
    Some(if duration_s > 0.0 {
        end_s.min(duration_s)
    } else {
        end_s
    })
}

// ---------------------------------------------------------------------------
// The builders, one per chart id.

fn throughput(record: &RunRecord) -> Option<Plot> {
    let series = &record.series;
    if series.is_empty() {
        return None;
    }
    let mut plot = Plot::new(
        "throughput",
        "Offered vs awarded vs credited".to_owned(),
        run_line(record, true),
        "per second (requests, credits)".to_owned(),
    );
    plot.layer(
        "offered (requests/s)",
        tint(PALETTE[0], 0.25),
        Kind::Area,
        column(series, |s| s.offered as f64),
    );
    plot.layer(
        "awarded (first successes/s)",
        PALETTE[0],
        Kind::Line,
        column(series, |s| s.awarded as f64),
    );
    plot.layer(
        "credited (ledger credits/s)",
        PALETTE[2],
        Kind::Line,
        column(series, |s| s.credited as f64),
    );
    Some(plot)
}

fn backlog(record: &RunRecord) -> Option<Plot> {
    let series = &record.series;
    let tokens = record.crediting.is_some() || any(series, |s| s.backlog > 0);
    let pipeline = any(series, |s| s.pipeline_depth > 0);
    if series.is_empty() || !(tokens || pipeline) {
        return None;
    }
    let title = match (tokens, pipeline) {
        (true, true) => "Token backlog and coupon pipeline depth",
        (true, false) => "Token backlog",
        _ => "Coupon pipeline depth",
    };
    let y_tokens = "pending tokens";
    let y_orders = "orders queued";
    let mut plot = Plot::new(
        "backlog",
        title.to_owned(),
        run_line(record, true),
        (if tokens { y_tokens } else { y_orders }).to_owned(),
    );
    if tokens {
        plot.layer(
            "pending tokens (pending + inflight)",
            PALETTE[1],
            Kind::Area,
            column(series, |s| s.backlog as f64),
        );
    }
    if pipeline {
        if tokens {
            // Its own panel: orders are often a hundredth of the tokens.
            plot.panel(y_orders);
        }
        plot.layer(
            "coupon orders in the pipeline",
            PALETTE[3],
            Kind::Line,
            column(series, |s| s.pipeline_depth as f64),
        );
    }
    if let (Some(crediting), Some(last_s)) = (&record.crediting, last_request_s(record)) {
        let drain_s = crediting.drain_ms as f64 / 1000.0;
        plot.marks.push(Mark {
            at_s: last_s,
            label: "last request".to_owned(),
            color: INK,
        });
        if drain_s > 0.0 {
            plot.spans.push(Span {
                from_s: last_s,
                to_s: last_s + drain_s,
                label: format!("drain: {} s after the last request", short_number(drain_s)),
                color: PALETTE[2],
            });
        }
    }
    Some(plot)
}

fn credit_delay(record: &RunRecord) -> Option<Plot> {
    let series = &record.series;
    let measured = |s: &SecondSample| s.credited > 0;
    if !any(series, |s| measured(s) && s.delay_max_ms > 0) && record.delay.is_none() {
        return None;
    }
    if !any(series, measured) {
        return None;
    }
    let peak_ms = series
        .iter()
        .filter(|s| measured(s))
        .map(|s| s.delay_max_ms)
        .max()
        .unwrap_or(0);
    let (divisor, unit) = delay_unit(peak_ms as f64);
    let mut plot = Plot::new(
        "credit-delay",
        "Credit delay (award to ledger credit)".to_owned(),
        format!(
            "{} · percentiles of each second's credits",
            run_line(record, false)
        ),
        format!("credit delay ({unit}, virtual)"),
    );
    let pick = |f: fn(&SecondSample) -> u64| {
        column(series, move |s| {
            if measured(s) {
                f(s) as f64 / divisor
            } else {
                f64::NAN
            }
        })
    };
    plot.layer("p50", PALETTE[0], Kind::Line, pick(|s| s.delay_p50_ms));
    plot.layer("p99", PALETTE[1], Kind::Line, pick(|s| s.delay_p99_ms));
    if any(series, |s| s.delay_p999_ms > 0) {
        plot.layer("p99.9", PALETTE[3], Kind::Line, pick(|s| s.delay_p999_ms));
    }
    plot.layer("max", GREY, Kind::Dashed, pick(|s| s.delay_max_ms));
    Some(plot)
}

/// Milliseconds, or seconds once the longest delay shown is
/// [`DELAY_SECONDS_FROM_MS`] or more: (divisor from ms, unit).
pub(crate) fn delay_unit(peak_ms: f64) -> (f64, &'static str) {
    if peak_ms >= DELAY_SECONDS_FROM_MS as f64 {
        (1000.0, "s")
    } else {
        (1.0, "ms")
    }
}

fn rejections(record: &RunRecord) -> Option<Plot> {
    let series = &record.series;
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for sample in series {
        for (reason, count) in &sample.rejected {
            *totals.entry(reason.as_str()).or_default() += count;
        }
    }
    if totals.values().all(|n| *n == 0) {
        return None;
    }
    let mut ranked: Vec<(&str, u64)> = totals.into_iter().filter(|(_, n)| *n > 0).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    // "other" only when it groups two or more reasons.
    let named = if ranked.len() > REASONS_MAX + 1 {
        REASONS_MAX
    } else {
        ranked.len()
    };
    let (shown, rest) = ranked.split_at(named);
    let mut plot = Plot::new(
        "rejections",
        "Rejections by reason (stacked)".to_owned(),
        run_line(record, true),
        "requests turned away per second".to_owned(),
    );
    // Stack bottom-up: cumulative sums, drawn tallest first so each lower
    // band covers the one above it.
    let mut stack: Vec<(String, RGBColor, Vec<f64>)> = Vec::new();
    let mut running = vec![0.0; series.len()];
    let mut add = |label: String, color: RGBColor, value: &dyn Fn(&SecondSample) -> u64| {
        for (sum, sample) in running.iter_mut().zip(series) {
            *sum += value(sample) as f64;
        }
        stack.push((label, color, running.clone()));
    };
    for (index, (reason, total)) in shown.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        add(format!("{reason} ({total} in all)"), color, &|s| {
            s.rejected.get(*reason).copied().unwrap_or(0)
        });
    }
    if !rest.is_empty() {
        let names: Vec<&str> = rest.iter().map(|(r, _)| *r).collect();
        let total: u64 = rest.iter().map(|(_, n)| n).sum();
        add(
            format!("other: {} reasons ({total} in all)", names.len()),
            GREY,
            &|s| {
                names
                    .iter()
                    .map(|r| s.rejected.get(*r).copied().unwrap_or(0))
                    .sum()
            },
        );
    }
    for (label, color, sums) in stack.into_iter().rev() {
        let points = series
            .iter()
            .zip(sums)
            .map(|(s, v)| (s.t_s as f64, v))
            .collect();
        plot.layer(label, tint(color, 0.75), Kind::Area, points);
    }
    Some(plot)
}

fn coupon_stock(record: &RunRecord) -> Option<Plot> {
    let series = &record.series;
    // Template → (first total, last total).
    let mut templates: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for sample in series {
        for (id, stock) in &sample.stock {
            let entry = templates
                .entry(id.as_str())
                .or_insert((stock.total, stock.total));
            entry.1 = stock.total;
        }
    }
    if templates.is_empty() {
        return None;
    }
    let mut ranked: Vec<(&str, (u64, u64))> = templates.into_iter().collect();
    ranked.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(b.0)));
    let named = if ranked.len() > TEMPLATES_MAX + 1 {
        TEMPLATES_MAX
    } else {
        ranked.len()
    };
    let (shown, rest) = ranked.split_at(named);
    let mut plot = Plot::new(
        "coupon-stock",
        "Coupon stock consumed per template".to_owned(),
        format!(
            "{} · consumed ÷ total stock, at the end of each second",
            run_line(record, false)
        ),
        "stock consumed (% of total)".to_owned(),
    );
    plot.y_max_at_least(100.0);
    let percent = |ids: &[&str], s: &SecondSample| {
        let (consumed, total) = ids
            .iter()
            .filter_map(|id| s.stock.get(*id))
            .fold((0, 0), |(c, t), st| (c + st.consumed, t + st.total));
        if total == 0 {
            f64::NAN
        } else {
            consumed as f64 * 100.0 / total as f64
        }
    };
    for (index, (id, (first, last))) in shown.iter().enumerate() {
        let stock = if first == last {
            last.to_string()
        } else {
            format!("{first}→{last}")
        };
        let ids = [*id];
        plot.layer(
            format!("{id} (stock {stock})"),
            PALETTE[index % PALETTE.len()],
            Kind::Line,
            column(series, |s| percent(&ids, s)),
        );
    }
    if !rest.is_empty() {
        let ids: Vec<&str> = rest.iter().map(|(id, _)| *id).collect();
        let total: u64 = rest.iter().map(|(_, (_, last))| last).sum();
        plot.layer(
            format!("other: {} templates (stock {total})", ids.len()),
            GREY,
            Kind::Line,
            column(series, |s| percent(&ids, s)),
        );
    }
    let (x0, x1) = x_extent(series);
    plot.layer(
        "90% consumed: offering stops below 10% left",
        LIMIT_COLOR,
        Kind::Dashed,
        vec![(x0, 90.0), (x1, 90.0)],
    );
    Some(plot)
}

fn counter(record: &RunRecord) -> Option<Plot> {
    let counter = record.counter.as_ref()?;
    let series = &record.series;
    if series.is_empty() {
        return None;
    }
    let mut plot = Plot::new(
        "counter",
        format!("Hot counter: shown vs true (plan {})", counter.plan),
        run_line(record, true),
        "counter (cents)".to_owned(),
    );
    plot.layer(
        "true total",
        PALETTE[2],
        Kind::Line,
        column(series, |s| s.counter_true as f64),
    );
    plot.layer(
        "shown (highest reader value)",
        PALETTE[0],
        Kind::Dashed,
        column(series, |s| s.counter_shown as f64),
    );
    // At millions of cents a 1% band is a hair's width: the error gets a
    // panel of its own, in percent, with the band around zero.
    plot.panel("error (%)");
    let (x0, x1) = x_extent(series);
    plot.layer(
        "±1% of true",
        tint(PALETTE[2], 0.3),
        Kind::Band {
            lower: vec![(x0, -1.0), (x1, -1.0)],
        },
        vec![(x0, 1.0), (x1, 1.0)],
    );
    plot.layer(
        "error of shown: (shown − true) ÷ true, %",
        PALETTE[0],
        Kind::Line,
        column(series, |s| match s.counter_true {
            0 => f64::NAN,
            truth => (s.counter_shown as f64 - truth as f64) * 100.0 / truth as f64,
        }),
    );
    Some(plot)
}

/// A limit column: the limit where set, NaN (no line) where 0 = unlimited.
fn limit(series: &[SecondSample], f: impl Fn(&SecondSample) -> u64) -> Vec<(f64, f64)> {
    column(series, |s| match f(s) {
        0 => f64::NAN,
        n => n as f64,
    })
}

fn kv_ops(record: &RunRecord) -> Option<Plot> {
    let series = &record.series;
    let limited = any(series, |s| s.kv_limit > 0);
    if !any(series, |s| s.kv_ops > 0) && !limited {
        return None;
    }
    let mut subtitle = run_line(record, true);
    if !limited {
        subtitle.push_str(" · no KV limit set");
    }
    let mut plot = Plot::new(
        "kv-ops",
        "KV calls per second".to_owned(),
        subtitle,
        "KV calls/s".to_owned(),
    );
    plot.layer(
        "KV calls/s",
        PALETTE[0],
        Kind::Line,
        column(series, |s| s.kv_ops as f64),
    );
    if limited {
        plot.layer(
            "KV limit (calls/s)",
            LIMIT_COLOR,
            Kind::Dashed,
            limit(series, |s| s.kv_limit),
        );
    }
    Some(plot)
}

fn db_ops(record: &RunRecord) -> Option<Plot> {
    let series = &record.series;
    let limited = any(series, |s| s.db_limit > 0);
    if !any(series, |s| s.db_ops > 0 || s.db_writes > 0) && !limited {
        return None;
    }
    let mut subtitle = run_line(record, true);
    if !limited {
        subtitle.push_str(" · no DB limit set");
    }
    let mut plot = Plot::new(
        "db-ops",
        "DB calls and write transactions per second".to_owned(),
        subtitle,
        "per second (calls, transactions)".to_owned(),
    );
    plot.layer(
        "DB calls/s (ledger calls)",
        PALETTE[6],
        Kind::Line,
        column(series, |s| s.db_ops as f64),
    );
    plot.layer(
        "DB write transactions/s (gated)",
        PALETTE[0],
        Kind::Line,
        column(series, |s| s.db_writes as f64),
    );
    if limited {
        plot.layer(
            "DB limit (write transactions/s)",
            LIMIT_COLOR,
            Kind::Dashed,
            limit(series, |s| s.db_limit),
        );
    }
    Some(plot)
}

/// A live load's award latency: the 99th percentile per second, from the
/// scheduled send time.
fn latency(record: &RunRecord) -> Option<Plot> {
    let series = &record.series;
    if record.live.is_none() || !any(series, |s| s.latency_p99_us > 0) {
        return None;
    }
    let mut plot = Plot::new(
        "latency",
        "Award latency from the scheduled send time (live)".to_owned(),
        run_line(record, false),
        "p99 per second (ms)".to_owned(),
    );
    plot.layer(
        "award latency p99 (ms)",
        PALETTE[3],
        Kind::Line,
        series
            .iter()
            .map(|s| {
                let v = if s.latency_p99_us > 0 {
                    s.latency_p99_us as f64 / 1000.0
                } else {
                    f64::NAN
                };
                (s.t_s as f64, v)
            })
            .collect(),
    );
    Some(plot)
}

fn x_extent(series: &[SecondSample]) -> (f64, f64) {
    let first = series.first().map_or(0.0, |s| s.t_s as f64);
    let last = series.last().map_or(1.0, |s| s.t_s as f64);
    (first, last.max(first + 1.0))
}

// ---------------------------------------------------------------------------
// Drawing.

/// Axis numbers: short, with k/M/G from ten thousand up.
pub(crate) fn short_number(value: f64) -> String {
    let (divisor, suffix) = scale_for(value.abs());
    format!("{}{suffix}", trimmed(value / divisor))
}

/// The k/M/G step for numbers up to `magnitude`.
fn scale_for(magnitude: f64) -> (f64, &'static str) {
    if magnitude >= 1e9 {
        (1e9, "G")
    } else if magnitude >= 1e6 {
        (1e6, "M")
    } else if magnitude >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    }
}

/// Up to two decimals, trailing zeros dropped.
fn trimmed(value: f64) -> String {
    let mut text = format!("{value:.2}");
    while text.contains('.') && (text.ends_with('0') || text.ends_with('.')) {
        text.pop();
    }
    if text == "-0" { "0".to_owned() } else { text }
}

fn register_font_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_TTF).is_err() {
            // A fixed asset compiled in: a bug, caught by every chart test.
            panic!("the embedded DejaVu Sans is not a valid TrueType font");
        }
    });
}

pub(crate) fn render_svg(plot: &Plot) -> String {
    register_font_once();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (CHART_WIDTH_PX, CHART_HEIGHT_PX))
            .into_drawing_area();
        // Drawing into a String fails only on a missing font, which
        // `register_font_once` rules out, or a bug in the plot's ranges.
        draw(plot, &root).expect("an SVG chart draws into memory");
        root.present().expect("an SVG chart draws into memory");
    }
    svg
}

pub(crate) fn render_png(plot: &Plot) -> Vec<u8> {
    register_font_once();
    let (width, height) = (CHART_WIDTH_PX, CHART_HEIGHT_PX);
    let mut rgb = vec![0_u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        // As in `render_svg`: memory, embedded font.
        draw(plot, &root).expect("a bitmap chart draws into memory");
        root.present().expect("a bitmap chart draws into memory");
    }
    encode_png(&rgb, width, height)
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Encoding into a Vec fails only when the buffer's length does not match
    // the header, which the caller sized from the same width and height.
    let mut writer = encoder
        .write_header()
        .expect("a PNG header encodes into memory");
    writer
        .write_image_data(rgb)
        .expect("an RGB buffer of the right size encodes");
    writer.finish().expect("a PNG encodes into memory");
    out
}

/// Per legend row: (item index, x in pixels).
type LegendRows = Vec<Vec<(usize, i32)>>;

/// A panel: seconds against values.
type TimeChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn font(px: u32) -> TextStyle<'static> {
    (FONT_FAMILY, px).into_font().color(&INK)
}

/// Thin every layer to [`POINTS_PER_LINE_MAX`] points: one per bucket of
/// seconds, the bucket's maximum (a band's lower edge takes the minimum).
/// Returns the panels' layers and the bucket (1 = untouched).
fn thinned(plot: &Plot) -> (Vec<Vec<Layer>>, usize) {
    let longest = plot.layers().map(|l| l.points.len()).max().unwrap_or(0);
    let bucket = longest.div_ceil(POINTS_PER_LINE_MAX).max(1);
    let thin = |points: &[(f64, f64)], pick: fn(f64, f64) -> f64| -> Vec<(f64, f64)> {
        if bucket == 1 || points.len() <= 2 {
            return points.to_vec();
        }
        points
            .chunks(bucket)
            .map(|chunk| {
                let y = chunk
                    .iter()
                    .map(|p| p.1)
                    .filter(|y| !y.is_nan())
                    .reduce(pick)
                    .unwrap_or(f64::NAN);
                (chunk[0].0, y)
            })
            .collect()
    };
    let panels = plot
        .panels
        .iter()
        .map(|panel| {
            panel
                .layers
                .iter()
                .map(|layer| Layer {
                    label: layer.label.clone(),
                    color: layer.color,
                    kind: match &layer.kind {
                        Kind::Band { lower } => Kind::Band {
                            lower: thin(lower, f64::min),
                        },
                        other => other.clone(),
                    },
                    points: thin(&layer.points, f64::max),
                })
                .collect()
        })
        .collect();
    (panels, bucket)
}

fn finite_min(values: impl Iterator<Item = f64>) -> f64 {
    values
        .filter(|v| v.is_finite())
        .fold(f64::INFINITY, f64::min)
}

fn finite_max(values: impl Iterator<Item = f64>) -> f64 {
    values
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max)
}

fn all_points(layer: &Layer) -> impl Iterator<Item = &(f64, f64)> {
    let lower = match &layer.kind {
        Kind::Band { lower } => lower.as_slice(),
        _ => &[],
    };
    layer.points.iter().chain(lower)
}

/// The x range covering every point, span and mark of every panel, never empty.
fn x_range(plot: &Plot, panels: &[Vec<Layer>]) -> (f64, f64) {
    let xs = || {
        panels
            .iter()
            .flatten()
            .flat_map(all_points)
            .map(|p| p.0)
            .chain(plot.spans.iter().flat_map(|s| [s.from_s, s.to_s]))
            .chain(plot.marks.iter().map(|m| m.at_s))
    };
    let (x0, x1) = (finite_min(xs()), finite_max(xs()));
    if !(x0.is_finite() && x1.is_finite()) {
        return (0.0, 1.0);
    }
    (x0, if x1 > x0 { x1 } else { x0 + 1.0 })
}

/// The y range of one panel: zero and every value, with headroom, never empty.
fn y_range(panel: &Panel, layers: &[Layer]) -> (f64, f64) {
    let ys = || {
        layers
            .iter()
            .flat_map(all_points)
            .map(|p| p.1)
            .chain([0.0, panel.y_max_at_least])
    };
    let (y0, mut y1) = (finite_min(ys()), finite_max(ys()));
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.08;
    // Headroom above the tallest line; below zero only when data goes there.
    (if y0 < 0.0 { y0 - pad } else { y0 }, y1 + pad)
}

/// Runs of finite points: a NaN breaks the line.
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    points
        .split(|p| !p.1.is_finite())
        .filter(|run| !run.is_empty())
        .map(<[(f64, f64)]>::to_vec)
        .collect()
}

enum Swatch {
    Line(RGBColor),
    Dashed(RGBColor),
    Fill(RGBColor),
    Mark(RGBColor),
}

fn legend_items(plot: &Plot, panels: &[Vec<Layer>]) -> Vec<(Swatch, String)> {
    let mut items: Vec<(Swatch, String)> = panels
        .iter()
        .flatten()
        .map(|layer| {
            let swatch = match layer.kind {
                Kind::Line => Swatch::Line(layer.color),
                Kind::Dashed => Swatch::Dashed(layer.color),
                Kind::Area | Kind::Band { .. } => Swatch::Fill(layer.color),
            };
            (swatch, layer.label.clone())
        })
        .collect();
    items.extend(
        plot.spans
            .iter()
            .map(|s| (Swatch::Fill(tint(s.color, 0.25)), s.label.clone())),
    );
    items.extend(
        plot.marks
            .iter()
            .map(|m| (Swatch::Mark(m.color), m.label.clone())),
    );
    items
}

/// Tick labels for an axis spanning up to `magnitude`: one k/M/G step for
/// every tick, so `5000` never sits next to `15k`.
fn tick_label(magnitude: f64) -> impl Fn(&f64) -> String {
    let (divisor, suffix) = scale_for(magnitude);
    move |v: &f64| {
        if *v == 0.0 {
            "0".to_owned()
        } else {
            format!("{}{suffix}", trimmed(*v / divisor))
        }
    }
}

/// Share of the body height per panel, top to bottom.
fn panel_heights(total: u32, panels: usize) -> Vec<u32> {
    match panels {
        0 | 1 => vec![total],
        n => {
            // The first panel is the main one; the others share 40%.
            let first = total * 60 / 100;
            let rest = (total - first) / (n as u32 - 1);
            std::iter::once(first)
                .chain(std::iter::repeat_n(rest, n - 1))
                .collect()
        }
    }
}

fn draw<DB: DrawingBackend>(plot: &Plot, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (panels, bucket) = thinned(plot);
    let (header, rest) = root.split_vertically(HEADER_PX);
    header.draw(&Text::new(
        plot.title.clone(),
        (MARGIN_PX, 10),
        font(TITLE_PX),
    ))?;
    let mut subtitle = plot.subtitle.clone();
    if bucket > 1 {
        subtitle.push_str(&format!(" · each point: max of {bucket} s"));
    }
    header.draw(&Text::new(
        subtitle,
        (MARGIN_PX, 42),
        font(SUBTITLE_PX).color(&GREY),
    ))?;

    let items = legend_items(plot, &panels);
    let rows = legend_layout(root, &items)?;
    let legend_height = LEGEND_ROW_PX * rows.len() as u32 + 6;
    let (legend, mut body) = rest.split_vertically(legend_height);
    draw_legend(&legend, &items, &rows)?;

    let x = x_range(plot, &panels);
    let body_height = body.dim_in_pixel().1;
    let heights = panel_heights(body_height, plot.panels.len());
    let count = plot.panels.len();
    for (index, (panel, layers)) in plot.panels.iter().zip(&panels).enumerate() {
        let area = if index + 1 < count {
            let (top, below) = body.split_vertically(heights[index]);
            body = below;
            top
        } else {
            body.clone()
        };
        draw_panel(plot, panel, layers, &area, x, index + 1 == count)?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    plot: &Plot,
    panel: &Panel,
    layers: &[Layer],
    area: &DrawingArea<DB, Shift>,
    (x0, x1): (f64, f64),
    bottom: bool,
) -> DrawResult<DB> {
    let (y0, y1) = y_range(panel, layers);
    let mut chart = ChartBuilder::on(area)
        .margin_left(MARGIN_PX)
        .margin_right(28)
        .margin_top(6)
        .margin_bottom(if bottom { 8 } else { 4 })
        .x_label_area_size(if bottom { 50 } else { 0 })
        .y_label_area_size(84)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let x_label = tick_label(x0.abs().max(x1.abs()));
    let y_label = tick_label(y0.abs().max(y1.abs()));
    let mut mesh = chart.configure_mesh();
    mesh.y_desc(panel.y_desc.as_str())
        .x_labels(12)
        .y_labels(if bottom { 8 } else { 5 })
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(font(TICK_PX))
        .axis_desc_style(font(AXIS_DESC_PX))
        .bold_line_style(RGBColor(225, 225, 225))
        .max_light_lines(0)
        .axis_style(GREY);
    if bottom {
        mesh.x_desc(X_DESC);
    }
    mesh.draw()?;

    for span in &plot.spans {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(span.from_s, y0), (span.to_s, y1)],
            tint(span.color, 0.25).filled(),
        )))?;
    }
    for layer in layers {
        draw_layer(&mut chart, layer)?;
    }
    for mark in &plot.marks {
        chart.draw_series(std::iter::once(DashedPathElement::new(
            vec![(mark.at_s, y0), (mark.at_s, y1)],
            6,
            4,
            mark.color.stroke_width(1),
        )))?;
    }
    if y0 < 0.0 {
        // Where zero is, when the axis goes below it.
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x0, 0.0), (x1, 0.0)],
            GREY.stroke_width(1),
        )))?;
    }
    Ok(())
}

fn draw_layer<DB: DrawingBackend>(chart: &mut TimeChart<'_, DB>, layer: &Layer) -> DrawResult<DB> {
    let color = layer.color;
    match &layer.kind {
        Kind::Line => {
            for run in segments(&layer.points) {
                chart.draw_series(LineSeries::new(run, color.stroke_width(2)))?;
            }
        }
        Kind::Dashed => {
            for run in segments(&layer.points) {
                chart.draw_series(DashedLineSeries::new(run, 9, 6, color.stroke_width(2)))?;
            }
        }
        Kind::Area => {
            for run in segments(&layer.points) {
                chart.draw_series(
                    AreaSeries::new(run, 0.0, color.filled()).border_style(color.stroke_width(1)),
                )?;
            }
        }
        Kind::Band { lower } => {
            let pairs: Vec<(f64, f64, f64)> = layer
                .points
                .iter()
                .zip(lower)
                .map(|(up, low)| (up.0, low.1, up.1))
                .collect();
            for run in pairs.split(|p| !(p.1.is_finite() && p.2.is_finite())) {
                if run.len() < 2 {
                    continue;
                }
                let mut outline: Vec<(f64, f64)> = run.iter().map(|p| (p.0, p.2)).collect();
                outline.extend(run.iter().rev().map(|p| (p.0, p.1)));
                chart.draw_series(std::iter::once(Polygon::new(outline, color.filled())))?;
            }
        }
    }
    Ok(())
}

/// Legend items per row, wrapped to the chart's width.
fn legend_layout<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    items: &[(Swatch, String)],
) -> Result<LegendRows, DrawingAreaErrorKind<DB::ErrorType>> {
    let usable = CHART_WIDTH_PX as i32 - 2 * MARGIN_PX;
    let mut rows: Vec<Vec<(usize, i32)>> = vec![Vec::new()];
    let mut x = MARGIN_PX;
    for (index, (_, label)) in items.iter().enumerate() {
        let (text_width, _) = root.estimate_text_size(label, &font(LEGEND_PX))?;
        let width = SWATCH_PX + 8 + text_width as i32 + 26;
        if x + width > MARGIN_PX + usable && x > MARGIN_PX {
            rows.push(Vec::new());
            x = MARGIN_PX;
        }
        if let Some(row) = rows.last_mut() {
            row.push((index, x));
        }
        x += width;
    }
    Ok(rows)
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    items: &[(Swatch, String)],
    rows: &[Vec<(usize, i32)>],
) -> DrawResult<DB> {
    for (row_index, row) in rows.iter().enumerate() {
        let y = LEGEND_ROW_PX as i32 * row_index as i32 + LEGEND_ROW_PX as i32 / 2;
        for &(index, x) in row {
            let (swatch, label) = &items[index];
            match swatch {
                Swatch::Line(color) => {
                    area.draw(&PathElement::new(
                        vec![(x, y), (x + SWATCH_PX, y)],
                        color.stroke_width(3),
                    ))?;
                }
                Swatch::Dashed(color) => {
                    for dash in [0, 11, 22] {
                        area.draw(&PathElement::new(
                            vec![(x + dash, y), (x + dash + 6, y)],
                            color.stroke_width(3),
                        ))?;
                    }
                }
                Swatch::Fill(color) => {
                    area.draw(&Rectangle::new(
                        [(x, y - 7), (x + SWATCH_PX, y + 7)],
                        color.filled(),
                    ))?;
                }
                Swatch::Mark(color) => {
                    for dash in [-9, 1] {
                        area.draw(&PathElement::new(
                            vec![
                                (x + SWATCH_PX / 2, y + dash),
                                (x + SWATCH_PX / 2, y + dash + 7),
                            ],
                            color.stroke_width(2),
                        ))?;
                    }
                }
            }
            let style = font(LEGEND_PX).pos(Pos::new(HPos::Left, VPos::Center));
            area.draw(&Text::new(label.clone(), (x + SWATCH_PX + 8, y), style))?;
        }
    }
    Ok(())
}
