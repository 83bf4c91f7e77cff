//! The wallet page: balance, cumulative income and the flow — credited cash,
//! withdrawals and pending tokens (issued, not yet credited) — newest first, with
//! a cursor. The same totals before and after a token is credited (I5): a credit is
//! dated at its token's open time, and a token counts as pending exactly until its
//! order number is in the ledger.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Rejection, Wallet, WalletError};
use crate::kv::LIST_RANGE_MAX;
use crate::ledger::{AccountKey, Cursor, EntryKind, HISTORY_PAGE_LIMIT_MAX};
use crate::order_no::OrderNo;
use crate::switches::Switch;
use crate::token::STATUS_SUCCESS;
use crate::{ActId, ActivityId, ChildId, Millis, keys};

/// Most ledger entries one view reads for a user; a user beyond it gets an error
/// rather than a silently short flow.
pub const FLOW_ENTRIES_MAX: usize = 10_000;

/// What a flow line is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// Cash credited to the ledger.
    Credited,
    /// Issued as a token, not yet credited; counted in balance and income.
    Pending,
    /// Cash withdrawn.
    Withdrawal,
}

/// One flow line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowItem {
    /// Award or withdraw time.
    pub at_ms: Millis,
    /// What it is.
    pub kind: FlowKind,
    /// The order number or the withdraw number.
    pub id: String,
    /// Signed cents: credits and pending positive, withdrawals negative.
    pub amount_cents: i64,
}

impl FlowItem {
    /// Newest first; ties broken by kind and id so the order is total.
    fn sort_key(
        &self,
    ) -> (
        std::cmp::Reverse<Millis>,
        std::cmp::Reverse<FlowKind>,
        std::cmp::Reverse<String>,
    ) {
        (
            std::cmp::Reverse(self.at_ms),
            std::cmp::Reverse(self.kind),
            std::cmp::Reverse(self.id.clone()),
        )
    }
}

/// Where the next flow page starts: after this line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowCursor {
    /// The last line's time.
    pub at_ms: Millis,
    /// The last line's kind.
    pub kind: FlowKind,
    /// The last line's id.
    pub id: String,
}

/// The wallet page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WalletView {
    /// The child activity shown.
    pub child_id: ChildId,
    /// The user.
    pub act_id: ActId,
    /// Credited balance plus pending tokens.
    pub balance_cents: u64,
    /// Cash ever awarded: credited plus pending.
    pub income_cents: u64,
    /// Cash withdrawn.
    pub withdrawn_cents: u64,
    /// Part of the balance still in tokens.
    pub pending_cents: u64,
    /// Tokens not yet credited.
    pub pending_tokens: u32,
    /// A page of the flow; empty when the flow list is switched off.
    pub flow: Vec<FlowItem>,
    /// Present when more lines follow.
    pub next: Option<FlowCursor>,
    /// False when a switch degraded this view (token KV or flow list off).
    pub complete: bool,
}

impl Wallet {
    /// The user's wallet page in the child open now.
    pub async fn view(
        &self,
        activity_id: ActivityId,
        act_id: ActId,
        cursor: Option<FlowCursor>,
        limit: usize,
    ) -> Result<Result<WalletView, Rejection>, WalletError> {
        let child = match self.child_now(activity_id, self.clock.now_ms()) {
            Ok(child) => child,
            Err(reason) => return Ok(Err(reason)),
        };
        let account_key = AccountKey {
            child_id: child.id,
            act_id,
        };
        // Token statuses first, ledger second: a token credited in between is then
        // counted twice (shows more) rather than not at all (shows less).
        let token_kv = self.switches.is_on(Switch::TokenKv);
        let mut candidates = Vec::new();
        if let (Some(keys), true) = (&self.keys, token_kv) {
            let list_key = keys::user_tokens(child.id, act_id);
            for bytes in self.kv.list_range(&list_key, LIST_RANGE_MAX).await? {
                let facts = keys
                    .verify(&bytes)
                    .map_err(|error| WalletError::CorruptToken {
                        key: list_key.clone(),
                        error,
                    })?;
                let status = self
                    .kv
                    .status(&keys::token_status(child.id, &facts.order_no.to_string()))
                    .await?;
                if status != Some(STATUS_SUCCESS) {
                    candidates.push(facts);
                }
            }
        }
        // Balance, income and withdrawals come from the same entries that say
        // which tokens are credited, not from a separate account read: a token
        // credited between two reads would otherwise be in neither (the page
        // would dip by its amount while it credits). Pages run newest first, so
        // an entry posted mid-read is simply not seen yet; its token still
        // counts as pending.
        let mut credited_cents = 0u64;
        let mut withdrawn_cents = 0u64;
        let mut flow = Vec::new();
        let mut credited: BTreeSet<OrderNo> = BTreeSet::new();
        let mut page_cursor: Option<Cursor> = None;
        let mut read = 0usize;
        loop {
            let page = self
                .ledger
                .history(account_key, page_cursor, HISTORY_PAGE_LIMIT_MAX)
                .await?;
            read += page.entries.len();
            for entry in page.entries {
                match entry.kind {
                    EntryKind::Credit { order_no, award } => {
                        credited_cents = credited_cents.saturating_add(award.cash_cents());
                        if award.cash_cents() > 0 {
                            flow.push(FlowItem {
                                at_ms: entry.at_ms,
                                kind: FlowKind::Credited,
                                id: order_no.to_string(),
                                amount_cents: award.cash_cents() as i64,
                            });
                        }
                        credited.insert(order_no);
                    }
                    EntryKind::Withdrawal {
                        withdraw_no,
                        amount_cents,
                    } => {
                        withdrawn_cents = withdrawn_cents.saturating_add(amount_cents);
                        flow.push(FlowItem {
                            at_ms: entry.at_ms,
                            kind: FlowKind::Withdrawal,
                            id: withdraw_no,
                            amount_cents: -(amount_cents as i64),
                        });
                    }
                }
            }
            match page.next {
                Some(next) if read < FLOW_ENTRIES_MAX => page_cursor = Some(next),
                Some(_) => {
                    return Err(WalletError::Ledger(crate::ledger::LedgerError::Misuse(
                        format!(
                            "user {act_id} has more than {FLOW_ENTRIES_MAX} ledger entries; the view does not truncate silently"
                        ),
                    )));
                }
                None => break,
            }
        }
        let mut pending_cents = 0u64;
        let mut pending_tokens = 0u32;
        for facts in candidates
            .into_iter()
            .filter(|f| !credited.contains(&f.order_no))
        {
            pending_cents = pending_cents.saturating_add(facts.amount_cents);
            pending_tokens += 1;
            flow.push(FlowItem {
                at_ms: facts.open_time_ms,
                kind: FlowKind::Pending,
                id: facts.order_no.to_string(),
                amount_cents: facts.amount_cents as i64,
            });
        }
        let flow_on = self.switches.is_on(Switch::FlowList);
        let (flow, next) = if flow_on {
            page_of(flow, cursor, limit)
        } else {
            (Vec::new(), None)
        };
        Ok(Ok(WalletView {
            child_id: child.id,
            act_id,
            balance_cents: credited_cents
                .saturating_sub(withdrawn_cents)
                .saturating_add(pending_cents),
            income_cents: credited_cents.saturating_add(pending_cents),
            withdrawn_cents,
            pending_cents,
            pending_tokens,
            flow,
            next,
            complete: flow_on && (token_kv || self.keys.is_none()),
        }))
    }
}

fn page_of(
    mut flow: Vec<FlowItem>,
    cursor: Option<FlowCursor>,
    limit: usize,
) -> (Vec<FlowItem>, Option<FlowCursor>) {
    let limit = limit.clamp(1, HISTORY_PAGE_LIMIT_MAX);
    flow.sort_by_key(FlowItem::sort_key);
    let start = match cursor {
        None => 0,
        Some(c) => {
            let after = FlowItem {
                at_ms: c.at_ms,
                kind: c.kind,
                id: c.id,
                amount_cents: 0,
            }
            .sort_key();
            flow.partition_point(|item| item.sort_key() <= after)
        }
    };
    let page: Vec<FlowItem> = flow.iter().skip(start).take(limit).cloned().collect();
    let next = (start + page.len() < flow.len())
        .then(|| {
            page.last().map(|last| FlowCursor {
                at_ms: last.at_ms,
                kind: last.kind,
                id: last.id.clone(),
            })
        })
        .flatten();
    (page, next)
}
