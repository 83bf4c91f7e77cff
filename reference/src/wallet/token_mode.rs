//! Token mode: validate and reserve as the sync path does, then sign a token,
//! record it once (record, user list and pending queue in one KV verb) and hand it
//! back. The credit worker credits it later; the order number stays the key.

use serde::{Deserialize, Serialize};

use super::{
    IssueOutcome, IssueRequest, Reservation, ValidIssue, Wallet, WalletError, hex_bytes, replayed,
};
use crate::clock::Millis;
use crate::keys;
use crate::kv::Kv;
use crate::ledger::{AccountKey, Award, Credit};
use crate::order_no::OrderNo;
use crate::switches::Switch;
use crate::token::{STATUS_SUCCESS, TokenFacts};
use crate::{ActId, ChildId};

/// A token as the issue answer carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssuedToken {
    /// The child activity.
    pub child_id: ChildId,
    /// The user.
    pub act_id: ActId,
    /// The order number.
    pub order_no: OrderNo,
    /// The award id.
    pub award_id: u64,
    /// Cents.
    pub amount_cents: u64,
    /// When it was opened; the credit is dated at this time.
    pub open_time_ms: Millis,
    /// The signed token; the client keeps this copy.
    #[serde(with = "hex_bytes")]
    #[schema(value_type = String)]
    pub bytes: Vec<u8>,
}

impl IssuedToken {
    pub(crate) fn new(facts: &TokenFacts, bytes: Vec<u8>) -> Self {
        Self {
            child_id: facts.child_id,
            act_id: facts.act_id,
            order_no: facts.order_no.clone(),
            award_id: facts.award_id,
            amount_cents: facts.amount_cents,
            open_time_ms: facts.open_time_ms,
            bytes,
        }
    }
}

/// The ledger credit a token stands for, dated at its open time so the flow order
/// is the same before and after crediting.
pub(crate) fn credit_of(facts: &TokenFacts) -> Credit {
    Credit {
        account: AccountKey {
            child_id: facts.child_id,
            act_id: facts.act_id,
        },
        order_no: facts.order_no.clone(),
        award: Award::Cash {
            amount_cents: facts.amount_cents,
        },
        at_ms: facts.open_time_ms,
    }
}

/// Mark a token credited: status 8, and out of the inflight set. Best effort: a
/// failure leaves it for the compensation scan, which finds the ledger idempotent.
pub(crate) async fn mark_credited(
    kv: &dyn Kv,
    child_id: ChildId,
    order_no: &OrderNo,
    bytes: &[u8],
) {
    let _ignored = kv
        .put_status(
            &keys::token_status(child_id, &order_no.to_string()),
            STATUS_SUCCESS,
            None,
        )
        .await;
    let _ignored = kv.inflight_remove(&keys::inflight(child_id), bytes).await;
}

fn same_award(a: &TokenFacts, b: &TokenFacts) -> bool {
    a.act_id == b.act_id
        && a.child_id == b.child_id
        && a.award_id == b.award_id
        && a.amount_cents == b.amount_cents
}

impl Wallet {
    pub(super) async fn issue_token(
        &self,
        valid: &ValidIssue<'_>,
        request: &IssueRequest,
        now_ms: Millis,
    ) -> Result<IssueOutcome, WalletError> {
        let keys = self.keys.clone().ok_or(WalletError::NoTokenKeys {
            scene_id: valid.scene.id,
        })?;
        let child_id = valid.child.id;
        let order_text = valid.order_no.to_string();
        let record_key = keys::token_record(child_id, &order_text);
        let facts = TokenFacts {
            app_id: i64::from(request.app_id),
            act_id: valid.order_no.act_id,
            activity_id: valid.activity.id,
            child_id,
            order_no: valid.order_no.clone(),
            award_id: request.award_id,
            amount_cents: valid.award.cash_cents(),
            open_time_ms: now_ms,
        };
        if self.switches.is_on(Switch::IdempotencyPrecheck) {
            if let Some(bytes) = self.kv.bytes(&record_key).await? {
                return self.replayed_token(&keys, &record_key, bytes, &facts);
            }
            // Credited through the sync path while the token KV was switched off?
            // Only possible after such an outage, so the ledger stays off the hot path.
            if self.switches.has_been_off(Switch::TokenKv)
                && let Some(first) = self.ledger.lookup_credit(child_id, &valid.order_no).await?
            {
                return Ok(replayed(first, &credit_of(&facts)));
            }
        }
        let mut reservations: Vec<Reservation> = Vec::new();
        match self.reserve(valid, &mut reservations).await {
            Ok(None) => {}
            Ok(Some(reason)) => {
                self.undo(reservations).await;
                return Ok(IssueOutcome::Rejected {
                    child_id: Some(child_id),
                    reason,
                });
            }
            Err(e) => {
                self.undo(reservations).await;
                return Err(e.into());
            }
        }
        let bytes = keys.sign(&facts).ok_or(WalletError::NoTokenKeys {
            scene_id: valid.scene.id,
        })?;
        let recorded = self
            .kv
            .record_token(
                &record_key,
                &bytes,
                &keys::user_tokens(child_id, facts.act_id),
                &keys::pending(child_id),
            )
            .await;
        match recorded {
            Ok(None) => Ok(IssueOutcome::Accepted {
                token: IssuedToken::new(&facts, bytes),
            }),
            Ok(Some(existing)) => {
                // Lost a race with a concurrent replay: theirs is the first outcome.
                self.undo(reservations).await;
                self.replayed_token(&keys, &record_key, existing, &facts)
            }
            // Unknown result: the token may be recorded, so the budget stays
            // reserved (under-issue at worst); the caller retries the order number.
            Err(e) => Err(e.into()),
        }
    }

    /// The first answer for an order accepted as a token, if the token record can
    /// be read; `None` when there is none or the read fails (passive degrade).
    pub(super) async fn earlier_token(
        &self,
        valid: &ValidIssue<'_>,
        request: &IssueRequest,
    ) -> Option<IssueOutcome> {
        let keys = self.keys.clone()?;
        let record_key = keys::token_record(valid.child.id, &valid.order_no.to_string());
        let bytes = self.kv.bytes(&record_key).await.ok()??;
        let asked = TokenFacts {
            app_id: i64::from(request.app_id),
            act_id: valid.order_no.act_id,
            activity_id: valid.activity.id,
            child_id: valid.child.id,
            order_no: valid.order_no.clone(),
            award_id: request.award_id,
            amount_cents: valid.award.cash_cents(),
            open_time_ms: 0,
        };
        self.replayed_token(&keys, &record_key, bytes, &asked).ok()
    }

    fn replayed_token(
        &self,
        keys: &crate::token::KeyRing,
        record_key: &str,
        bytes: Vec<u8>,
        asked: &TokenFacts,
    ) -> Result<IssueOutcome, WalletError> {
        let first = keys
            .verify(&bytes)
            .map_err(|error| WalletError::CorruptToken {
                key: record_key.to_owned(),
                error,
            })?;
        let token = IssuedToken::new(&first, bytes);
        Ok(if same_award(&first, asked) {
            IssueOutcome::DuplicateToken { token }
        } else {
            IssueOutcome::TokenConflict { first: token }
        })
    }
}
