//! Request counters in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Requests answered, by route and outcome label.
#[derive(Debug, Default)]
pub(super) struct Metrics {
    answered: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    pub(super) fn count(&self, route: &'static str, outcome: &'static str) {
        let mut map = self
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry((route, outcome)).or_default() += 1;
    }

    /// The exposition: the counters, then `gauges` as (name, side, value).
    pub(super) fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let map = self
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut out = String::new();
        out.push_str("# HELP redrain_requests_total Requests answered, by route and outcome.\n");
        out.push_str("# TYPE redrain_requests_total counter\n");
        for ((route, outcome), n) in &map {
            let _ = writeln!(
                out,
                "redrain_requests_total{{route=\"{route}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, side, value) in gauges {
            if seen.insert(*name) {
                let _ = writeln!(out, "# TYPE {name} gauge");
            }
            let _ = writeln!(out, "{name}{{side=\"{side}\"}} {value}");
        }
        out
    }
}
