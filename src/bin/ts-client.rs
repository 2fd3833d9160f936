//! `ts-client`: a virtual clock that reports itself and follows the master.

use anyhow::Context;
use clap::Parser;
use std::process::ExitCode;
use time_sync::settings::ClientConfig;

/// time-sync client: keeps a virtual clock in sync with the cluster's master.
#[derive(Parser)]
#[command(name = "ts-client", version, about)]
struct Cli {
    #[command(flatten)]
    config: ClientConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ts-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut config: ClientConfig) -> anyhow::Result<()> {
    config.validate()?;
    // The id names the log file, so it is fixed before logging starts; a swarm logs to
    // `swarm-<first address>`.
    let log_name = match config.node.swarm {
        Some(_) => format!("swarm-{}", config.node.swarm_ip_base),
        None => {
            let id = config.node.resolved_id()?;
            config.node.id = Some(id);
            id.to_string()
        }
    };
    let _guard = time_sync::logging::init(config.node.log_file_dir(), &log_name)
        .context("cannot open the client log")?;
    // One thread: a client does little work, and a small footprint matters with many per host.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let shutdown = time_sync::shutdown::on_signals();
        match config.node.swarm {
            Some(_) => time_sync::client::swarm::run(config, shutdown).await,
            None => time_sync::client::run(config, shutdown).await,
        }
    })?;
    Ok(())
}
