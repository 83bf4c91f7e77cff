//! The MariaDB/MySQL ledger (sqlx, InnoDB). A batch of credits is one transaction
//! of a few multi-row statements: read the batch's keys, insert the new entries,
//! read their `seq` back by key, add each account's cash once. The UNIQUE
//! (child_id, direction, idem_key) key is what makes crediting idempotent; a batch
//! that loses a race for a key (duplicate key, deadlock) rolls back and runs
//! again, so its outcomes stay exact.
//!
//! Never relies on consecutive AUTO_INCREMENT values (only on their growing),
//! and never builds SQL from input: statement text comes from the table prefix
//! alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::mysql::{
    MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions,
};
use sqlx::{AssertSqlSafe, Connection as _, MySql, MySqlExecutor, QueryBuilder, Transaction};

use super::sql::{
    ACCOUNT_COLUMNS, ACQUIRE_TIMEOUT, AccountRow, BatchPlan, CONNECT_TIMEOUT, CreditKey, EntryRow,
    EntryValues, POOL_CONNECTIONS_MAX, ROWS_PER_STATEMENT_MAX, Tables, TxError, bad_url,
    by_credit_key, entries, entry_columns, history_before, history_page, server_ledger, store,
    to_i64, to_u64, with_retries,
};
use super::{
    AccountKey, AccountState, Credit, CreditOutcome, Cursor, Entry, EntryKind, HistoryPage,
    LedgerCleanup, LedgerError, LedgerOptions, LedgerSnapshot, WithdrawOutcome, Withdrawal,
    check_batch, check_limit,
};
use crate::ChildId;
use crate::order_no::OrderNo;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// `idem_key` is VARBINARY (byte-exact keys); read it back as text.
const IDEM_KEY_TEXT: &str = "CAST(idem_key AS CHAR CHARACTER SET utf8mb4)";

/// Ledger in MariaDB/MySQL.
#[derive(Debug, Clone)]
pub struct MySqlLedger {
    pool: MySqlPool,
    options: LedgerOptions,
    sql: Arc<Statements>,
    /// The server numbers the rows of one multi-row INSERT consecutively
    /// (`innodb_autoinc_lock_mode` ≤ 1 and `auto_increment_increment` = 1), so a
    /// batch's `seq`s are LAST_INSERT_ID + row index and need no read-back.
    consecutive_ids: bool,
}

/// Every statement of one ledger, built once from its table names (never from
/// input), so each is safe to pass as [`AssertSqlSafe`]. The `*_head` ones start
/// a multi-row statement that a [`QueryBuilder`] completes.
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
    select_credits_head: String,
    inserted_since: Arc<str>,
    insert_credits_head: String,
    upsert_accounts_head: String,
}

const ENTRY_INSERT_COLUMNS: &str =
    "(child_id, act_id, direction, idem_key, award_type, amount_cents, asset_id, batch, at_ms)";

impl Statements {
    fn new(tables: &Tables) -> Self {
        let Tables { entries, accounts } = tables;
        let columns = entry_columns(IDEM_KEY_TEXT);
        let sql = |text: String| Arc::<str>::from(text);
        Self {
            find: sql(format!(
                "SELECT {columns} FROM {entries} WHERE child_id = ? AND direction = ? AND idem_key = ?"
            )),
            lock_balance: sql(format!(
                "SELECT balance_cents FROM {accounts} WHERE child_id = ? AND act_id = ? FOR UPDATE"
            )),
            debit_account: sql(format!(
                "UPDATE {accounts} SET balance_cents = balance_cents - ?, \
                 withdrawn_cents = withdrawn_cents + ? WHERE child_id = ? AND act_id = ?"
            )),
            insert_entry: sql(format!(
                "INSERT INTO {entries} {ENTRY_INSERT_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )),
            read_account: sql(format!(
                "SELECT {ACCOUNT_COLUMNS} FROM {accounts} WHERE child_id = ? AND act_id = ?"
            )),
            history: sql(format!(
                "SELECT {columns} FROM {entries} WHERE child_id = ? AND act_id = ? AND seq < ? \
                 ORDER BY seq DESC LIMIT ?"
            )),
            all_entries: sql(format!("SELECT {columns} FROM {entries} ORDER BY seq")),
            all_accounts: sql(format!(
                "SELECT {ACCOUNT_COLUMNS} FROM {accounts} ORDER BY child_id, act_id"
            )),
            purge_entries: sql(format!("DELETE FROM {entries}")),
            purge_accounts: sql(format!("DELETE FROM {accounts}")),
            select_credits_head: format!(
                "SELECT {columns} FROM {entries} WHERE direction = 'credit' AND child_id = "
            ),
            inserted_since: sql(format!(
                "SELECT child_id, {IDEM_KEY_TEXT} AS idem_key, seq FROM {entries} \
                 WHERE seq >= ? AND direction = 'credit'"
            )),
            insert_credits_head: format!("INSERT INTO {entries} {ENTRY_INSERT_COLUMNS} "),
            upsert_accounts_head: format!(
                "INSERT INTO {accounts} \
                 (child_id, act_id, balance_cents, credited_cents, withdrawn_cents) "
            ),
        }
    }
}

/// Adds each account's cash of the batch once; `VALUES(col)` is the row's new
/// value (accepted by MariaDB and MySQL alike).
const UPSERT_ACCOUNTS_TAIL: &str = " ON DUPLICATE KEY UPDATE \
     balance_cents = balance_cents + VALUES(balance_cents), \
     credited_cents = credited_cents + VALUES(credited_cents)";

/// A statement of [`Statements`], for sqlx.
fn sql(statement: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(statement))
}

/// A race another transaction won: the key it inserted meanwhile (1062), or a
/// deadlock (1213). The whole transaction was rolled back; running it again is safe.
fn retryable(e: &sqlx::Error) -> bool {
    const ER_DUP_ENTRY: u16 = 1062;
    const ER_LOCK_DEADLOCK: u16 = 1213;
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|e| matches!(e.number(), ER_DUP_ENTRY | ER_LOCK_DEADLOCK)),
        _ => false,
    }
}

impl MySqlLedger {
    /// Connect (failing within [`CONNECT_TIMEOUT`] when the server does not
    /// answer), migrate, and use the tables `options` names.
    pub async fn connect(url: &str, options: LedgerOptions) -> Result<Self, LedgerError> {
        let connect =
            MySqlConnectOptions::from_str(url).map_err(|e| bad_url(url, e.to_string()))?;
        let mut conn =
            match tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(&connect))
                .await
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
        // Interleaved mode (2, MySQL 8's default) or a Galera-style increment gives
        // no consecutive numbers: then the inserted rows are read back by key.
        let (lock_mode, increment): (i64, i64) = sqlx::query_as(
            "SELECT CAST(@@GLOBAL.innodb_autoinc_lock_mode AS SIGNED), \
             CAST(@@GLOBAL.auto_increment_increment AS SIGNED)",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| bad_url(url, format!("cannot read the auto-increment settings: {e}")))?;
        let consecutive_ids = lock_mode <= 1 && increment == 1;
        // Best effort: the pool opens its own connections.
        let _ = conn.close().await;
        let pool = MySqlPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(connect);
        Ok(Self {
            pool,
            options,
            sql: Arc::new(Statements::new(&Tables::new(options))),
            consecutive_ids,
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
        executor: impl MySqlExecutor<'_>,
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

    /// The credit entries posted under `keys`: per child, a chunk of keys per
    /// statement (`idem_key IN (…)` under one child_id is a plain list of
    /// probes of the unique key; a list of row values costs the optimizer more).
    async fn posted_credits(
        &self,
        tx: &mut Transaction<'static, MySql>,
        keys: &[&CreditKey],
    ) -> Result<HashMap<CreditKey, Entry>, TxError> {
        let mut by_child: BTreeMap<ChildId, Vec<&str>> = BTreeMap::new();
        for (child_id, idem_key) in keys {
            by_child.entry(*child_id).or_default().push(idem_key);
        }
        let mut found = Vec::new();
        for (child_id, idem_keys) in by_child {
            let child_id = to_i64(child_id, "child_id")?;
            for chunk in idem_keys.chunks(ROWS_PER_STATEMENT_MAX) {
                let mut query = QueryBuilder::<MySql>::new(&self.sql.select_credits_head);
                query.push_bind(child_id).push(" AND idem_key IN (");
                let mut list = query.separated(", ");
                for idem_key in chunk {
                    list.push_bind(*idem_key);
                }
                query.push(")");
                let query = query.build_query_as::<EntryRow>();
                let rows: Vec<EntryRow> = query.fetch_all(&mut **tx).await?;
                found.extend(entries(rows)?);
            }
        }
        Ok(by_credit_key(found))
    }

    /// The `seq` of each entry this transaction inserted under `keys`, the first
    /// of them numbered `first_seq` (LAST_INSERT_ID of the first INSERT: values
    /// only grow, so every row it and later statements inserted is at or after
    /// it). Rows of other transactions in that range are skipped by key; every
    /// key must be found.
    async fn inserted_seqs(
        &self,
        tx: &mut Transaction<'static, MySql>,
        keys: &[&CreditKey],
        first_seq: u64,
    ) -> Result<HashMap<CreditKey, u64>, TxError> {
        let wanted: HashSet<&CreditKey> = keys.iter().copied().collect();
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(sql(&self.sql.inserted_since))
            .bind(to_i64(first_seq, "seq")?)
            .fetch_all(&mut **tx)
            .await?;
        let mut seqs = HashMap::with_capacity(keys.len());
        for (child_id, idem_key, seq) in rows {
            let key = (to_u64(child_id, "child_id")?, idem_key);
            if wanted.contains(&key) {
                seqs.insert(key, to_u64(seq, "seq")?);
            }
        }
        if seqs.len() != wanted.len() {
            return Err(LedgerError::Corrupt(format!(
                "{} credits inserted, {} read back from seq {first_seq} on",
                wanted.len(),
                seqs.len()
            ))
            .into());
        }
        Ok(seqs)
    }

    /// One attempt at a batch: one transaction, all or nothing.
    async fn credit_once(&self, plan: &BatchPlan<'_>) -> Result<Vec<CreditOutcome>, TxError> {
        let mut tx = self.pool.begin().await?;
        let posted = self.posted_credits(&mut tx, &plan.unique_keys()).await?;
        let insert = plan.to_insert(&posted);
        let mut inserted = HashMap::new();
        if !insert.is_empty() {
            let mut first_seq = None;
            for chunk in insert.chunks(ROWS_PER_STATEMENT_MAX) {
                let mut query = QueryBuilder::<MySql>::new(&self.sql.insert_credits_head);
                query.push_values(chunk, |mut row, &i| {
                    let v = plan.values(i);
                    row.push_bind(v.child_id)
                        .push_bind(v.act_id)
                        .push_bind(v.direction)
                        .push_bind(v.idem_key.as_str())
                        .push_bind(v.award_type)
                        .push_bind(v.amount_cents)
                        .push_bind(v.asset_id)
                        .push_bind(v.batch.as_deref())
                        .push_bind(v.at_ms);
                });
                let done = query.build().execute(&mut *tx).await?;
                let first = done.last_insert_id();
                first_seq.get_or_insert(first);
                if self.consecutive_ids {
                    if done.rows_affected() != chunk.len() as u64 {
                        return Err(LedgerError::Corrupt(format!(
                            "an INSERT of {} credits inserted {}",
                            chunk.len(),
                            done.rows_affected()
                        ))
                        .into());
                    }
                    for (n, &i) in chunk.iter().enumerate() {
                        inserted.insert(plan.key(i).clone(), first + n as u64);
                    }
                }
            }
            let first_seq = first_seq.ok_or_else(|| {
                LedgerError::Corrupt("an INSERT of credits reported no seq".to_owned())
            })?;
            if !self.consecutive_ids {
                let keys: Vec<&CreditKey> = insert.iter().map(|&i| plan.key(i)).collect();
                inserted = self.inserted_seqs(&mut tx, &keys, first_seq).await?;
            }
            let deltas = plan.account_deltas(&insert)?;
            for chunk in deltas.chunks(ROWS_PER_STATEMENT_MAX) {
                let mut query = QueryBuilder::<MySql>::new(&self.sql.upsert_accounts_head);
                push_deltas(&mut query, chunk)?;
                query.push(UPSERT_ACCOUNTS_TAIL);
                query.build().execute(&mut *tx).await?;
            }
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
            .bind(values.amount_cents)
            .bind(values.child_id)
            .bind(values.act_id)
            .execute(&mut *tx)
            .await?;
        let seq = sqlx::query(sql(&self.sql.insert_entry))
            .bind(values.child_id)
            .bind(values.act_id)
            .bind(values.direction)
            .bind(values.idem_key.as_str())
            .bind(values.award_type)
            .bind(values.amount_cents)
            .bind(values.asset_id)
            .bind(values.batch.as_deref())
            .bind(values.at_ms)
            .execute(&mut *tx)
            .await?
            // One row inserted on this connection: its own AUTO_INCREMENT value.
            .last_insert_id();
        tx.commit().await?;
        Ok(WithdrawOutcome::Withdrawn {
            entry: Entry {
                seq,
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

/// `VALUES (?, ?, ?, ?, 0), …`: one row per account, cash added once.
fn push_deltas(
    query: &mut QueryBuilder<MySql>,
    deltas: &[(AccountKey, i64)],
) -> Result<(), LedgerError> {
    let rows = deltas
        .iter()
        .map(|(key, cents)| {
            Ok((
                to_i64(key.child_id, "child_id")?,
                to_i64(key.act_id, "act_id")?,
                *cents,
            ))
        })
        .collect::<Result<Vec<_>, LedgerError>>()?;
    query.push_values(rows, |mut row, (child_id, act_id, cents)| {
        row.push_bind(child_id)
            .push_bind(act_id)
            .push_bind(cents)
            .push_bind(cents)
            .push("0");
    });
    Ok(())
}

server_ledger!(
    MySqlLedger,
    snapshot_begin = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
);
