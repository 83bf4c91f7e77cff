//! The client side the engine plays: sending a request to the wallet, keeping
//! token copies, presenting them (and sometimes a forgery) on withdraw, counting
//! what each user is owed. Never the wallet's decisions.

use anyhow::Context as _;
use rand::RngExt;
use reference::Clock;
use reference::token::decode_unverified;
use reference::wallet::{CLIENT_TOKENS_MAX, IssueOutcome, WithdrawOutcome};

use super::Engine;
use crate::history::Event;
use crate::trace::Request;

/// Flow lines a simulated wallet page asks for.
const VIEW_PAGE_LIMIT: usize = 20;

impl Engine<'_> {
    pub(super) fn note_outcome(&mut self, label: &str, success: bool) {
        if success {
            self.window.awarded += 1;
        } else if label != "duplicate" {
            *self.window.rejected.entry(label.to_owned()).or_default() += 1;
        }
    }

    pub(super) async fn send(&mut self, request: Request) -> anyhow::Result<()> {
        let at_ms = self.clock.now_ms();
        let event = match request {
            Request::Issue(request) => {
                let answer = match &self.pipeline {
                    Some(pipeline) => pipeline.issue(&request, false).await,
                    None => self.wallet.issue(&request).await,
                };
                let Some(outcome) = self
                    .answered(answer)
                    .with_context(|| format!("issuing {}", request.order_no))?
                else {
                    return Ok(());
                };
                if let IssueOutcome::Accepted { token } | IssueOutcome::DuplicateToken { token } =
                    &outcome
                {
                    let copies = self.client_tokens.entry(token.act_id).or_default();
                    if copies.is_empty() {
                        self.token_holders.push(token.act_id);
                    }
                    if !copies.contains(&token.bytes) {
                        copies.push(token.bytes.clone());
                    }
                    if matches!(outcome, IssueOutcome::Accepted { .. }) {
                        self.summary.accepted += 1;
                    }
                }
                let success = matches!(
                    outcome,
                    IssueOutcome::Issued { .. }
                        | IssueOutcome::Accepted { .. }
                        | IssueOutcome::Queued { .. }
                );
                self.note_outcome(outcome.label(), success);
                let cents = outcome.newly_awarded_cents();
                if cents > 0 {
                    // Awarded, so the order number parsed.
                    let act_id = request
                        .order_no
                        .parse::<reference::OrderNo>()
                        .map_or(0, |o| o.act_id);
                    *self.owed.entry(act_id).or_default() += cents;
                    if let Some(counter) = &mut self.counter {
                        counter.add(act_id, cents).await;
                    }
                }
                Event::Issue {
                    at_ms,
                    request,
                    outcome,
                }
            }
            Request::Withdraw(mut request) => {
                let copies = self
                    .client_tokens
                    .get(&request.act_id)
                    .map(|c| {
                        let keep = c.len().min(CLIENT_TOKENS_MAX - 1);
                        c[c.len() - keep..].to_vec()
                    })
                    .unwrap_or_default();
                request.client_tokens = copies;
                if self.rng.random::<f64>() < self.scenario.traffic.forged_token_rate {
                    request.client_tokens.push(self.forge(request.act_id));
                    self.summary.forged_presented += 1;
                }
                let answer = self.wallet.withdraw(&request).await;
                let Some(outcome) = self
                    .answered(answer)
                    .with_context(|| format!("withdrawing {}", request.withdraw_no))?
                else {
                    return Ok(());
                };
                if let WithdrawOutcome::Withdrawn { force, .. }
                | WithdrawOutcome::Rejected { force, .. } = &outcome
                {
                    self.summary.force_credited += u64::from(force.credited);
                }
                if let WithdrawOutcome::Withdrawn { .. } = &outcome {
                    let owed = self.owed.entry(request.act_id).or_default();
                    *owed = owed.saturating_sub(request.amount_cents.max(0) as u64);
                }
                let label = outcome.label();
                self.note_outcome(label, label == "withdrawn");
                Event::Withdraw {
                    at_ms,
                    request,
                    outcome,
                }
            }
            Request::View { act_id } => {
                let activity_id = self.scenario.activity_id;
                let answer = self
                    .wallet
                    .view(activity_id, act_id, None, VIEW_PAGE_LIMIT)
                    .await;
                let Some(page) = self.answered(answer).context("viewing the wallet")? else {
                    return Ok(());
                };
                match page {
                    Ok(view) => {
                        self.views.views += 1;
                        let owed = self.owed.get(&act_id).copied().unwrap_or(0);
                        if view.complete && view.balance_cents < owed {
                            self.views.short += 1;
                        }
                        if view.pending_cents > 0 {
                            self.views.plain_async_short += 1;
                            self.views.plain_async_hidden_max_cents = self
                                .views
                                .plain_async_hidden_max_cents
                                .max(view.pending_cents);
                        }
                        Event::View {
                            at_ms,
                            activity_id,
                            act_id,
                            view,
                        }
                    }
                    // No child open: nothing to show, nothing to check.
                    Err(_) => return Ok(()),
                }
            }
        };
        self.history.events.push(event);
        Ok(())
    }

    /// The wallet's answer, or `None` when a store failed under it (a fault: the
    /// client sees a server error, counted as `error.ledger` / `error.kv`, and the
    /// request is not in the history). Other errors end the run: they are bugs.
    pub(super) fn answered<T>(
        &mut self,
        answer: Result<T, reference::wallet::WalletError>,
    ) -> anyhow::Result<Option<T>> {
        let label = match &answer {
            Ok(_) => return Ok(answer.ok()),
            Err(reference::wallet::WalletError::Ledger(_)) => "error.ledger",
            Err(reference::wallet::WalletError::Kv(_)) => "error.kv",
            Err(_) => return answer.map(Some).map_err(anyhow::Error::from),
        };
        *self.window.rejected.entry(label.to_owned()).or_default() += 1;
        *self.refused.entry(label.to_owned()).or_default() += 1;
        Ok(None)
    }

    /// A token the wallet must refuse: a changed byte, another user's token, an
    /// invented order signed with a foreign key, or junk.
    pub(super) fn forge(&mut self, act_id: u64) -> Vec<u8> {
        let own = self
            .client_tokens
            .get(&act_id)
            .filter(|c| !c.is_empty())
            .cloned();
        let kind = self.rng.random_range(0..4u8);
        match (kind, own) {
            (0, Some(own)) => {
                let mut tampered = own[self.rng.random_range(0..own.len())].clone();
                let index = self.rng.random_range(0..tampered.len());
                tampered[index] ^= 1 << self.rng.random_range(0..8u32);
                tampered
            }
            (1, _) => {
                // Another user's copy.
                let holders = self.token_holders.len();
                if holders == 0 || (holders == 1 && self.token_holders[0] == act_id) {
                    return b"not a token".to_vec();
                }
                let mut index = self.rng.random_range(0..holders);
                if self.token_holders[index] == act_id {
                    index = (index + 1) % holders;
                }
                let copies = &self.client_tokens[&self.token_holders[index]];
                copies[self.rng.random_range(0..copies.len())].clone()
            }
            (2, Some(own)) => {
                let real = decode_unverified(&own[0]).expect("the client's own copy decodes");
                // New money: an order number never issued, signed with a foreign key.
                let mut invented = real.clone();
                invented.order_no.rain_id = invented.order_no.rain_id.wrapping_add(1_000_000);
                self.forger.sign(&invented).expect("the forger signs")
            }
            _ => b"not a token".to_vec(),
        }
    }
}
