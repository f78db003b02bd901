//! The `draupnir` command: `serve` runs the daemon; the other subcommands
//! help an operator check a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

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
        /// Log format on stderr: `human` (colours only on a terminal) or
        /// `json` (one JSON object per line, for journald or a collector).
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
    /// Check a configuration file and print the settings in force.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check the host and the configuration; print a fix for each failure.
    ///
    /// Read-only: mounts nothing, creates nothing, changes no firewall rule.
    /// Exits 1 when any check fails.
    Doctor {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent copy of the metadata database (safe while the
    /// daemon runs). Restore: stop the daemon, copy the file back over
    /// `state_path/database_file`, start the daemon.
    BackupState {
        /// Where to write the copy.
        file: PathBuf,
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Replace the per-deployment masking key (state_path/masking.key) with
    /// a new random one. Images sealed afterwards get different masked
    /// values (a test account's masked e-mail changes); sealed images keep
    /// theirs. Safe while the daemon runs: each finalise reads the key.
    RotateMaskingKey {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// The log filter when `RUST_LOG` is not set.
const DEFAULT_LOG_FILTER: &str = "info,rustls::msgs::handshake=error";

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    // rustls warns of every client hello whose SNI holds an IP address
    // (which RFC 6066 forbids, and some clients send when given one): the
    // name is ignored and the handshake goes on, so nothing for an
    // operator. Its handshake parser is kept to errors.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => fmt.json().with_current_span(false).init(),
        LogFormat::Human => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
    }
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
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "draupnir",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("draupnir: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Doctor { config, json } => {
            let report = draupnir::core::doctor::run(&config);
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("draupnir: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.human());
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::BackupState { file, config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("draupnir: {e}");
                    return ExitCode::from(2);
                }
            };
            let db = config.database_path();
            if !db.exists() {
                eprintln!("draupnir: {} does not exist", db.display());
                return ExitCode::FAILURE;
            }
            match draupnir::core::backup_database(&db, &file) {
                Ok(()) => {
                    println!(
                        "{}: copy of {} (integrity ok)",
                        file.display(),
                        db.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("draupnir: backup failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::RotateMaskingKey { config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("draupnir: {e}");
                    return ExitCode::from(2);
                }
            };
            match draupnir::core::rotate_masking_key(&config.state_path) {
                Ok(path) => {
                    println!(
                        "{}: a new masking key; images sealed from now on mask with it",
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("draupnir: {e}");
                    ExitCode::FAILURE
                }
            }
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
        Command::Serve { config, log_format } => {
            let path = config;
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("draupnir: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("draupnir: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(config, path))
        }
    }
}

async fn serve(config: Config, path: PathBuf) -> ExitCode {
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
    let http = match draupnir::http::serve(service.clone(), &service.config()).await {
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
    sd_notify("READY=1");
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(_) => {
            eprintln!("draupnir: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping; instances keep running");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping; instances keep running");
                break;
            }
            _ = hup.recv() => match Config::load(&path) {
                Ok(new) => {
                    let report = service.reload(new);
                    if !report.needs_restart.is_empty() {
                        tracing::warn!(keys = ?report.needs_restart, "these changes take effect after a restart");
                    }
                    if let Err(e) = http.reload_tls(&service.config()) {
                        tracing::error!(error = %e, "TLS certificate not reloaded");
                    }
                }
                Err(e) => tracing::error!("SIGHUP: configuration not reloaded, the running one stays: {e}"),
            },
        }
    }
    sd_notify("STOPPING=1");
    ssh.shutdown();
    http.shutdown().await;
    // Connections already open keep going: let their uploads and running
    // finalises end, within shutdown_grace.
    let left = service.drain(service.config().shutdown_grace).await;
    if !left.is_empty() {
        let list: Vec<String> = left.iter().map(ToString::to_string).collect();
        tracing::warn!(
            "shutdown_grace is over; the uploads/finalises of images {} are cut off and marked failed at the next start",
            list.join(", ")
        );
    }
    service.shutdown();
    ExitCode::SUCCESS
}

/// Tell systemd (`Type=notify`) about our state through `$NOTIFY_SOCKET`;
/// a no-op outside systemd. Failures are logged, never fatal.
fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().to_string();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({path}): {e}");
    }
}
