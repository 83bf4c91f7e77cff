//! Checks mid-run (`--check-every-s`): the checkers on the history so far and a
//! snapshot of the stores, and how their findings merge with the end's.

use reports::MidwayCheck;

use super::Engine;
use crate::check::{self, Violation};
use crate::history::History;
use crate::stores::Snapshot;

/// Checks mid-run (`--check-every-s`): every `every_s` virtual seconds the
/// checkers run on the history so far and a snapshot of the stores.
pub(super) struct Midway {
    pub(super) every_s: u64,
    pub(super) snapshot: Snapshot,
    pub(super) checks: Vec<MidwayCheck>,
    /// Violations found, with the second they were first seen, in the order found.
    pub(super) found: Vec<(u64, Violation)>,
    /// `found`'s violations, for a lookup per violation of each check.
    pub(super) seen: std::collections::BTreeSet<(check::Invariant, String, String)>,
}

/// A violation's identity, for telling checks' findings apart.
fn violation_key(v: &Violation) -> (check::Invariant, String, String) {
    (v.invariant, v.culprit.clone(), v.detail.clone())
}

impl Midway {
    /// Check at `at_s` virtual seconds since the start.
    pub(super) async fn check(
        &mut self,
        tree: &reference::ActivityTree,
        history: &History,
        at_s: u64,
    ) -> anyhow::Result<()> {
        let state = self.snapshot.read(history).await?.midway();
        let violations = check::check_all(tree, history, &state);
        self.checks.push(MidwayCheck {
            t_s: at_s,
            violations: violations.len() as u64,
        });
        for violation in violations {
            if self.seen.insert(violation_key(&violation)) {
                self.found.push((at_s, violation));
            }
        }
        Ok(())
    }

    /// The end's violations, then those seen only mid-run (a violation that
    /// healed by the end still fails the run), in invariant order.
    pub(super) fn merge_into(self, mut at_end: Vec<Violation>) -> Vec<Violation> {
        let end: std::collections::BTreeSet<_> = at_end.iter().map(violation_key).collect();
        for (t_s, mut violation) in self.found {
            if end.contains(&violation_key(&violation)) {
                continue;
            }
            violation.detail = format!("{} (mid-run, at {t_s} s)", violation.detail);
            at_end.push(violation);
        }
        at_end.sort_by_key(|v| v.invariant);
        at_end
    }
}

impl Engine<'_> {
    /// With `--check-every-s`: check the invariants when `seconds` virtual
    /// seconds since the start are a multiple of the interval.
    pub(super) async fn check_midway(&mut self, seconds: u64) -> anyhow::Result<()> {
        if let Some(midway) = &mut self.midway
            && seconds.is_multiple_of(midway.every_s)
        {
            midway
                .check(&self.scenario.tree, &self.history, seconds)
                .await?;
        }
        Ok(())
    }
}
