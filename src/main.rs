//! `renkei`: one binary, many roles. See `renkei --help`.

use clap::Parser;
use std::process::ExitCode;

// Recompute and dispatch allocate many small, short-lived values across
// threads; mimalloc does that with markedly less CPU than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = renkei::cli::Cli::parse();
    match renkei::cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
