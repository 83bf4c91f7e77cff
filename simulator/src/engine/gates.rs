//! The capacity gates a request passes before the wallet sees it (app, DB or KV,
//! the coupon template's hot key). Never the capacity model's arithmetic, which
//! is `scenario::capacity`.

use reference::config::{AwardDef, Crediting};

use super::Engine;
use crate::trace::{Op, Request};

/// What a request needs from the capacity model. The database's capacity counts
/// write transactions (the seed's "instances for N TPS" are crediting TPS);
/// reads are served by replicas and caches and are not gated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cost {
    /// Answered from the KV (token cash, pipeline coupons).
    Kv,
    /// A write transaction now (sync credits, withdraws).
    Db,
    /// Reads only (wallet pages).
    Read,
}

impl Engine<'_> {
    /// The capacity gates a request passes before the wallet sees it: app
    /// instances, then the database or the KV, then the hot key of a coupon
    /// template. `Some(reason)` turns it away.
    pub(super) fn admit(&mut self, op: &Op) -> Option<&'static str> {
        let now_ms = op.at_ms;
        if !self.capacity.app.try_take(now_ms, 1) {
            return Some("capacity.app");
        }
        let (cost, template) = self.cost(&op.request);
        match cost {
            Cost::Db if !self.capacity.db.try_take(now_ms, 1) => return Some("capacity.db"),
            Cost::Kv if !self.capacity.kv.try_take(now_ms, 1) => return Some("capacity.kv"),
            _ => {}
        }
        if let Some(template) = template
            && !self.capacity.try_key(template, now_ms, 1)
        {
            return Some("capacity.kv_key");
        }
        None
    }

    /// Which store a request leans on, and the coupon template key it hits.
    pub(super) fn cost(&self, request: &Request) -> (Cost, Option<u64>) {
        let issue = match request {
            Request::Issue(issue) => issue,
            Request::Withdraw(_) => return (Cost::Db, None),
            Request::View { .. } => return (Cost::Read, None),
        };
        let Some(activity) = self.scenario.tree.activity(issue.activity_id) else {
            return (Cost::Kv, None);
        };
        let scene = issue
            .order_no
            .split('_')
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
            .and_then(|id| activity.scenes.get(&id));
        match scene {
            // One stock INCR per request on the template's key: the hot key.
            Some(s) if s.crediting == Crediting::Sync => {
                let template = if s.stock_control {
                    self.template_of(issue)
                } else {
                    None
                };
                (Cost::Db, template)
            }
            _ => (Cost::Kv, None),
        }
    }

    /// The coupon template an award request names, if it names one.
    pub(super) fn template_of(&self, issue: &reference::wallet::IssueRequest) -> Option<u64> {
        match self
            .scenario
            .tree
            .activity(issue.activity_id)?
            .awards
            .get(&issue.award_id)?
        {
            AwardDef::Coupon(c) => Some(c.template_id),
            _ => None,
        }
    }
}
