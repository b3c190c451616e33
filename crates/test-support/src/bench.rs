//! What every benchmark binary (`harness = false`) needs: whether this is
//! `cargo bench` (real sizes) or the smoke run `cargo test` makes (tiny
//! sizes, so CI proves the benchmarks still run), and sizes from the environment.

use std::str::FromStr;

/// A small smoke run under `cargo test`; `cargo bench` passes `--bench`.
pub fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The number in environment variable `name`, else `default`.
pub fn env_number<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The PostgreSQL server a benchmark uses: `RENKEI_BENCH_POSTGRES_URL`, else
/// the tests' (`RENKEI_TEST_POSTGRES_URL`); `None` when neither is set.
pub fn postgres_server() -> Option<String> {
    std::env::var("RENKEI_BENCH_POSTGRES_URL").or_else(|_| std::env::var(crate::POSTGRES_URL_VAR)).ok()
}
