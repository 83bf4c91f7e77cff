//! The PostgreSQL ledger (sqlx). A batch of credits is one transaction of three
//! statements taking the batch as arrays (`UNNEST`): read the batch's keys, insert
//! the new entries (`ON CONFLICT DO NOTHING RETURNING seq`; any key another
//! transaction committed meanwhile is read back), add each account's cash once. The UNIQUE (child_id,
//! direction, idem_key) constraint is what makes crediting idempotent; a batch
//! that deadlocks or fails serialization rolls back and runs again, so its
//! outcomes stay exact.
//!
//! Never builds SQL from input: statement text comes from the table prefix alone.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgExecutor, Postgres, Transaction};

use super::sql::{
    ACCOUNT_COLUMNS, ACQUIRE_TIMEOUT, AccountRow, BatchPlan, CONNECT_TIMEOUT, CreditKey, EntryRow,
    EntryValues, POOL_CONNECTIONS_MAX, Tables, TxError, bad_url, by_credit_key, entries,
    entry_columns, history_before, history_page, server_ledger, store, to_i64, to_u64,
    with_retries,
};
use super::{
    AccountKey, AccountState, Credit, CreditOutcome, Cursor, Entry, EntryKind, HistoryPage,
    LedgerCleanup, LedgerError, LedgerOptions, LedgerSnapshot, WithdrawOutcome, Withdrawal,
    check_batch, check_limit,
};
use crate::ChildId;
use crate::order_no::OrderNo;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Ledger in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresLedger {
    pool: PgPool,
    options: LedgerOptions,
    sql: Arc<Statements>,
}

/// Every statement of one ledger, built once from its table names (never from
/// input), so each is safe to pass as [`AssertSqlSafe`]. Batches go in as
/// arrays (`UNNEST`), so every statement has one text, prepared once.
#[derive(Debug)]
struct Statements {
    find: Arc<str>,
    lock_balance: Arc<str>,
    debit_account: Arc<str>,
    insert_entry: Arc<str>,
    read_account: Arc<str>,
    history: Arc<str>,
    all_entries: Arc<str>,
    all_accounts: Arc<str>,
    purge_entries: Arc<str>,
    purge_accounts: Arc<str>,
    select_credits: Arc<str>,
    insert_credits: Arc<str>,
    upsert_accounts: Arc<str>,
}

const ENTRY_INSERT_COLUMNS: &str =
    "(child_id, act_id, direction, idem_key, award_type, amount_cents, asset_id, batch, at_ms)";

impl Statements {
    fn new(tables: &Tables) -> Self {
        let Tables { entries, accounts } = tables;
        let columns = entry_columns("idem_key");
        let sql = |text: String| Arc::<str>::from(text);
        Self {
            find: sql(format!(
                "SELECT {columns} FROM {entries} \
                 WHERE child_id = $1 AND direction = $2 AND idem_key = $3"
            )),
            lock_balance: sql(format!(
                "SELECT balance_cents FROM {accounts} WHERE child_id = $1 AND act_id = $2 FOR UPDATE"
            )),
            debit_account: sql(format!(
                "UPDATE {accounts} SET balance_cents = balance_cents - $1, \
                 withdrawn_cents = withdrawn_cents + $1 WHERE child_id = $2 AND act_id = $3"
            )),
            insert_entry: sql(format!(
                "INSERT INTO {entries} {ENTRY_INSERT_COLUMNS} \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq"
            )),
            read_account: sql(format!(
                "SELECT {ACCOUNT_COLUMNS} FROM {accounts} WHERE child_id = $1 AND act_id = $2"
            )),
            history: sql(format!(
                "SELECT {columns} FROM {entries} WHERE child_id = $1 AND act_id = $2 AND seq < $3 \
                 ORDER BY seq DESC LIMIT $4"
            )),
            all_entries: sql(format!("SELECT {columns} FROM {entries} ORDER BY seq")),
            all_accounts: sql(format!(
                "SELECT {ACCOUNT_COLUMNS} FROM {accounts} ORDER BY child_id, act_id"
            )),
            purge_entries: sql(format!("DELETE FROM {entries}")),
            purge_accounts: sql(format!("DELETE FROM {accounts}")),
            // Keys as arrays joined to the unique index: one index probe per key,
            // and one prepared statement whatever the batch size. (A row-value
            // `IN` list lets the planner factor out a common child_id and scan
            // every entry of that child instead.)
            select_credits: sql(format!(
                "SELECT {columns} FROM UNNEST($1::int8[], $2::text[]) AS k(k_child_id, k_idem_key) \
                 JOIN {entries} ON child_id = k_child_id AND direction = 'credit' \
                 AND idem_key = k_idem_key"
            )),
            // In array order (ORDER BY ord), so `seq` follows the batch. Skips keys
            // another transaction committed meanwhile (they are read back) and
            // returns what it did insert.
            insert_credits: sql(format!(
                "INSERT INTO {entries} {ENTRY_INSERT_COLUMNS} \
                 SELECT child_id, act_id, 'credit', idem_key, award_type, amount_cents, \
                 asset_id, batch, at_ms \
                 FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::int8[], \
                 $6::int8[], $7::text[], $8::int8[]) WITH ORDINALITY \
                 AS r(child_id, act_id, idem_key, award_type, amount_cents, asset_id, batch, \
                 at_ms, ord) \
                 ORDER BY ord \
                 ON CONFLICT (child_id, direction, idem_key) DO NOTHING \
                 RETURNING child_id, idem_key, seq"
            )),
            // Each account's cash of the batch once, in the order given (sorted
            // by account, so concurrent batches lock rows in one order).
            upsert_accounts: sql(format!(
                "INSERT INTO {accounts} \
                 (child_id, act_id, balance_cents, credited_cents, withdrawn_cents) \
                 SELECT child_id, act_id, cents, cents, 0 \
                 FROM UNNEST($1::int8[], $2::int8[], $3::int8[]) WITH ORDINALITY \
                 AS d(child_id, act_id, cents, ord) \
                 ORDER BY ord \
                 ON CONFLICT (child_id, act_id) DO UPDATE SET \
                 balance_cents = {accounts}.balance_cents + EXCLUDED.balance_cents, \
                 credited_cents = {accounts}.credited_cents + EXCLUDED.credited_cents"
            )),
        }
    }
}

/// A statement of [`Statements`], for sqlx.
fn sql(statement: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(statement))
}

/// A race another transaction won: a unique key taken meanwhile (23505), a
/// deadlock (40P01) or a serialization failure (40001). The whole transaction
/// was rolled back; running it again is safe.
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("23505" | "40P01" | "40001"))
        }
        _ => false,
    }
}

impl PostgresLedger {
    /// Connect (failing within [`CONNECT_TIMEOUT`] when the server does not
    /// answer), migrate, and use the tables `options` names.
    pub async fn connect(url: &str, options: LedgerOptions) -> Result<Self, LedgerError> {
        let connect = PgConnectOptions::from_str(url).map_err(|e| bad_url(url, e.to_string()))?;
        let mut conn =
            match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&connect)).await
            {
                Err(_) => {
                    return Err(bad_url(
                        url,
                        format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                    ));
                }
                Ok(Err(e)) => return Err(bad_url(url, format!("cannot connect: {e}"))),
                Ok(Ok(conn)) => conn,
            };
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| LedgerError::Migration(e.to_string()))?;
        // Best effort: the pool opens its own connections.
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(connect);
        Ok(Self {
            pool,
            options,
            sql: Arc::new(Statements::new(&Tables::new(options))),
        })
    }

    /// Delete every row of the shadow tables in one transaction; refused on a
    /// ledger opened on the real tables.
    pub async fn purge_shadow(&self) -> Result<LedgerCleanup, LedgerError> {
        if !self.options.shadow {
            return Err(LedgerError::Misuse(
                "purge_shadow on a ledger of the real tables".to_owned(),
            ));
        }
        let mut tx = self.pool.begin().await.map_err(store)?;
        let entries = sqlx::query(sql(&self.sql.purge_entries))
            .execute(&mut *tx)
            .await
            .map_err(store)?
            .rows_affected();
        let accounts = sqlx::query(sql(&self.sql.purge_accounts))
            .execute(&mut *tx)
            .await
            .map_err(store)?
            .rows_affected();
        tx.commit().await.map_err(store)?;
        Ok(LedgerCleanup { entries, accounts })
    }

    async fn find(
        &self,
        executor: impl PgExecutor<'_>,
        child_id: ChildId,
        direction: &'static str,
        idem_key: &str,
    ) -> Result<Option<Entry>, TxError> {
        let row: Option<EntryRow> = sqlx::query_as(sql(&self.sql.find))
            .bind(to_i64(child_id, "child_id")?)
            .bind(direction)
            .bind(idem_key)
            .fetch_optional(executor)
            .await?;
        Ok(row.map(EntryRow::into_entry).transpose()?)
    }

    /// The credit entries posted under `keys`.
    async fn posted_credits(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        keys: &[&CreditKey],
    ) -> Result<HashMap<CreditKey, Entry>, TxError> {
        let mut child_ids = Vec::with_capacity(keys.len());
        let mut idem_keys = Vec::with_capacity(keys.len());
        for (child_id, idem_key) in keys {
            child_ids.push(to_i64(*child_id, "child_id")?);
            idem_keys.push(idem_key.as_str());
        }
        let rows: Vec<EntryRow> = sqlx::query_as(sql(&self.sql.select_credits))
            .bind(child_ids)
            .bind(idem_keys)
            .fetch_all(&mut **tx)
            .await?;
        Ok(by_credit_key(entries(rows)?))
    }

    /// Insert the credits `insert` names; the `seq` of each one inserted (a key
    /// another transaction committed meanwhile is skipped, so it is absent).
    async fn insert_credits(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        plan: &BatchPlan<'_>,
        insert: &[usize],
    ) -> Result<HashMap<CreditKey, u64>, TxError> {
        let values: Vec<&EntryValues> = insert.iter().map(|&i| plan.values(i)).collect();
        let column = |f: fn(&EntryValues) -> i64| values.iter().map(|v| f(v)).collect::<Vec<_>>();
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(sql(&self.sql.insert_credits))
            .bind(column(|v| v.child_id))
            .bind(column(|v| v.act_id))
            .bind(
                values
                    .iter()
                    .map(|v| v.idem_key.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(values.iter().map(|v| v.award_type).collect::<Vec<_>>())
            .bind(column(|v| v.amount_cents))
            .bind(values.iter().map(|v| v.asset_id).collect::<Vec<_>>())
            .bind(
                values
                    .iter()
                    .map(|v| v.batch.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(column(|v| v.at_ms))
            .fetch_all(&mut **tx)
            .await?;
        let mut seqs = HashMap::with_capacity(rows.len());
        for (child_id, idem_key, seq) in rows {
            seqs.insert(
                (to_u64(child_id, "child_id")?, idem_key),
                to_u64(seq, "seq")?,
            );
        }
        Ok(seqs)
    }

    /// Add each account's cash of the batch once.
    async fn credit_accounts(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        deltas: &[(AccountKey, i64)],
    ) -> Result<(), TxError> {
        let mut child_ids = Vec::with_capacity(deltas.len());
        let mut act_ids = Vec::with_capacity(deltas.len());
        let mut cents = Vec::with_capacity(deltas.len());
        for (key, delta) in deltas {
            child_ids.push(to_i64(key.child_id, "child_id")?);
            act_ids.push(to_i64(key.act_id, "act_id")?);
            cents.push(*delta);
        }
        sqlx::query(sql(&self.sql.upsert_accounts))
            .bind(child_ids)
            .bind(act_ids)
            .bind(cents)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// One attempt at a batch: one transaction, all or nothing.
    async fn credit_once(&self, plan: &BatchPlan<'_>) -> Result<Vec<CreditOutcome>, TxError> {
        let mut tx = self.pool.begin().await?;
        let mut posted = self.posted_credits(&mut tx, &plan.unique_keys()).await?;
        let insert = plan.to_insert(&posted);
        let mut inserted = HashMap::new();
        if !insert.is_empty() {
            inserted = self.insert_credits(&mut tx, plan, &insert).await?;
            let (won, raced): (Vec<usize>, Vec<usize>) = insert
                .iter()
                .partition(|&&i| inserted.contains_key(plan.key(i)));
            if !raced.is_empty() {
                let keys: Vec<&CreditKey> = raced.iter().map(|&i| plan.key(i)).collect();
                posted.extend(self.posted_credits(&mut tx, &keys).await?);
            }
            self.credit_accounts(&mut tx, &plan.account_deltas(&won)?)
                .await?;
        }
        tx.commit().await?;
        Ok(plan.outcomes(&posted, &inserted)?)
    }

    /// One attempt at a withdrawal: lock the account row, then decide.
    async fn withdraw_once(
        &self,
        withdrawal: &Withdrawal,
        values: &EntryValues,
    ) -> Result<WithdrawOutcome, TxError> {
        let key = withdrawal.account;
        let mut tx = self.pool.begin().await?;
        let balance: Option<(i64,)> = sqlx::query_as(sql(&self.sql.lock_balance))
            .bind(values.child_id)
            .bind(values.act_id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(first) = self
            .find(
                &mut *tx,
                key.child_id,
                "withdrawal",
                &withdrawal.withdraw_no,
            )
            .await?
        {
            tx.commit().await?;
            return Ok(if first.matches_withdrawal(withdrawal) {
                WithdrawOutcome::Duplicate { entry: first }
            } else {
                WithdrawOutcome::Conflict { first }
            });
        }
        let balance_cents = match balance {
            Some((balance,)) => to_u64(balance, "balance_cents")?,
            // No account: nothing was ever credited, so nothing can be taken out.
            None => 0,
        };
        if balance_cents < withdrawal.amount_cents {
            // A refusal writes nothing.
            tx.commit().await?;
            return Ok(WithdrawOutcome::InsufficientBalance { balance_cents });
        }
        sqlx::query(sql(&self.sql.debit_account))
            .bind(values.amount_cents)
            .bind(values.child_id)
            .bind(values.act_id)
            .execute(&mut *tx)
            .await?;
        let (seq,): (i64,) = sqlx::query_as(sql(&self.sql.insert_entry))
            .bind(values.child_id)
            .bind(values.act_id)
            .bind(values.direction)
            .bind(values.idem_key.as_str())
            .bind(values.award_type)
            .bind(values.amount_cents)
            .bind(values.asset_id)
            .bind(values.batch.as_deref())
            .bind(values.at_ms)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(WithdrawOutcome::Withdrawn {
            entry: Entry {
                seq: to_u64(seq, "seq")?,
                account: key,
                at_ms: withdrawal.at_ms,
                kind: EntryKind::Withdrawal {
                    withdraw_no: withdrawal.withdraw_no.clone(),
                    amount_cents: withdrawal.amount_cents,
                },
            },
            balance_after_cents: balance_cents - withdrawal.amount_cents,
        })
    }
}

server_ledger!(
    PostgresLedger,
    snapshot_begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
);
