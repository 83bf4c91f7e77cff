//! The hashes and comparisons that prove two runs the same: the history hash, the
//! record without its wall-clock fields, the first line where two records differ.

use reports::{RunRecord, Wall};

use crate::history::History;

/// BLAKE3 over the JSON of every event, in order.
pub fn history_hash(history: &History) -> String {
    let mut hasher = blake3::Hasher::new();
    for event in &history.events {
        // Serialising plain data structs to JSON cannot fail.
        let line = serde_json::to_vec(event).expect("events serialise");
        hasher.update(&line);
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

/// The record as JSON without its wall-clock fields: what must be byte-identical
/// between two runs of the same scenario, seed and options.
pub fn deterministic_json(record: &RunRecord) -> String {
    let mut record = record.clone();
    record.wall = Wall::default();
    // Plain data serialises without failing.
    serde_json::to_string_pretty(&record).expect("records serialise")
}

/// Where two records differ (apart from wall-clock fields): the first differing
/// line of their JSON, or `None` when they are byte-identical.
pub fn record_difference(a: &RunRecord, b: &RunRecord) -> Option<String> {
    let (a, b) = (deterministic_json(a), deterministic_json(b));
    if a == b {
        return None;
    }
    let line = a
        .lines()
        .zip(b.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| format!("line {}: `{}` vs `{}`", i + 1, x.trim(), y.trim()))
        .unwrap_or_else(|| "the records differ in length".to_owned());
    Some(line)
}
