//! What the SQL ledgers share: table names from [`LedgerOptions`], the entry and
//! account rows and how they read back, the column values an entry is stored as,
//! the pure part of a batched credit (dedupe inside the batch, which keys to
//! insert, balance deltas per account, outcomes in input order) and the bounded
//! retry of a transaction that lost a race.
//!
//! No IO here and no SQL dialect: each backend writes its own statements.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use super::{
    AccountKey, AccountState, Award, Credit, CreditOutcome, Cursor, Entry, EntryKind, HistoryPage,
    LedgerError, LedgerOptions,
};
use crate::ChildId;
use crate::order_no::OrderNo;

/// Rows one multi-row statement carries at most (MySQL; PostgreSQL takes a batch
/// as arrays). MySQL allows 65,535 bind parameters and the widest row binds 9, so
/// this stays far below; a full [`super::CREDIT_BATCH_MAX`] batch takes a few
/// statements per step, which the conformance suite's full batch exercises.
pub(super) const ROWS_PER_STATEMENT_MAX: usize = 500;

/// Attempts of a transaction that lost a race (unique key taken meanwhile,
/// deadlock, serialization failure) before the error goes to the caller.
pub(super) const ATTEMPTS_MAX: u32 = 8;

const _: () = assert!(ROWS_PER_STATEMENT_MAX * 9 < 65_535);

/// The two tables a ledger uses: `entries` and `accounts`, or their shadows.
/// Made only from [`LedgerOptions::table_prefix`], never from input, so statements
/// built from these names are safe to hand to sqlx as [`sqlx::AssertSqlSafe`].
#[derive(Debug, Clone)]
pub(super) struct Tables {
    pub entries: String,
    pub accounts: String,
}

impl Tables {
    pub fn new(options: LedgerOptions) -> Self {
        let prefix = options.table_prefix();
        Self {
            entries: format!("{prefix}entries"),
            accounts: format!("{prefix}accounts"),
        }
    }
}

/// The entry columns [`EntryRow`] reads, in one place. `idem_key_text` is the
/// expression that yields the key as text (MySQL stores it as bytes).
pub(super) fn entry_columns(idem_key_text: &str) -> String {
    format!(
        "seq, child_id, act_id, direction, {idem_key_text} AS idem_key, award_type, \
         amount_cents, asset_id, batch, at_ms"
    )
}

/// The account columns [`AccountRow`] reads.
pub(super) const ACCOUNT_COLUMNS: &str =
    "child_id, act_id, balance_cents, credited_cents, withdrawn_cents";

pub(super) fn store(e: sqlx::Error) -> LedgerError {
    LedgerError::Store(e.to_string())
}

/// SQL integers are signed 64-bit; every value we write is below `i64::MAX`
/// (act ids are checked at parse time, amounts by caps), so this only fails on a bug.
pub(super) fn to_i64(value: u64, what: &str) -> Result<i64, LedgerError> {
    i64::try_from(value).map_err(|_| {
        LedgerError::Misuse(format!(
            "{what} {value} does not fit a signed 64-bit column"
        ))
    })
}

pub(super) fn to_u64(value: i64, what: &str) -> Result<u64, LedgerError> {
    u64::try_from(value).map_err(|_| LedgerError::Corrupt(format!("{what} is negative: {value}")))
}

/// One `entries` row as stored.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct EntryRow {
    seq: i64,
    child_id: i64,
    act_id: i64,
    direction: String,
    idem_key: String,
    award_type: Option<String>,
    amount_cents: i64,
    asset_id: Option<i64>,
    batch: Option<String>,
    at_ms: i64,
}

impl EntryRow {
    pub fn into_entry(self) -> Result<Entry, LedgerError> {
        let corrupt = LedgerError::Corrupt;
        let amount_cents = to_u64(self.amount_cents, "amount_cents")?;
        let kind = match self.direction.as_str() {
            "credit" => {
                let order_no: OrderNo = self
                    .idem_key
                    .parse()
                    .map_err(|e| corrupt(format!("entry order number: {e}")))?;
                let asset = || {
                    self.asset_id
                        .ok_or_else(|| corrupt(format!("{order_no}: asset_id missing")))
                        .and_then(|a| to_u64(a, "asset_id"))
                };
                let award = match self.award_type.as_deref() {
                    Some("cash") => Award::Cash { amount_cents },
                    Some("coupon") => Award::Coupon {
                        template_id: asset()?,
                        batch: self
                            .batch
                            .clone()
                            .ok_or_else(|| corrupt(format!("{order_no}: coupon without batch")))?,
                    },
                    Some("pendant") => Award::Pendant {
                        pendant_id: asset()?,
                    },
                    other => return Err(corrupt(format!("{order_no}: award type {other:?}"))),
                };
                EntryKind::Credit { order_no, award }
            }
            "withdrawal" => EntryKind::Withdrawal {
                withdraw_no: self.idem_key,
                amount_cents,
            },
            other => return Err(corrupt(format!("direction {other:?}"))),
        };
        Ok(Entry {
            seq: to_u64(self.seq, "seq")?,
            account: AccountKey {
                child_id: to_u64(self.child_id, "child_id")?,
                act_id: to_u64(self.act_id, "act_id")?,
            },
            at_ms: to_u64(self.at_ms, "at_ms")?,
            kind,
        })
    }
}

/// Decode every row of a SELECT of [`entry_columns`].
pub(super) fn entries(rows: Vec<EntryRow>) -> Result<Vec<Entry>, LedgerError> {
    rows.into_iter().map(EntryRow::into_entry).collect()
}

/// One `accounts` row as stored.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct AccountRow {
    child_id: i64,
    act_id: i64,
    balance_cents: i64,
    credited_cents: i64,
    withdrawn_cents: i64,
}

impl AccountRow {
    pub fn into_state(self) -> Result<AccountState, LedgerError> {
        Ok(AccountState {
            key: AccountKey {
                child_id: to_u64(self.child_id, "child_id")?,
                act_id: to_u64(self.act_id, "act_id")?,
            },
            balance_cents: to_u64(self.balance_cents, "balance_cents")?,
            credited_cents: to_u64(self.credited_cents, "credited_cents")?,
            withdrawn_cents: to_u64(self.withdrawn_cents, "withdrawn_cents")?,
        })
    }
}

/// What an entry is stored as, column by column (all but `seq`).
#[derive(Debug, Clone)]
pub(super) struct EntryValues {
    pub child_id: i64,
    pub act_id: i64,
    pub direction: &'static str,
    pub idem_key: String,
    pub award_type: Option<&'static str>,
    pub amount_cents: i64,
    pub asset_id: Option<i64>,
    pub batch: Option<String>,
    pub at_ms: i64,
}

impl EntryValues {
    pub fn new(account: AccountKey, at_ms: u64, kind: &EntryKind) -> Result<Self, LedgerError> {
        let (direction, idem_key, award_type, amount, asset_id, batch) = match kind {
            EntryKind::Credit { order_no, award } => {
                let (asset_id, batch) = match award {
                    Award::Cash { .. } => (None, None),
                    Award::Coupon { template_id, batch } => (
                        Some(to_i64(*template_id, "template_id")?),
                        Some(batch.clone()),
                    ),
                    Award::Pendant { pendant_id } => {
                        (Some(to_i64(*pendant_id, "pendant_id")?), None)
                    }
                };
                (
                    "credit",
                    order_no.to_string(),
                    Some(award.award_type().name()),
                    award.cash_cents(),
                    asset_id,
                    batch,
                )
            }
            EntryKind::Withdrawal {
                withdraw_no,
                amount_cents,
            } => (
                "withdrawal",
                withdraw_no.clone(),
                None,
                *amount_cents,
                None,
                None,
            ),
        };
        Ok(Self {
            child_id: to_i64(account.child_id, "child_id")?,
            act_id: to_i64(account.act_id, "act_id")?,
            direction,
            idem_key,
            award_type,
            amount_cents: to_i64(amount, "amount_cents")?,
            asset_id,
            batch,
            at_ms: to_i64(at_ms, "at_ms")?,
        })
    }
}

/// What a credit is unique by: (child, order number as stored).
pub(super) type CreditKey = (ChildId, String);

/// The key of a posted credit entry (`None` for a withdrawal).
/// The newest `seq` a history page may show: below the cursor, or any.
pub(super) fn history_before(cursor: Option<Cursor>) -> i64 {
    cursor.map_or(i64::MAX, |c| {
        i64::try_from(c.before_seq).unwrap_or(i64::MAX)
    })
}

/// A history page from up to `limit + 1` rows, newest first: the extra row only
/// tells that a next page exists.
pub(super) fn history_page(rows: Vec<EntryRow>, limit: usize) -> Result<HistoryPage, LedgerError> {
    let mut entries = entries(rows)?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next = if more {
        entries.last().map(|e| Cursor { before_seq: e.seq })
    } else {
        None
    };
    Ok(HistoryPage { entries, next })
}

pub(super) fn credit_key(entry: &Entry) -> Option<CreditKey> {
    match &entry.kind {
        EntryKind::Credit { order_no, .. } => Some((entry.account.child_id, order_no.to_string())),
        EntryKind::Withdrawal { .. } => None,
    }
}

/// A batch of credits, deduplicated: the first occurrence of a key decides, a
/// later one is compared with it exactly as the memory ledger does.
#[derive(Debug)]
pub(super) struct BatchPlan<'a> {
    credits: &'a [Credit],
    /// Per input credit: its key.
    keys: Vec<CreditKey>,
    /// Per input credit: the index of the first credit with its key.
    first: Vec<usize>,
    /// Indices of first occurrences, in input order.
    unique: Vec<usize>,
    /// Per input credit: what it is stored as (only first occurrences are used).
    values: Vec<EntryValues>,
}

impl<'a> BatchPlan<'a> {
    pub fn new(credits: &'a [Credit]) -> Result<Self, LedgerError> {
        let mut seen: HashMap<CreditKey, usize> = HashMap::with_capacity(credits.len());
        let mut plan = Self {
            credits,
            keys: Vec::with_capacity(credits.len()),
            first: Vec::with_capacity(credits.len()),
            unique: Vec::with_capacity(credits.len()),
            values: Vec::with_capacity(credits.len()),
        };
        for (i, credit) in credits.iter().enumerate() {
            let kind = credit_kind(credit);
            let values = EntryValues::new(credit.account, credit.at_ms, &kind)?;
            let key = (credit.account.child_id, values.idem_key.clone());
            let first = *seen.entry(key.clone()).or_insert(i);
            if first == i {
                plan.unique.push(i);
            }
            plan.keys.push(key);
            plan.first.push(first);
            plan.values.push(values);
        }
        Ok(plan)
    }

    /// The distinct keys of the batch, in input order.
    pub fn unique_keys(&self) -> Vec<&CreditKey> {
        self.unique.iter().map(|&i| &self.keys[i]).collect()
    }

    /// The distinct credits not posted yet, in input order (so `seq` follows the
    /// batch as in the memory ledger).
    pub fn to_insert(&self, posted: &HashMap<CreditKey, Entry>) -> Vec<usize> {
        self.unique
            .iter()
            .copied()
            .filter(|&i| !posted.contains_key(&self.keys[i]))
            .collect()
    }

    pub fn key(&self, i: usize) -> &CreditKey {
        &self.keys[i]
    }

    pub fn values(&self, i: usize) -> &EntryValues {
        &self.values[i]
    }

    /// Cash per account over the credits `inserted`, sorted by account so that
    /// concurrent batches lock account rows in one order. Accounts credited with
    /// non-cash awards only appear with 0, as the memory ledger creates them too.
    pub fn account_deltas(
        &self,
        inserted: &[usize],
    ) -> Result<Vec<(AccountKey, i64)>, LedgerError> {
        let mut deltas: BTreeMap<AccountKey, i64> = BTreeMap::new();
        for &i in inserted {
            let sum = deltas.entry(self.credits[i].account).or_insert(0);
            *sum = sum
                .checked_add(self.values[i].amount_cents)
                .ok_or_else(|| {
                    LedgerError::Misuse(format!(
                        "cash to {:?} in one batch overflows a signed 64-bit column",
                        self.credits[i].account
                    ))
                })?;
        }
        Ok(deltas.into_iter().collect())
    }

    /// The outcomes in input order, given the entries found posted before this
    /// transaction and the `seq` of each entry it inserted.
    pub fn outcomes(
        &self,
        posted: &HashMap<CreditKey, Entry>,
        inserted: &HashMap<CreditKey, u64>,
    ) -> Result<Vec<CreditOutcome>, LedgerError> {
        let mut outcomes = Vec::with_capacity(self.credits.len());
        for (i, credit) in self.credits.iter().enumerate() {
            let key = &self.keys[i];
            let (first, fresh) = if let Some(entry) = posted.get(key) {
                (entry.clone(), false)
            } else if let Some(&seq) = inserted.get(key) {
                let owner = &self.credits[self.first[i]];
                let entry = Entry {
                    seq,
                    account: owner.account,
                    at_ms: owner.at_ms,
                    kind: credit_kind(owner),
                };
                (entry, self.first[i] == i)
            } else {
                return Err(LedgerError::Corrupt(format!(
                    "credit {} in child {} neither found nor inserted",
                    key.1, key.0
                )));
            };
            outcomes.push(if fresh {
                CreditOutcome::Credited { entry: first }
            } else if first.matches_credit(credit) {
                CreditOutcome::Duplicate { entry: first }
            } else {
                CreditOutcome::Conflict { first }
            });
        }
        Ok(outcomes)
    }
}

fn credit_kind(credit: &Credit) -> EntryKind {
    EntryKind::Credit {
        order_no: credit.order_no.clone(),
        award: credit.award.clone(),
    }
}

/// Index found entries by credit key.
pub(super) fn by_credit_key(entries: Vec<Entry>) -> HashMap<CreditKey, Entry> {
    entries
        .into_iter()
        .filter_map(|entry| credit_key(&entry).map(|key| (key, entry)))
        .collect()
}

/// Why one attempt of a transaction failed.
#[derive(Debug)]
pub(super) enum TxError {
    /// The database said no; maybe a lost race worth another attempt.
    Sql(sqlx::Error),
    /// Anything else; final.
    Ledger(LedgerError),
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        TxError::Sql(e)
    }
}

impl From<LedgerError> for TxError {
    fn from(e: LedgerError) -> Self {
        TxError::Ledger(e)
    }
}

/// Run `attempt` (one whole transaction) until it succeeds, fails for good, or
/// [`ATTEMPTS_MAX`] attempts lost a race that `retryable` recognises. A rolled-back
/// attempt wrote nothing, and the next one re-reads what the winner posted, so
/// outcomes stay exact.
pub(super) async fn with_retries<T, F, Fut>(
    retryable: fn(&sqlx::Error) -> bool,
    mut attempt: F,
) -> Result<T, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, TxError>>,
{
    let mut attempts = 1;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(TxError::Sql(e)) if retryable(&e) && attempts < ATTEMPTS_MAX => attempts += 1,
            Err(TxError::Sql(e)) if attempts > 1 => {
                return Err(LedgerError::Store(format!(
                    "{e} (after {attempts} attempts)"
                )));
            }
            Err(TxError::Sql(e)) => return Err(store(e)),
            Err(TxError::Ledger(e)) => return Err(e),
        }
    }
}

/// Why a server URL cannot be used, for [`LedgerError::BadUrl`].
pub(super) fn bad_url(url: &str, why: impl Into<String>) -> LedgerError {
    LedgerError::BadUrl {
        url: url.to_owned(),
        why: why.into(),
    }
}

/// How long connecting to a database server may take before `connect` gives up.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a call waits for a pooled connection.
pub(super) const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Connections per server ledger.
pub(super) const POOL_CONNECTIONS_MAX: u32 = 8;

/// The `Ledger` impl the server ledgers share: everything but the transactions
/// (`credit_once`, `withdraw_once`, `find`), the statement that opens a
/// snapshot's read view, and the error classes `retryable` retries. Expects
/// `retryable`, `sql` and the `Statements` field `sql` where it is invoked.
macro_rules! server_ledger {
    ($ledger:ty, snapshot_begin = $snapshot_begin:expr) => {
        #[async_trait::async_trait]
        impl $crate::ledger::Ledger for $ledger {
            async fn credit_batch(
                &self,
                credits: &[Credit],
            ) -> Result<Vec<CreditOutcome>, LedgerError> {
                check_batch(credits)?;
                if credits.is_empty() {
                    return Ok(Vec::new());
                }
                let plan = BatchPlan::new(credits)?;
                with_retries(retryable, || self.credit_once(&plan)).await
            }

            async fn lookup_credit(
                &self,
                child_id: ChildId,
                order_no: &OrderNo,
            ) -> Result<Option<Entry>, LedgerError> {
                let key = order_no.to_string();
                with_retries(retryable, || {
                    self.find(&self.pool, child_id, "credit", &key)
                })
                .await
            }

            async fn withdraw(
                &self,
                withdrawal: &Withdrawal,
            ) -> Result<WithdrawOutcome, LedgerError> {
                let kind = EntryKind::Withdrawal {
                    withdraw_no: withdrawal.withdraw_no.clone(),
                    amount_cents: withdrawal.amount_cents,
                };
                let values = EntryValues::new(withdrawal.account, withdrawal.at_ms, &kind)?;
                with_retries(retryable, || self.withdraw_once(withdrawal, &values)).await
            }

            async fn account(&self, key: AccountKey) -> Result<AccountState, LedgerError> {
                let row: Option<AccountRow> = sqlx::query_as(sql(&self.sql.read_account))
                    .bind(to_i64(key.child_id, "child_id")?)
                    .bind(to_i64(key.act_id, "act_id")?)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(store)?;
                row.map_or(Ok(AccountState::empty(key)), AccountRow::into_state)
            }

            async fn history(
                &self,
                key: AccountKey,
                cursor: Option<Cursor>,
                limit: usize,
            ) -> Result<HistoryPage, LedgerError> {
                check_limit(limit)?;
                let before = history_before(cursor);
                // One row more than the page tells whether a next page exists.
                let rows: Vec<EntryRow> = sqlx::query_as(sql(&self.sql.history))
                    .bind(to_i64(key.child_id, "child_id")?)
                    .bind(to_i64(key.act_id, "act_id")?)
                    .bind(before)
                    .bind(to_i64(limit as u64 + 1, "limit")?)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(store)?;
                history_page(rows, limit)
            }

            async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
                // One read view, so entries and accounts are of one moment.
                let mut tx = self.pool.begin_with($snapshot_begin).await.map_err(store)?;
                let rows: Vec<EntryRow> = sqlx::query_as(sql(&self.sql.all_entries))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(store)?;
                let accounts: Vec<AccountRow> = sqlx::query_as(sql(&self.sql.all_accounts))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(store)?;
                tx.commit().await.map_err(store)?;
                Ok(LedgerSnapshot {
                    entries: entries(rows)?,
                    accounts: accounts
                        .into_iter()
                        .map(AccountRow::into_state)
                        .collect::<Result<_, _>>()?,
                })
            }
        }
    };
}
pub(super) use server_ledger;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order_no::AwardType;

    fn cash(child_id: u64, act_id: u64, rain_id: u32, amount_cents: u64) -> Credit {
        let order_no = OrderNo {
            act_id,
            scene_id: 1,
            rain_id,
            award_type: AwardType::Cash,
            stage: 1,
        };
        Credit::new(child_id, order_no, Award::Cash { amount_cents }, 0)
    }

    #[test]
    fn plan_dedupes_and_sums_per_account() {
        let batch = [
            cash(1, 7, 1, 10),
            cash(1, 7, 1, 10),
            cash(1, 7, 2, 5),
            cash(2, 7, 1, 3),
        ];
        let plan = BatchPlan::new(&batch).expect("plan");
        assert_eq!(plan.unique_keys().len(), 3);
        let insert = plan.to_insert(&HashMap::new());
        assert_eq!(insert, [0, 2, 3]);
        let deltas = plan.account_deltas(&insert).expect("deltas");
        let key = |child_id| AccountKey {
            child_id,
            act_id: 7,
        };
        assert_eq!(deltas, [(key(1), 15), (key(2), 3)]);
        let inserted: HashMap<CreditKey, u64> = insert
            .iter()
            .zip(1..)
            .map(|(&i, seq)| (plan.key(i).clone(), seq))
            .collect();
        let outcomes = plan.outcomes(&HashMap::new(), &inserted).expect("outcomes");
        let seqs: Vec<(bool, u64)> = outcomes
            .iter()
            .map(|o| match o {
                CreditOutcome::Credited { entry } => (true, entry.seq),
                CreditOutcome::Duplicate { entry } => (false, entry.seq),
                CreditOutcome::Conflict { first } => (false, first.seq + 100),
            })
            .collect();
        assert_eq!(seqs, [(true, 1), (false, 1), (true, 2), (true, 3)]);
    }
}
