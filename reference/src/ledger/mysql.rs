//! The MariaDB/MySQL ledger (sqlx). STUB — being written.

use async_trait::async_trait;

use super::*;
use crate::ChildId;

/// Ledger in MariaDB/MySQL.
#[derive(Debug, Clone)]
pub struct MySqlLedger {
    options: LedgerOptions,
}

impl MySqlLedger {
    /// Connect, migrate and use the tables `options` names.
    pub async fn connect(url: &str, options: LedgerOptions) -> Result<Self, LedgerError> {
        let _ = options;
        Err(LedgerError::BadUrl {
            url: url.to_owned(),
            why: "not built yet".to_owned(),
        })
    }

    /// Delete every row of the shadow tables; refuses on the real tables.
    pub async fn purge_shadow(&self) -> Result<LedgerCleanup, LedgerError> {
        let _ = self.options;
        Err(LedgerError::Misuse("not built yet".to_owned()))
    }
}

#[async_trait]
impl Ledger for MySqlLedger {
    #[allow(unused_variables)]
    async fn credit_batch(&self, credits: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError> {
        Err(LedgerError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn lookup_credit(
        &self,
        child_id: ChildId,
        order_no: &OrderNo,
    ) -> Result<Option<Entry>, LedgerError> {
        Err(LedgerError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn withdraw(&self, withdrawal: &Withdrawal) -> Result<WithdrawOutcome, LedgerError> {
        Err(LedgerError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn account(&self, key: AccountKey) -> Result<AccountState, LedgerError> {
        Err(LedgerError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn history(
        &self,
        key: AccountKey,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<HistoryPage, LedgerError> {
        Err(LedgerError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
        Err(LedgerError::Store("not built".to_owned()))
    }
}
