//! `tsc`: the time-sync cluster CLI.

use clap::Parser;
use std::process::ExitCode;
use time_sync::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tsc: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("tsc: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
