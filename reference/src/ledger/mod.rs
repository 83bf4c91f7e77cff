//! The ledger: accounts per (act_id, child activity), idempotent crediting of a batch
//! keyed by order number, withdrawals that never take a balance below zero, and the
//! history page. One object-safe trait, one file per backend, one factory by URL.
//!
//! Business outcomes (duplicate, conflict, insufficient balance) are values; `Err`
//! is for operating errors only (a database that cannot be reached, a broken file).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::order_no::{AwardType, OrderNo};
use crate::{ActId, ChildId, Millis};

mod memory;
mod mysql;
mod postgres;
mod sql;
mod sqlite;

pub use memory::MemoryLedger;
pub use mysql::MySqlLedger;
pub use postgres::PostgresLedger;
pub use sqlite::SqliteLedger;

/// What shadow tables are called before their real name (`shadow_entries`, …).
pub const SHADOW_TABLE_PREFIX: &str = "shadow_";

/// Which tables a ledger uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerOptions {
    /// Shadow traffic: the `shadow_` tables, never the real ones. A memory ledger
    /// is its own store, so this only matters for SQL backends.
    pub shadow: bool,
}

impl LedgerOptions {
    /// The shadow tables.
    pub fn shadow() -> Self {
        Self { shadow: true }
    }

    /// What this ledger's table names start with: `""` or [`SHADOW_TABLE_PREFIX`].
    pub fn table_prefix(&self) -> &'static str {
        if self.shadow { SHADOW_TABLE_PREFIX } else { "" }
    }
}

/// What a shadow cleanup removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCleanup {
    /// Rows deleted from `shadow_entries`.
    pub entries: u64,
    /// Rows deleted from `shadow_accounts`.
    pub accounts: u64,
}

/// Largest page [`Ledger::history`] returns.
pub const HISTORY_PAGE_LIMIT_MAX: usize = 100;
/// Largest batch [`Ledger::credit_batch`] takes.
pub const CREDIT_BATCH_MAX: usize = 1024;

/// One user's account in one child activity.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub struct AccountKey {
    /// The child activity; children never share accounts.
    pub child_id: ChildId,
    /// The user.
    pub act_id: ActId,
}

/// What one credit gives.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Award {
    /// Cash into the balance.
    Cash {
        /// Integer cents, > 0.
        amount_cents: u64,
    },
    /// A coupon of a template, from a batch.
    Coupon {
        /// The stock-counted template.
        template_id: u64,
        /// The batch (per-user limits count per batch).
        batch: String,
    },
    /// An avatar pendant.
    Pendant {
        /// Which pendant.
        pendant_id: u64,
    },
}

impl Award {
    /// The award's type.
    pub fn award_type(&self) -> AwardType {
        match self {
            Award::Cash { .. } => AwardType::Cash,
            Award::Coupon { .. } => AwardType::Coupon,
            Award::Pendant { .. } => AwardType::Pendant,
        }
    }

    /// Cash cents this award adds to the balance (0 for non-cash awards).
    pub fn cash_cents(&self) -> u64 {
        match self {
            Award::Cash { amount_cents } => *amount_cents,
            _ => 0,
        }
    }
}

/// A credit to post: the payload that a replay must match exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Credit {
    /// Whose account.
    pub account: AccountKey,
    /// The idempotency key, unique per child activity.
    pub order_no: OrderNo,
    /// What is given.
    pub award: Award,
    /// When the credit was requested; not part of the payload comparison.
    pub at_ms: Millis,
}

impl Credit {
    /// `award` to the owner of `order_no` in child `child_id`.
    pub fn new(child_id: ChildId, order_no: OrderNo, award: Award, at_ms: Millis) -> Self {
        Self {
            account: AccountKey {
                child_id,
                act_id: order_no.act_id,
            },
            order_no,
            award,
            at_ms,
        }
    }
}

/// A withdrawal to post.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Withdrawal {
    /// Whose account.
    pub account: AccountKey,
    /// The idempotency key, unique per child activity.
    pub withdraw_no: String,
    /// Integer cents, > 0.
    pub amount_cents: u64,
    /// When the withdrawal was requested.
    pub at_ms: Millis,
}

/// What an entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "direction", rename_all = "snake_case")]
pub enum EntryKind {
    /// An award posted to the account.
    Credit {
        /// Its order number.
        order_no: OrderNo,
        /// What was given.
        award: Award,
    },
    /// Cash taken out.
    Withdrawal {
        /// Its withdraw number.
        withdraw_no: String,
        /// Cents taken out.
        amount_cents: u64,
    },
}

/// One posted ledger entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// Posting order across the whole ledger, from 1; newer entries have larger `seq`.
    pub seq: u64,
    /// Whose account.
    pub account: AccountKey,
    /// When it was requested.
    pub at_ms: Millis,
    /// What it records.
    pub kind: EntryKind,
}

impl Entry {
    /// Signed effect on the cash balance.
    pub fn cash_delta_cents(&self) -> i128 {
        match &self.kind {
            EntryKind::Credit { award, .. } => i128::from(award.cash_cents()),
            EntryKind::Withdrawal { amount_cents, .. } => -i128::from(*amount_cents),
        }
    }

    /// Whether this entry is the posting of `credit` (same account and award).
    pub fn matches_credit(&self, credit: &Credit) -> bool {
        matches!(&self.kind, EntryKind::Credit { order_no, award }
            if self.account == credit.account && *order_no == credit.order_no && *award == credit.award)
    }

    /// Whether this entry is the posting of `withdrawal` (same account and amount).
    pub fn matches_withdrawal(&self, withdrawal: &Withdrawal) -> bool {
        matches!(&self.kind, EntryKind::Withdrawal { withdraw_no, amount_cents }
            if self.account == withdrawal.account && *withdraw_no == withdrawal.withdraw_no
                && *amount_cents == withdrawal.amount_cents)
    }
}

/// The outcome of one credit in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CreditOutcome {
    /// Posted now.
    Credited {
        /// The new entry.
        entry: Entry,
    },
    /// Posted before with the same payload; this is the first outcome again.
    Duplicate {
        /// The entry posted the first time.
        entry: Entry,
    },
    /// The order number was posted before with a different payload; nothing posted.
    Conflict {
        /// The entry posted the first time.
        first: Entry,
    },
}

/// The outcome of a withdrawal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WithdrawOutcome {
    /// Taken out now.
    Withdrawn {
        /// The new entry.
        entry: Entry,
        /// Balance after the withdrawal.
        balance_after_cents: u64,
    },
    /// Taken out before with the same payload.
    Duplicate {
        /// The entry posted the first time.
        entry: Entry,
    },
    /// The withdraw number was used before with a different payload; nothing posted.
    Conflict {
        /// The entry posted the first time.
        first: Entry,
    },
    /// The balance is smaller than the amount; nothing posted.
    InsufficientBalance {
        /// The balance at the time.
        balance_cents: u64,
    },
}

/// An account's totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountState {
    /// Whose.
    pub key: AccountKey,
    /// Cash balance, never below zero.
    pub balance_cents: u64,
    /// Cash credited in all.
    pub credited_cents: u64,
    /// Cash withdrawn in all.
    pub withdrawn_cents: u64,
}

impl AccountState {
    /// An account with nothing in it.
    pub fn empty(key: AccountKey) -> Self {
        Self {
            key,
            balance_cents: 0,
            credited_cents: 0,
            withdrawn_cents: 0,
        }
    }
}

/// Where the next history page starts: entries older than `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The `seq` of the last entry of the previous page.
    pub before_seq: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.before_seq)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('s')
            .and_then(|n| n.parse().ok())
            .map(|before_seq| Cursor { before_seq })
            .ok_or_else(|| format!("`{s}` is not a history cursor"))
    }
}

/// One page of an account's history, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Newest first.
    pub entries: Vec<Entry>,
    /// Present when older entries remain.
    pub next: Option<Cursor>,
}

/// Everything in the ledger, for checkers and audits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LedgerSnapshot {
    /// All entries in `seq` order.
    pub entries: Vec<Entry>,
    /// All accounts in key order.
    pub accounts: Vec<AccountState>,
}

/// An operating error of a ledger backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The store failed or could not be reached.
    #[error("ledger store: {0}")]
    Store(String),
    /// Migrations could not be applied.
    #[error("ledger migration: {0}")]
    Migration(String),
    /// The store holds something this code cannot read back.
    #[error("ledger data is corrupt: {0}")]
    Corrupt(String),
    /// The URL does not name a ledger this build knows.
    #[error("ledger URL `{}`: {why}", crate::redact_url(.url))]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A caller broke the trait's contract (batch too large, page too long).
    #[error("ledger misuse: {0}")]
    Misuse(String),
}

/// The ledger's domain verbs.
#[async_trait]
pub trait Ledger: Send + Sync + fmt::Debug {
    /// Post each credit at most once per (child, order number), in one transaction;
    /// outcomes come back in input order. Duplicates inside the batch are exact too.
    async fn credit_batch(&self, credits: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError>;

    /// The entry posted for (child, order number), if any.
    async fn lookup_credit(
        &self,
        child_id: ChildId,
        order_no: &OrderNo,
    ) -> Result<Option<Entry>, LedgerError>;

    /// Take cash out, never below zero; idempotent on (child, withdraw number).
    async fn withdraw(&self, withdrawal: &Withdrawal) -> Result<WithdrawOutcome, LedgerError>;

    /// An account's totals (an empty account when it has no entries).
    async fn account(&self, key: AccountKey) -> Result<AccountState, LedgerError>;

    /// A page of the account's entries, newest first; at most `limit` (≤ [`HISTORY_PAGE_LIMIT_MAX`]).
    async fn history(
        &self,
        key: AccountKey,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<HistoryPage, LedgerError>;

    /// Every entry and account.
    async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError>;
}

fn check_batch(credits: &[Credit]) -> Result<(), LedgerError> {
    if credits.len() > CREDIT_BATCH_MAX {
        return Err(LedgerError::Misuse(format!(
            "batch of {} credits; at most {CREDIT_BATCH_MAX}",
            credits.len()
        )));
    }
    Ok(())
}

fn check_limit(limit: usize) -> Result<(), LedgerError> {
    if limit == 0 || limit > HISTORY_PAGE_LIMIT_MAX {
        return Err(LedgerError::Misuse(format!(
            "page limit {limit}; must be 1..={HISTORY_PAGE_LIMIT_MAX}"
        )));
    }
    Ok(())
}

const URL_FORMS: &str =
    "expected `memory`, `sqlite::memory:`, `sqlite://PATH`, `mysql://…` or `postgres://…`";

/// Check that `url` names a ledger this build knows, without connecting (for
/// config files, so a typo is reported with its line before anything runs).
pub fn check_url(url: &str) -> Result<(), LedgerError> {
    let known = url == "memory"
        || url == "memory://"
        || [
            "sqlite:",
            "mysql://",
            "mariadb://",
            "postgres://",
            "postgresql://",
        ]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    if known {
        Ok(())
    } else {
        Err(LedgerError::BadUrl {
            url: url.to_owned(),
            why: URL_FORMS.to_owned(),
        })
    }
}

/// Open the ledger a URL names, on the real tables.
pub async fn open(url: &str) -> Result<Arc<dyn Ledger>, LedgerError> {
    open_with(url, LedgerOptions::default()).await
}

/// Open the ledger a URL names: `memory`, `sqlite://PATH` / `sqlite::memory:`,
/// `mysql://…` (MariaDB or MySQL) or `postgres://…`. SQL backends connect and
/// migrate here, so a wrong URL fails before any traffic.
pub async fn open_with(url: &str, options: LedgerOptions) -> Result<Arc<dyn Ledger>, LedgerError> {
    if url == "memory" || url == "memory://" {
        return Ok(Arc::new(MemoryLedger::new()));
    }
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteLedger::connect_with(url, options).await?));
    }
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        return Ok(Arc::new(MySqlLedger::connect(url, options).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresLedger::connect(url, options).await?));
    }
    Err(LedgerError::BadUrl {
        url: url.to_owned(),
        why: URL_FORMS.to_owned(),
    })
}

/// Delete every row of the shadow tables in the ledger `url` names. A memory
/// ledger holds nothing after its process, so there is nothing to remove.
pub async fn cleanup_shadow(url: &str) -> Result<LedgerCleanup, LedgerError> {
    if url == "memory" || url == "memory://" {
        return Ok(LedgerCleanup::default());
    }
    if url.starts_with("sqlite:") {
        return SqliteLedger::connect_with(url, LedgerOptions::shadow())
            .await?
            .purge_shadow()
            .await;
    }
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        return MySqlLedger::connect(url, LedgerOptions::shadow())
            .await?
            .purge_shadow()
            .await;
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return PostgresLedger::connect(url, LedgerOptions::shadow())
            .await?
            .purge_shadow()
            .await;
    }
    Err(LedgerError::BadUrl {
        url: url.to_owned(),
        why: URL_FORMS.to_owned(),
    })
}

#[cfg(test)]
mod conformance;
