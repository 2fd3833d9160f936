//! `ts-server`: stores client reports, elects the master client, broadcasts its time.

use anyhow::Context;
use clap::Parser;
use std::process::ExitCode;
use time_sync::settings::ServerConfig;

/// time-sync server: report workers and the master scheduler.
#[derive(Parser)]
#[command(name = "ts-server", version, about)]
struct Cli {
    #[command(flatten)]
    config: ServerConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ts-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: ServerConfig) -> anyhow::Result<()> {
    config.validate()?;
    let _guard = time_sync::logging::init(config.node.log_file_dir(), &config.node.log_file_name())
        .context("cannot open the server log")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let shutdown = time_sync::shutdown::on_signals();
        time_sync::server::run(config, shutdown).await
    })?;
    Ok(())
}
