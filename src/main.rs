//! The `draupnir` command: `serve` runs the daemon; the other subcommands
//! help an operator check a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use draupnir::config::Config;
use draupnir::core::Service;

const DEFAULT_CONFIG: &str = "/etc/draupnir/config.toml";

#[derive(Parser)]
#[command(
    name = "draupnir",
    version,
    about = "Fresh, anonymised, private PostgreSQL instances in under a second, over SSH"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration file and print the settings in force.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the version.
    Version,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // russh and russh-sftp log through `log`; route it into tracing.
    let _ = tracing_log::LogTracer::init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("draupnir {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!("{}: ok", config.display());
                println!("data_path = {}", c.data_path.display());
                println!("state_path = {}", c.state_path.display());
                println!(
                    "instance ports = {}..{}",
                    c.min_instance_port, c.max_instance_port
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("draupnir: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("draupnir: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("draupnir: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(config))
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    // Before anything logs "running": a SIGTERM right after must be caught.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("draupnir: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let (service, _report) = match Service::open(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("draupnir: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ssh = match draupnir::ssh::serve(service.clone(), &service.config().ssh).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("draupnir: cannot start: {e}");
            service.shutdown();
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %ssh.local_addr(), "ssh listening on {}", ssh.local_addr());
    let http = match draupnir::http::serve(service.clone(), service.config()).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("cannot start the HTTP API: {e}");
            eprintln!("draupnir: cannot start the HTTP API: {e}");
            ssh.shutdown();
            service.shutdown();
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "draupnir is running");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping; instances keep running"),
        _ = int.recv() => tracing::info!("SIGINT: stopping; instances keep running"),
    }
    ssh.shutdown();
    http.shutdown().await;
    service.shutdown();
    ExitCode::SUCCESS
}
