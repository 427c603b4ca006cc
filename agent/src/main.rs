//! `tributary-agent`: parses the command line, loads the configuration, runs until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tributary_agent::cli::{self, BufferAction, Command, Parsed};
use tributary_agent::config::RawConfig;
use tributary_common::config::load_for_main;
use tributary_common::lifecycle::{self, Threads};
use tributary_common::logging;

/// Where the packages install the configuration.
const DEFAULT_CONFIG: &str = "/etc/tributary/agent.toml";

fn main() -> ExitCode {
    limit_malloc_arenas();
    let parsed = cli::parse(
        std::env::args_os().skip(1),
        std::env::var_os("TRIBUTARY_AGENT_CONFIG"),
    );
    let cli = match parsed {
        Ok(Parsed::Run(cli)) => cli,
        Ok(Parsed::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("tributary-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\nFor more information, try '--help'.");
            return ExitCode::from(2);
        }
    };
    logging::init(cli.log_format);
    if let Command::Quickstart { dir, port } = cli.command {
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
    if let Command::Health { url: Some(url) } = &cli.command {
        return tributary_common::health::check(url, false, None);
    }
    if let Command::Buffer {
        action,
        path: Some(path),
    } = &cli.command
    {
        return buffer_command(*action, path);
    }
    let command = cli.command;
    // Only running the agent sends: the other commands load the file without its token.
    let sends = matches!(command, Command::Run);
    let path = cli.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = match load_for_main::<RawConfig>(Some(&path), "config/agent.toml", sends) {
        Ok(config) => config,
        Err(status) => return status,
    };
    match command {
        Command::Check => {
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
        Command::Test { topic, payload } => block_on(|_| async move {
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
        Command::Run => block_on(|shutdown| async move {
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
///
/// The mmap and trim thresholds stay dynamic: fixed, they cut the idle heap by 0.6-0.9 MiB but
/// cost the tail 20-45 % and MQTT 7-18 % more CPU per message (BENCHMARKS.md, "Edge footprint").
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
