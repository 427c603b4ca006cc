//! `tributary-collector`: parses the command line, loads the configuration, serves until a
//! signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tributary_collector::config::{Config, RawConfig};
use tributary_common::config::load_for_main;
use tributary_common::lifecycle::{self, Threads};
use tributary_common::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "tributary-collector",
    version,
    about = "Stores what Tributary agents send, exactly once, and answers queries"
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

/// The configuration file, for the commands that read one (not `token`).
#[derive(clap::Args, Clone, Default)]
struct ConfigArg {
    /// The configuration file [default: /etc/tributary/collector.toml].
    #[arg(long, short, env = "TRIBUTARY_COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
}

/// Where the package installs the configuration.
const DEFAULT_CONFIG: &str = "/etc/tributary/collector.toml";

#[derive(Subcommand)]
enum Command {
    /// Run the collector (the default).
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the configuration and exit: 0 if valid, 2 with the file, key and reason if not.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Ask the running collector's /healthz (server.listen of --config, or --url): exit 0 if
    /// it answers 2xx (storage reachable), 1 if not. For container HEALTHCHECKs.
    Health {
        #[command(flatten)]
        config: ConfigArg,
        /// The URL to ask instead.
        #[arg(long)]
        url: Option<String>,
        /// A client certificate (PEM) to present, for a listener with server.tls_client_ca.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Print a new token and the table to paste into collector.toml as it is: [[agents]]
    /// (may write), or [[readers]] with --reader (may read). The token itself is printed
    /// as a comment: collector.toml keeps only its SHA-256.
    Token {
        /// The agent id to put in the printed [[agents]] table.
        #[arg(long, default_value = "my-agent", conflicts_with = "reader")]
        agent: String,
        /// Print a reader's token and its [[readers]] table instead (Grafana, scripts).
        #[arg(long)]
        reader: Option<String>,
    },
}

/// mimalloc: ingest allocates and frees many small strings per point (decoded batches), where
/// glibc's allocator took a quarter of the writer's time; measured in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run {
        config: ConfigArg::default(),
    });
    if let Command::Token { agent, reader } = &command {
        let (token, hash) = tributary_collector::auth::new_token();
        match reader {
            Some(reader) => {
                println!(
                    "# The token of reader {reader:?}: send it as `Authorization: Bearer <token>`"
                );
                println!("# (Grafana: a custom HTTP header). Keep it; it is not stored anywhere.");
                println!("#   {token}");
                println!(
                    "[[readers]]\nid = {reader:?}\ntoken_sha256 = \"{}\"",
                    hash.to_hex()
                );
            }
            None => {
                println!(
                    "# The token of agent {agent:?}: in its agent.toml, [forward] token = \"<token>\""
                );
                println!(
                    "# (or TRIBUTARY_TOKEN in its environment). Keep it; it is not stored anywhere."
                );
                println!("#   {token}");
                println!(
                    "[[agents]]\nid = {agent:?}\ntoken_sha256 = \"{}\"",
                    hash.to_hex()
                );
            }
        }
        return ExitCode::SUCCESS;
    }
    if let Command::Health {
        url: Some(url),
        cert,
        key,
        ..
    } = &command
    {
        return tributary_common::health::check(url, false, client_certificate(cert, key));
    }
    logging::init(cli.log_format);
    let given = match &command {
        Command::Run { config } | Command::Check { config } | Command::Health { config, .. } => {
            config.config.clone()
        }
        Command::Token { .. } => None,
    };
    let path = given
        .or(cli.config.config)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = match load_for_main::<RawConfig>(Some(&path), "config/collector.toml", true) {
        Ok(config) => config,
        Err(status) => return status,
    };
    match command {
        Command::Check { .. } => {
            if config.agent_ids.is_empty() {
                eprintln!(
                    "warning: {}: no [[agents]]: every batch would be refused with 401 (`tributary-collector token --agent NAME` prints one)",
                    path.display()
                );
            }
            println!(
                "{}: ok (listen {}, storage {}, {} agent(s), {} cleaning rule(s), rollups {})",
                path.display(),
                config.listen,
                config.storage_description(),
                config.agent_ids.len(),
                config.rules.len(),
                config
                    .resolutions
                    .iter()
                    .map(
                        |r| humantime::format_duration(std::time::Duration::from_nanos(
                            r.step as u64
                        ))
                        .to_string()
                    )
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Command::Health { cert, key, .. } => {
            let mtls = config
                .tls
                .as_ref()
                .is_some_and(|tls| tls.client_ca.is_some());
            if mtls && cert.is_none() {
                eprintln!(
                    "note: {}: server.tls_client_ca is set, so the listener asks for a client certificate: pass --cert and --key",
                    path.display()
                );
            }
            tributary_common::health::check(
                &tributary_common::health::local_url(
                    config.listen,
                    "/healthz",
                    config.tls.is_some(),
                ),
                true,
                client_certificate(&cert, &key),
            )
        }
        Command::Run { .. } | Command::Token { .. } => run(config, Some(path)),
    }
}

/// `health --cert --key` (clap makes them go together).
fn client_certificate<'a>(
    cert: &'a Option<PathBuf>,
    key: &'a Option<PathBuf>,
) -> Option<tributary_common::health::ClientCertificate<'a>> {
    Some(tributary_common::health::ClientCertificate {
        cert: cert.as_deref()?,
        key: key.as_deref()?,
    })
}

fn run(config: Config, path: Option<PathBuf>) -> ExitCode {
    lifecycle::block_on(Threads::PerCore, |shutdown| async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(address = %config.listen, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match tributary_collector::serve(config, path, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "collector failed");
                ExitCode::FAILURE
            }
        }
    })
}
