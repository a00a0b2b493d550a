//! The `sluice` binary: `run` the proxy, `check` a config file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::config::Config;
use sluice::server::Server;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: a call's messages are many small short-lived buffers
/// allocated on one worker and often freed on another, where glibc spends its time
/// consolidating and unlinking chunks (README, Performance: the measurement).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sluice", version, about = "A SIP edge proxy with built-in CPS and channel limiting")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, default_value = "config/sluice.toml")]
        config: PathBuf,
    },
    /// Validate a config file and print a summary; exit 1 listing every error.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the usage report (p95 of per-minute peak CPS, max, minutes) from the state file;
    /// safe while the proxy runs.
    Usage {
        #[arg(long, default_value = "config/sluice.toml")]
        config: PathBuf,
    },
    /// A live terminal view of a running sluice's /status (like htop).
    Top {
        /// The admin listener, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:9060")]
        admin: String,
        /// The admin token ([server] admin_token), if the listener has one.
        #[arg(long, env = "SLUICE_ADMIN_TOKEN")]
        token: Option<String>,
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Usage { config } => usage(&config),
        Command::Top { admin, token, interval_ms } => {
            match sluice::top::run(&admin, token.as_deref(), std::time::Duration::from_millis(interval_ms)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice top: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{} error(s) in {}", errors.0.len(), path.display());
        ExitCode::FAILURE
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok(config) => {
            print!("{}", sluice::config::summary::render(&config));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn usage(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(state) = &config.usage.state_file else {
        eprintln!(
            "{}: [usage] state_file is not set: the report lives only in the running proxy (GET /usage)",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    let mut tracker = sluice::usage::UsageTracker::now_anchored(config.usage.window_days);
    match tracker.load(state) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("{}: no usage recorded yet", state.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    tracker.roll(tokio::time::Instant::now());
    print!("{}", sluice::top::usage_table(&tracker.report(), config.usage.window_days));
    ExitCode::SUCCESS
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path).map_err(|_| anyhow::anyhow!("invalid configuration"))?;
    // Lives until run returns, so the last lines (server.stopped) are flushed at exit.
    let logs = sluice::logging::init(config.log_format, &config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads())
        .thread_name("sluice-worker")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let drain = config.drain;
        let server = Server::bind(config).await?;
        let running = server.start(CancellationToken::new());
        if let Some(every) = sluice::systemd::watchdog_interval() {
            tokio::spawn(sluice::systemd::watchdog(running.shared.clone(), every));
        }
        sluice::systemd::ready(running.shared.node.active_calls());
        wait_for_signals(&running).await?;
        sluice::systemd::stopping();
        running.drain_and_stop(drain).await;
        if let Some(dropped) = logs.as_ref().map(sluice::logging::LogGuard::dropped).filter(|n| *n > 0) {
            eprintln!("sluice: {dropped} log lines were dropped because the log writer could not keep up");
        }
        Ok(())
    })
}

/// SIGHUP reloads the config; SIGTERM/SIGINT return (to drain and stop).
async fn wait_for_signals(running: &sluice::server::Running) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                sluice::systemd::reloading();
                if let Err(errors) = sluice::admin::reload::reload(&running.shared) {
                    tracing::error!(event = "config.reload_failed", errors = ?errors, "reload refused; the running configuration stays");
                }
                sluice::systemd::ready(running.shared.node.active_calls());
            }
        }
    }
}
