//! `tributary-agent`: parses the command line, loads the configuration, runs until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tributary_agent::config::RawConfig;
use tributary_common::config::load_for_main;
use tributary_common::lifecycle::{self, Threads};
use tributary_common::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "tributary-agent",
    version,
    about = "Collects readings at the edge and forwards them exactly once"
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The configuration file, for the commands that read one (not `quickstart`).
#[derive(clap::Args, Clone, Default)]
struct ConfigArg {
    /// The configuration file [default: /etc/tributary/agent.toml].
    #[arg(long, short, env = "TRIBUTARY_AGENT_CONFIG")]
    config: Option<PathBuf>,
}

/// Where the packages install the configuration.
const DEFAULT_CONFIG: &str = "/etc/tributary/agent.toml";

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the configuration and exit: 0 if valid, 2 with the file, key and reason if not.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run every input once and print the points it would buffer, as line protocol; nothing
    /// is buffered or forwarded.
    Test {
        #[command(flatten)]
        config: ConfigArg,
        /// With --payload: a message on this topic, decoded by the MQTT inputs that subscribe
        /// to it (topic template, format, tags), as if it had arrived.
        #[arg(long, requires = "payload")]
        topic: Option<String>,
        /// The message's payload (with --topic).
        #[arg(long, requires = "topic")]
        payload: Option<String>,
    },
    /// Ask the running agent's /health (agent.listen of --config, or --url): exit 0 if it
    /// answers 2xx, 1 if not. For container HEALTHCHECKs.
    Health {
        #[command(flatten)]
        config: ConfigArg,
        /// The URL to ask instead.
        #[arg(long)]
        url: Option<String>,
    },
    /// Look into the buffer file (`inspect`) or salvage a damaged one into a fresh file
    /// (`repair`; stop the agent first). The agent also does the latter by itself at start.
    Buffer {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: BufferAction,
        /// The buffer file; by default buffer.db in agent.data_dir of --config.
        #[arg(long, global = true)]
        path: Option<PathBuf>,
    },
    /// Start a collector and an agent on this machine (SQLite, the system input, no broker)
    /// and print where to query the live data. Ctrl-C stops both.
    Quickstart {
        /// Directory for the configuration files and data.
        #[arg(long, default_value = "tributary-quickstart")]
        dir: PathBuf,
        /// The collector's port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum BufferAction {
    /// Depth, oldest and newest points, the quarantine, and SQLite's quick check.
    Inspect,
    /// Run SQLite's integrity check; if it finds damage (or with --force), move the file aside
    /// and salvage what reads into a fresh buffer.
    Repair {
        /// Salvage even if the check finds nothing.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    logging::init(cli.log_format);
    if let Some(Command::Quickstart { dir, port }) = cli.command {
        let options = tributary_agent::commands::Quickstart { dir, port };
        return block_on(|shutdown| async move {
            match tributary_agent::commands::quickstart(&options, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        });
    }
    if let Some(Command::Health { url: Some(url), .. }) = &cli.command {
        return tributary_common::health::check(url, false, None);
    }
    if let Some(Command::Buffer {
        action,
        path: Some(path),
        ..
    }) = &cli.command
    {
        return buffer_command(*action, path);
    }
    let command = cli.command.unwrap_or(Command::Run {
        config: ConfigArg::default(),
    });
    // Only running the agent sends: the other commands load the file without its token.
    let sends = matches!(command, Command::Run { .. });
    let given = match &command {
        Command::Run { config }
        | Command::Check { config }
        | Command::Test { config, .. }
        | Command::Health { config, .. }
        | Command::Buffer { config, .. } => config.config.clone(),
        Command::Quickstart { .. } => None,
    };
    let path = given
        .or(cli.config.config)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = match load_for_main::<RawConfig>(Some(&path), "config/agent.toml", sends) {
        Ok(config) => config,
        Err(status) => return status,
    };
    match command {
        Command::Check { .. } => {
            let problems: Vec<_> = config
                .inputs
                .iter()
                .flat_map(|i| i.check_problems())
                .collect();
            if !problems.is_empty() {
                for problem in problems {
                    eprintln!("error: {problem}");
                }
                return ExitCode::from(2);
            }
            if config.inputs.is_empty() {
                eprintln!(
                    "warning: {}: no [[inputs.*]]: the agent would only forward what is already buffered",
                    path.display()
                );
            }
            println!(
                "{}: ok (agent {:?}, {} input(s), collector {})",
                path.display(),
                config.agent.id,
                config.inputs.len(),
                config.forward.batches_url
            );
            ExitCode::SUCCESS
        }
        Command::Test { topic, payload, .. } => block_on(|_| async move {
            let message = topic.as_deref().zip(payload.as_deref().map(str::as_bytes));
            tributary_agent::commands::test(&config, message).await
        }),
        Command::Health { .. } => match config.agent.listen {
            Some(address) => tributary_common::health::check(
                &tributary_common::health::local_url(address, "/health", false),
                true,
                None,
            ),
            None => {
                eprintln!("unhealthy: agent.listen is off, so there is no /health to ask");
                ExitCode::from(2)
            }
        },
        Command::Buffer { action, .. } => buffer_command(
            action,
            &config.agent.data_dir.join(tributary_agent::BUFFER_FILE),
        ),
        Command::Quickstart { .. } => unreachable!("handled above"),
        Command::Run { .. } => block_on(|shutdown| async move {
            match tributary_agent::run(config, Some(path), shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "agent failed");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

fn buffer_command(action: BufferAction, path: &std::path::Path) -> ExitCode {
    let result = match action {
        BufferAction::Inspect => tributary_agent::commands::buffer_inspect(path),
        BufferAction::Repair { force } => tributary_agent::commands::buffer_repair(path, force),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `main` on the agent's runtime, with a token cancelled by SIGTERM or SIGINT.
fn block_on<F, Fut>(main: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ExitCode>,
{
    // One thread runs every task: the agent's work is mostly waiting, and keeping its tasks on
    // one thread avoids a cross-thread wakeup per message. SQLite runs on the blocking pool.
    lifecycle::block_on(Threads::One { blocking: 4 }, main)
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
