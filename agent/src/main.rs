//! `tributary-agent`: parses the command line, loads the configuration, runs until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tributary_agent::config::{Config, RawConfig};
use tributary_common::config::load_for_main;
use tributary_common::logging::{self, LogFormat};
use tributary_common::signals;

#[derive(Parser)]
#[command(
    name = "tributary-agent",
    version,
    about = "Collects readings at the edge and forwards them exactly once"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, env = "TRIBUTARY_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration and exit: 0 if valid, 2 with the file, key and reason if not.
    Check,
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let config = match load_for_main::<RawConfig>(cli.config.as_deref(), "config/agent.toml") {
        Ok(config) => config,
        Err(status) => return status,
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!(
                "{}: ok (agent {:?}, {} input(s), collector {})",
                cli.config.unwrap_or_default().display(),
                config.agent.id,
                config.inputs.len(),
                config.forward.batches_url
            );
            ExitCode::SUCCESS
        }
        Command::Run => run(config),
    }
}

fn run(config: Config) -> ExitCode {
    // One thread runs every task: the agent's work is mostly waiting, and keeping its tasks on
    // one thread avoids a cross-thread wakeup per message. SQLite runs on the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
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
        let shutdown = CancellationToken::new();
        tokio::spawn(signals::cancel_on_signal(shutdown.clone()));
        match tributary_agent::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "agent failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// glibc gives threads their own malloc arenas, each holding on to memory it has freed; with
/// SQLite working on blocking-pool threads that cost the agent about 5 MiB of RSS. One arena is
/// enough for a process whose threads rarely allocate at the same time. (musl has no arenas.)
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tuning; it is called before any other thread
        // exists, and a failure (return value 0) leaves the default in place.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
