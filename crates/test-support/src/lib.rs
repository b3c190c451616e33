//! What renkei's tests and benchmarks share, kept out of the production
//! crates: throwaway stores on both backends ([`store`]), the one
//! [`on_both_backends!`] macro, the [`Backend`] type it runs over, resource
//! meters for benchmarks ([`measure`]), the benchmarks' run mode and sizes
//! ([`bench`]) and a deterministic generator ([`Rng`]).

pub mod bench;
pub mod measure;
mod rng;
pub mod store;

pub use renkei_store::Backend;
pub use rng::Rng;
pub use store::{
    POSTGRES_URL_VAR, TestStore, available, create_database, drop_database, postgres, postgres_on, postgres_server_url,
    postgres_with, sqlite, sqlite_with, store,
};

/// Declares each listed async test fn once per backend, as
/// `sqlite::<name>` and `postgres::<name>`.
///
/// `setup` is an async fn taking a [`Backend`] and returning `Option<F>`; each
/// test fn takes that `F`. `None` (PostgreSQL not configured) skips the
/// PostgreSQL test with a message, which [`postgres_server_url`] refuses in
/// CI. A leading `multi_thread,` runs the tests on a two-worker runtime.
///
/// ```ignore
/// renkei_test_support::on_both_backends!(renkei_test_support::store::store => links_are_one_to_one);
/// async fn links_are_one_to_one(test: TestStore) { /* … */ }
/// ```
#[macro_export]
macro_rules! on_both_backends {
    (multi_thread, $setup:path => $($name:ident),+ $(,)?) => {
        $crate::on_both_backends!(@expand [tokio::test(flavor = "multi_thread", worker_threads = 2)] $setup => $($name),+);
    };
    ($setup:path => $($name:ident),+ $(,)?) => {
        $crate::on_both_backends!(@expand [tokio::test] $setup => $($name),+);
    };
    (@expand [$test:meta] $setup:path => $($name:ident),+) => {
        $crate::on_both_backends!(@backend sqlite, Sqlite, [$test] $setup => $($name),+);
        $crate::on_both_backends!(@backend postgres, Postgres, [$test] $setup => $($name),+);
    };
    (@backend $module:ident, $backend:ident, [$test:meta] $setup:path => $($name:ident),+) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[$test]
                async fn $name() {
                    if let Some(fixture) = $setup($crate::Backend::$backend).await {
                        super::$name(fixture).await;
                    }
                }
            )+
        }
    };
}
