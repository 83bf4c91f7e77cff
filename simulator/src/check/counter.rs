//! I8: the displayed hot counter never goes down for a reader, and stays within
//! 1% of the true total: a value shown at `t` is at least 99% of everything
//! awarded up to `t - lag` (the plan's interval) and at most 101% of everything
//! awarded up to `t`. The truth is recomputed here from the history (every cash
//! amount first issued or accepted), not taken from the counter. With no lag (plan
//! 1 writes straight to its keys) the floor is what was answered before the read
//! in the history: an award answered later in the same millisecond may be missing.

use std::collections::BTreeMap;

use super::{Invariant, Violation, violation};
use crate::history::{Event, History};

/// Allowed error against the truth: 1% (as a fraction).
const TOLERANCE: f64 = 0.01;

pub(super) fn check(history: &History) -> Vec<Violation> {
    // Cumulative truth, in event order (events are in answer order, so at_ms rises).
    let mut truth: Vec<(u64, u64)> = Vec::new();
    let mut total = 0u64;
    for event in &history.events {
        if let Event::Issue { at_ms, outcome, .. } = event {
            let cents = outcome.newly_awarded_cents();
            if cents > 0 {
                total = total.saturating_add(cents);
                truth.push((*at_ms, total));
            }
        }
    }
    let truth_at = |t: u64| -> u64 {
        match truth.partition_point(|(at, _)| *at <= t) {
            0 => 0,
            n => truth[n - 1].1,
        }
    };
    let mut found = Vec::new();
    let mut last_shown: BTreeMap<u32, (u64, i64)> = BTreeMap::new();
    // Everything answered before the current event.
    let mut answered = 0u64;
    for event in &history.events {
        if let Event::Issue { outcome, .. } = event {
            answered = answered.saturating_add(outcome.newly_awarded_cents());
        }
        let Event::CounterRead {
            at_ms,
            reader,
            shown,
            lag_ms,
        } = event
        else {
            continue;
        };
        if let Some((before_ms, before)) = last_shown.get(reader)
            && shown < before
        {
            found.push(violation(
                Invariant::I8Counter,
                format!("reader {reader}"),
                format!(
                    "showed {before} at {before_ms} ms, then {shown} at {at_ms} ms: it went down"
                ),
            ));
        }
        last_shown.insert(*reader, (*at_ms, *shown));
        let floor =
            truth_at(at_ms.saturating_sub(*lag_ms)).min(answered) as f64 * (1.0 - TOLERANCE);
        let ceiling = truth_at(*at_ms) as f64 * (1.0 + TOLERANCE);
        let value = *shown as f64;
        if value < floor.floor() || value > ceiling.ceil() {
            found.push(violation(
                Invariant::I8Counter,
                format!("reader {reader} at {at_ms} ms"),
                format!(
                    "showed {shown}; the truth was {} at {} ms (lag {lag_ms} ms) and {} now: more than 1% off",
                    truth_at(at_ms.saturating_sub(*lag_ms)),
                    at_ms.saturating_sub(*lag_ms),
                    truth_at(*at_ms)
                ),
            ));
        }
    }
    found
}
