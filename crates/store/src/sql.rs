//! The dialect layer: what lets one SQL text and one row reader serve both
//! backends.
//!
//! Both drivers take `$n` parameters, so a query that the dialects agree on
//! is written once. What still differs is closed here:
//! - [`Dialect`] (implemented for `Sqlite` and `Postgres`) binds the few
//!   kinds of value the store uses ([`Arg`]: timestamps are INTEGER
//!   microseconds on SQLite and `timestamptz` on PostgreSQL, JSON is text on
//!   SQLite), reads them back, and runs a built query;
//! - [`Sql`] (implemented by `SqliteStore` and `PgStore`) names the pools:
//!   SQLite's one writer and its readers, PostgreSQL's one pool, and the
//!   webhook inbox's own (`inbox_writer`, `inbox_reader`).
//!
//! Generic code only ever calls these concrete methods, so the executor
//! bounds that sqlx needs are stated once, in each backend's impl.

use crate::{StoreError, StoreResult};
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, MemberId};
use serde_json::Value;
use sqlx::{Database, Pool, Transaction};
use std::future::Future;
use uuid::Uuid;

/// A query as built by [`stmt`]: static SQL with its arguments.
pub type Query<DB> = sqlx::query::Query<'static, DB, <DB as Database>::Arguments>;

/// A value to bind: the closed set the store's queries use.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Str(&'a str),
    OptStr(Option<&'a str>),
    I64(i64),
    OptI64(Option<i64>),
    Bool(bool),
    /// INTEGER microseconds on SQLite, `timestamptz` on PostgreSQL.
    Ts(DateTime<Utc>),
    OptTs(Option<DateTime<Utc>>),
    /// TEXT on SQLite, `json`/`jsonb` on PostgreSQL.
    Json(&'a Value),
    /// BLOB on SQLite, `bytea` on PostgreSQL.
    Bytes(&'a [u8]),
}

/// A timestamp argument or column (see [`Arg::Ts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ts(pub DateTime<Utc>);

impl<'a> From<&'a str> for Arg<'a> {
    fn from(value: &'a str) -> Self {
        Arg::Str(value)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(value: &'a String) -> Self {
        Arg::Str(value)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(value: Option<&'a str>) -> Self {
        Arg::OptStr(value)
    }
}

impl<'a> From<&'a LineUserId> for Arg<'a> {
    fn from(value: &'a LineUserId) -> Self {
        Arg::Str(value.as_str())
    }
}

impl<'a> From<&'a MemberId> for Arg<'a> {
    fn from(value: &'a MemberId) -> Self {
        Arg::Str(value.as_str())
    }
}

impl From<i64> for Arg<'_> {
    fn from(value: i64) -> Self {
        Arg::I64(value)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(value: Option<i64>) -> Self {
        Arg::OptI64(value)
    }
}

impl From<u32> for Arg<'_> {
    fn from(value: u32) -> Self {
        Arg::I64(i64::from(value))
    }
}

impl From<bool> for Arg<'_> {
    fn from(value: bool) -> Self {
        Arg::Bool(value)
    }
}

impl From<Ts> for Arg<'_> {
    fn from(value: Ts) -> Self {
        Arg::Ts(value.0)
    }
}

impl From<Option<Ts>> for Arg<'_> {
    fn from(value: Option<Ts>) -> Self {
        Arg::OptTs(value.map(|t| t.0))
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(value: &'a [u8]) -> Self {
        Arg::Bytes(value)
    }
}

impl<'a> From<&'a Value> for Arg<'a> {
    fn from(value: &'a Value) -> Self {
        Arg::Json(value)
    }
}

/// A backend's SQL dialect, as the shared code needs it.
pub trait Dialect: Database + sqlx::database::HasStatementCache {
    fn bind(query: Query<Self>, arg: Arg<'_>) -> Query<Self>;

    fn execute(pool: &Pool<Self>, query: Query<Self>) -> impl Future<Output = StoreResult<u64>> + Send;
    fn fetch_all(pool: &Pool<Self>, query: Query<Self>) -> impl Future<Output = StoreResult<Vec<Self::Row>>> + Send;
    fn fetch_optional(
        pool: &Pool<Self>,
        query: Query<Self>,
    ) -> impl Future<Output = StoreResult<Option<Self::Row>>> + Send;
    fn fetch_one(pool: &Pool<Self>, query: Query<Self>) -> impl Future<Output = StoreResult<Self::Row>> + Send;
    fn begin(pool: &Pool<Self>) -> impl Future<Output = StoreResult<Transaction<'static, Self>>> + Send;
    fn commit(tx: Transaction<'static, Self>) -> impl Future<Output = StoreResult<()>> + Send;
    /// The same in an open transaction.
    fn execute_in(conn: &mut Self::Connection, query: Query<Self>) -> impl Future<Output = StoreResult<u64>> + Send;
    fn fetch_optional_in(
        conn: &mut Self::Connection,
        query: Query<Self>,
    ) -> impl Future<Output = StoreResult<Option<Self::Row>>> + Send;

    fn string(row: &Self::Row, column: &str) -> StoreResult<String>;
    fn opt_string(row: &Self::Row, column: &str) -> StoreResult<Option<String>>;
    /// Any integer column (PostgreSQL's `integer` as well as `bigint`).
    fn int(row: &Self::Row, column: &str) -> StoreResult<i64>;
    fn opt_int(row: &Self::Row, column: &str) -> StoreResult<Option<i64>>;
    fn boolean(row: &Self::Row, column: &str) -> StoreResult<bool>;
    fn ts(row: &Self::Row, column: &str) -> StoreResult<DateTime<Utc>>;
    fn opt_ts(row: &Self::Row, column: &str) -> StoreResult<Option<DateTime<Utc>>>;
    /// A JSON column (TEXT on SQLite).
    fn json(row: &Self::Row, column: &str) -> StoreResult<Value>;
    /// A UUID column (TEXT on SQLite).
    fn uuid(row: &Self::Row, column: &str) -> StoreResult<Uuid>;
    /// A BLOB (SQLite) or `bytea` (PostgreSQL) column.
    fn bytes(row: &Self::Row, column: &str) -> StoreResult<Vec<u8>>;
}

/// A store's pools.
pub trait Sql: Send + Sync + 'static {
    type Db: Dialect;

    /// Where writes go (SQLite's single writer connection).
    fn writer(&self) -> &Pool<Self::Db>;

    /// Where reads go (SQLite's read-only pool).
    fn reader(&self) -> &Pool<Self::Db>;

    /// Where the webhook inbox is written: a pool no other write waits in
    /// front of (SQLite: its own database file and writer; PostgreSQL: its
    /// own connections).
    fn inbox_writer(&self) -> &Pool<Self::Db>;

    /// Where the webhook inbox is read.
    fn inbox_reader(&self) -> &Pool<Self::Db>;
}

/// A statement to bind and run.
pub struct Stmt<DB: Dialect>(Query<DB>);

/// Starts a statement of static SQL (`$n` parameters).
pub fn stmt<DB: Dialect>(sql: &'static str) -> Stmt<DB> {
    Stmt(sqlx::query(sql))
}

/// Starts a statement of SQL built at run time. Only for text assembled
/// from fixed fragments and validated names, never from values (bind those).
/// Not kept prepared: PostgreSQL plans it with its values each time, where a
/// cached generic plan may misjudge them (a fan-out's page of a SKU many
/// users favourited was sorted whole, 400 ms, instead of read in index
/// order, 2.5 ms).
pub fn stmt_built<DB: Dialect>(sql: String) -> Stmt<DB> {
    Stmt(sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false))
}

impl<DB: Dialect> Stmt<DB> {
    pub fn bind<'a>(self, arg: impl Into<Arg<'a>>) -> Self {
        Stmt(DB::bind(self.0, arg.into()))
    }

    pub async fn execute(self, pool: &Pool<DB>) -> StoreResult<u64> {
        DB::execute(pool, self.0).await
    }

    pub async fn fetch_all(self, pool: &Pool<DB>) -> StoreResult<Vec<DB::Row>> {
        DB::fetch_all(pool, self.0).await
    }

    pub async fn fetch_optional(self, pool: &Pool<DB>) -> StoreResult<Option<DB::Row>> {
        DB::fetch_optional(pool, self.0).await
    }

    /// Every row, read with `read`.
    pub async fn all<T>(self, pool: &Pool<DB>, read: impl Fn(Row<'_, DB>) -> StoreResult<T>) -> StoreResult<Vec<T>> {
        rows(&DB::fetch_all(pool, self.0).await?, read)
    }

    /// The row, if any, read with `read`.
    pub async fn optional<T>(
        self,
        pool: &Pool<DB>,
        read: impl FnOnce(Row<'_, DB>) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        row(DB::fetch_optional(pool, self.0).await?.as_ref(), read)
    }

    /// The one row, read with `read`.
    pub async fn one<T>(self, pool: &Pool<DB>, read: impl FnOnce(Row<'_, DB>) -> StoreResult<T>) -> StoreResult<T> {
        read(Row(&DB::fetch_one(pool, self.0).await?))
    }

    pub async fn execute_in(self, conn: &mut DB::Connection) -> StoreResult<u64> {
        DB::execute_in(conn, self.0).await
    }

    /// The row, if any, read with `read`, in an open transaction.
    pub async fn optional_in<T>(
        self,
        conn: &mut DB::Connection,
        read: impl FnOnce(Row<'_, DB>) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        row(DB::fetch_optional_in(conn, self.0).await?.as_ref(), read)
    }
}

/// A row, read through its backend's [`Dialect`].
pub struct Row<'r, DB: Dialect>(pub &'r DB::Row);

impl<DB: Dialect> Row<'_, DB> {
    pub fn string(&self, column: &str) -> StoreResult<String> {
        DB::string(self.0, column)
    }

    pub fn opt_string(&self, column: &str) -> StoreResult<Option<String>> {
        DB::opt_string(self.0, column)
    }

    pub fn int(&self, column: &str) -> StoreResult<i64> {
        DB::int(self.0, column)
    }

    pub fn opt_int(&self, column: &str) -> StoreResult<Option<i64>> {
        DB::opt_int(self.0, column)
    }

    pub fn boolean(&self, column: &str) -> StoreResult<bool> {
        DB::boolean(self.0, column)
    }

    pub fn ts(&self, column: &str) -> StoreResult<DateTime<Utc>> {
        DB::ts(self.0, column)
    }

    pub fn opt_ts(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        DB::opt_ts(self.0, column)
    }

    pub fn json(&self, column: &str) -> StoreResult<Value> {
        DB::json(self.0, column)
    }

    pub fn uuid(&self, column: &str) -> StoreResult<Uuid> {
        DB::uuid(self.0, column)
    }

    pub fn bytes(&self, column: &str) -> StoreResult<Vec<u8>> {
        DB::bytes(self.0, column)
    }

    pub fn user(&self, column: &str) -> StoreResult<LineUserId> {
        crate::parse_user(&self.string(column)?)
    }

    pub fn opt_user(&self, column: &str) -> StoreResult<Option<LineUserId>> {
        self.opt_string(column)?.as_deref().map(crate::parse_user).transpose()
    }

    pub fn opt_member(&self, column: &str) -> StoreResult<Option<MemberId>> {
        self.opt_string(column)?.as_deref().map(crate::parse_member).transpose()
    }

    /// A stored state name, parsed with `parse`; an unknown one is corrupt data.
    pub fn parsed<T>(&self, column: &str, what: &str, parse: impl FnOnce(&str) -> Option<T>) -> StoreResult<T> {
        let text = self.string(column)?;
        parse(&text).ok_or_else(|| StoreError::Corrupt(format!("{what} {text:?}")))
    }
}

/// Reads every row with `read`.
pub fn rows<DB: Dialect, T>(rows: &[DB::Row], read: impl Fn(Row<'_, DB>) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(|row| read(Row(row))).collect()
}

/// Reads the row, if any, with `read`.
pub fn row<DB: Dialect, T>(
    row: Option<&DB::Row>,
    read: impl FnOnce(Row<'_, DB>) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    row.map(|row| read(Row(row))).transpose()
}

/// The executor methods (and the plain getters) of a [`Dialect`] impl: the same text for both
/// drivers, each compiled against its own concrete types (so no generic
/// executor bounds are needed anywhere).
macro_rules! executors {
    () => {
        async fn execute(pool: &Pool<Self>, query: Query<Self>) -> StoreResult<u64> {
            Ok(query.execute(pool).await?.rows_affected())
        }

        async fn fetch_all(pool: &Pool<Self>, query: Query<Self>) -> StoreResult<Vec<Self::Row>> {
            Ok(query.fetch_all(pool).await?)
        }

        async fn fetch_optional(pool: &Pool<Self>, query: Query<Self>) -> StoreResult<Option<Self::Row>> {
            Ok(query.fetch_optional(pool).await?)
        }

        async fn fetch_one(pool: &Pool<Self>, query: Query<Self>) -> StoreResult<Self::Row> {
            Ok(query.fetch_one(pool).await?)
        }

        async fn commit(tx: Transaction<'static, Self>) -> StoreResult<()> {
            Ok(tx.commit().await?)
        }

        async fn execute_in(conn: &mut Self::Connection, query: Query<Self>) -> StoreResult<u64> {
            Ok(query.execute(conn).await?.rows_affected())
        }

        async fn fetch_optional_in(conn: &mut Self::Connection, query: Query<Self>) -> StoreResult<Option<Self::Row>> {
            Ok(query.fetch_optional(conn).await?)
        }

        fn string(row: &Self::Row, column: &str) -> StoreResult<String> {
            Ok(sqlx::Row::try_get(row, column)?)
        }

        fn opt_string(row: &Self::Row, column: &str) -> StoreResult<Option<String>> {
            Ok(sqlx::Row::try_get(row, column)?)
        }

        fn boolean(row: &Self::Row, column: &str) -> StoreResult<bool> {
            Ok(sqlx::Row::try_get(row, column)?)
        }

        fn bytes(row: &Self::Row, column: &str) -> StoreResult<Vec<u8>> {
            Ok(sqlx::Row::try_get(row, column)?)
        }
    };
}

/// A [`Dialect`]'s `bind`: the same table of [`Arg`]s for both drivers,
/// given how the backend stores a timestamp (`ts`) and a JSON value (`json`).
macro_rules! binder {
    (ts: $ts:expr, json: $json:expr) => {
        fn bind(query: Query<Self>, arg: Arg<'_>) -> Query<Self> {
            match arg {
                Arg::Str(v) => query.bind(v),
                Arg::OptStr(v) => query.bind(v),
                Arg::I64(v) => query.bind(v),
                Arg::OptI64(v) => query.bind(v),
                Arg::Bool(v) => query.bind(v),
                Arg::Ts(v) => query.bind($ts(v)),
                Arg::OptTs(v) => query.bind(v.map($ts)),
                Arg::Json(v) => query.bind($json(v)),
                Arg::Bytes(v) => query.bind(v),
            }
        }
    };
}

// ---------------------------------------------------------------- SQLite

fn corrupt_time(micros: i64) -> StoreError {
    StoreError::Corrupt(format!("timestamp {micros}"))
}

impl Dialect for sqlx::Sqlite {
    binder!(ts: |t: DateTime<Utc>| t.timestamp_micros(), json: |v: &Value| v.to_string());

    executors!();

    /// Every transaction is begun on a writer pool: taking the write lock
    /// first makes another process's writer (`renkei import` beside a
    /// server) wait its `busy_timeout`, where a deferred transaction that
    /// read first would fail at once on upgrading.
    async fn begin(pool: &Pool<Self>) -> StoreResult<Transaction<'static, Self>> {
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    fn int(row: &Self::Row, column: &str) -> StoreResult<i64> {
        Ok(sqlx::Row::try_get(row, column)?)
    }

    fn opt_int(row: &Self::Row, column: &str) -> StoreResult<Option<i64>> {
        Ok(sqlx::Row::try_get(row, column)?)
    }

    fn ts(row: &Self::Row, column: &str) -> StoreResult<DateTime<Utc>> {
        let micros: i64 = sqlx::Row::try_get(row, column)?;
        DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt_time(micros))
    }

    fn opt_ts(row: &Self::Row, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        let micros: Option<i64> = sqlx::Row::try_get(row, column)?;
        micros.map(|m| DateTime::from_timestamp_micros(m).ok_or_else(|| corrupt_time(m))).transpose()
    }

    fn json(row: &Self::Row, column: &str) -> StoreResult<Value> {
        let text: &str = sqlx::Row::try_get(row, column)?;
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
    }

    fn uuid(row: &Self::Row, column: &str) -> StoreResult<Uuid> {
        let text: &str = sqlx::Row::try_get(row, column)?;
        Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
    }
}

// ------------------------------------------------------------ PostgreSQL

impl Dialect for sqlx::Postgres {
    binder!(ts: |t: DateTime<Utc>| t, json: sqlx::types::Json);

    executors!();

    async fn begin(pool: &Pool<Self>) -> StoreResult<Transaction<'static, Self>> {
        Ok(pool.begin().await?)
    }

    fn int(row: &Self::Row, column: &str) -> StoreResult<i64> {
        Ok(Self::opt_int(row, column)?
            .ok_or_else(|| sqlx::Error::ColumnDecode { index: column.to_string(), source: "unexpected NULL".into() })?)
    }

    fn opt_int(row: &Self::Row, column: &str) -> StoreResult<Option<i64>> {
        use sqlx::{TypeInfo, ValueRef};
        // `integer` columns (attempts) decode as i32 only.
        let raw = sqlx::Row::try_get_raw(row, column)?;
        if !raw.is_null() && raw.type_info().name() == "INT4" {
            let value: i32 = sqlx::Row::try_get(row, column)?;
            return Ok(Some(i64::from(value)));
        }
        Ok(sqlx::Row::try_get(row, column)?)
    }

    fn ts(row: &Self::Row, column: &str) -> StoreResult<DateTime<Utc>> {
        Ok(sqlx::Row::try_get(row, column)?)
    }

    fn opt_ts(row: &Self::Row, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(sqlx::Row::try_get(row, column)?)
    }

    fn json(row: &Self::Row, column: &str) -> StoreResult<Value> {
        let sqlx::types::Json(value): sqlx::types::Json<Value> = sqlx::Row::try_get(row, column)?;
        Ok(value)
    }

    fn uuid(row: &Self::Row, column: &str) -> StoreResult<Uuid> {
        Ok(sqlx::Row::try_get(row, column)?)
    }
}
