//! `tributary-collector`: parses the command line, loads the configuration, serves until a
//! signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tributary_collector::config::Config;

#[derive(Parser)]
#[command(
    name = "tributary-collector",
    version,
    about = "Stores what Tributary agents send, exactly once, and answers queries"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, env = "TRIBUTARY_COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector (the default).
    Run,
    /// Validate the configuration and exit: 0 if valid, 2 with the file, key and reason if not.
    Check,
    /// Print a new agent token and the SHA-256 to put in collector.toml.
    Token {
        /// The agent id to put in the printed [[agents]] table.
        #[arg(long, default_value = "my-agent")]
        agent: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::Token { agent } = &command {
        let (token, hash) = tributary_collector::auth::new_token();
        println!("token = {token}");
        println!("token_sha256 = {}", hash.to_hex());
        println!();
        println!("# agent.toml of {agent}:  [forward] token = \"{token}\"");
        println!("# collector.toml:");
        println!(
            "[[agents]]\nid = {agent:?}\ntoken_sha256 = \"{}\"",
            hash.to_hex()
        );
        return ExitCode::SUCCESS;
    }
    init_logging(cli.log_format);
    let Some(path) = cli.config else {
        eprintln!("error: --config FILE is required (see config/collector.toml for every key)");
        return ExitCode::from(2);
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Check => {
            println!(
                "{}: ok (listen {}, storage {}, {} agent(s))",
                path.display(),
                config.listen,
                config.storage_path.display(),
                config.agents.len()
            );
            ExitCode::SUCCESS
        }
        Command::Run | Command::Token { .. } => run(config),
    }
}

fn run(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(address = %config.listen, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signals(shutdown.clone()));
        match tributary_collector::serve(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "collector failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// The first SIGTERM or SIGINT starts an orderly shutdown; a second one exits at once.
async fn wait_for_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting immediately");
    std::process::exit(130);
}

/// Logs to stderr at `info`, or as `RUST_LOG` says (`warn`, `tributary_agent=debug,info`, …).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer)
            .with(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json())
            .with(filter)
            .init(),
    }
}
