//! The command line (see `tributary-agent --help`), parsed with lexopt: nine options and six
//! commands did not need clap's 0.3 MB.

use std::ffi::OsString;
use std::path::PathBuf;

use tributary_common::logging::LogFormat;

/// What to do, as the command line says.
#[derive(Debug, PartialEq)]
pub struct Cli {
    /// `--config`/`-c`, wherever it was given, else `$TRIBUTARY_AGENT_CONFIG`.
    pub config: Option<PathBuf>,
    pub log_format: LogFormat,
    pub command: Command,
}

/// The commands.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run,
    Check,
    Test {
        topic: Option<String>,
        payload: Option<String>,
    },
    Health {
        url: Option<String>,
    },
    Buffer {
        action: BufferAction,
        path: Option<PathBuf>,
    },
    Quickstart {
        dir: PathBuf,
        port: u16,
    },
}

/// `buffer inspect` or `buffer repair [--force]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BufferAction {
    Inspect,
    Repair { force: bool },
}

/// What parsing came to besides a command.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Run(Cli),
    /// `--help`: print this and exit 0.
    Help(String),
    /// `--version`.
    Version,
}

/// The text of `--help`.
pub const HELP: &str = "Collects readings at the edge and forwards them exactly once

Usage: tributary-agent [OPTIONS] [COMMAND]

Commands:
  run         Run the agent (the default)
  check       Validate the configuration and exit: 0 if valid, 2 with the file, key and
              reason if not
  test        Run every input once and print the points it would buffer, as line protocol;
              nothing is buffered or forwarded
                --topic TOPIC --payload TEXT  a message on this topic, decoded by the MQTT
                inputs that subscribe to it, as if it had arrived
  health      Ask the running agent's /health (agent.listen of --config, or --url URL): exit 0
              if it answers 2xx, 1 if not. For container HEALTHCHECKs
  buffer      inspect: depth, oldest and newest points, the quarantine, SQLite's quick check;
              repair [--force]: run SQLite's integrity check and, if it finds damage (or with
              --force), move the file aside and salvage what reads into a fresh buffer (stop
              the agent first). --path FILE: the buffer file (default: buffer.db in
              agent.data_dir of --config)
  quickstart  Start a collector and an agent on this machine (SQLite, the system input, no
              broker) and print where to query the live data. Ctrl-C stops both.
                --dir DIR (default tributary-quickstart)  --port PORT (default 8080)

Options:
  -c, --config <FILE>        The configuration file [env: TRIBUTARY_AGENT_CONFIG]
                             [default: /etc/tributary/agent.toml]
      --log-format <FORMAT>  Log format: text or json [default: text]
  -h, --help                 Print help
  -V, --version              Print version
";

/// Each command's line in the help, and its own options.
const COMMANDS: [(&str, &str, &str); 6] = [
    ("run", "Run the agent (the default)", ""),
    (
        "check",
        "Validate the configuration and exit: 0 if valid, 2 with the file, key and reason if not",
        "",
    ),
    (
        "test",
        "Run every input once and print the points it would buffer, as line protocol; nothing is\nbuffered or forwarded",
        "      --topic <TOPIC>    With --payload: a message on this topic, decoded by the MQTT inputs\n                         that subscribe to it (topic template, format, tags), as if it had arrived\n      --payload <TEXT>   The message's payload (with --topic)\n",
    ),
    (
        "health",
        "Ask the running agent's /health (agent.listen of --config, or --url): exit 0 if it answers\n2xx, 1 if not. For container HEALTHCHECKs",
        "      --url <URL>        The URL to ask instead\n",
    ),
    (
        "buffer",
        "Look into the buffer file (`buffer inspect`: depth, oldest and newest points, the quarantine,\nSQLite's quick check) or salvage a damaged one into a fresh file (`buffer repair [--force]`:\nSQLite's integrity check, and if it finds damage, or with --force, the file moved aside and\nwhat reads salvaged into a fresh buffer; stop the agent first). The agent also repairs by\nitself at start",
        "      --path <FILE>      The buffer file [default: buffer.db in agent.data_dir of --config]\n      --force            (repair) Salvage even if the check finds nothing\n",
    ),
    (
        "quickstart",
        "Start a collector and an agent on this machine (SQLite, the system input, no broker) and\nprint where to query the live data. Ctrl-C stops both",
        "      --dir <DIR>        Directory for the configuration files and data\n                         [default: tributary-quickstart]\n      --port <PORT>      The collector's port on 127.0.0.1 [default: 8080]\n",
    ),
];

const CONFIG_OPTION: &str = "  -c, --config <FILE>    The configuration file [env: TRIBUTARY_AGENT_CONFIG]\n                         [default: /etc/tributary/agent.toml]\n";

const COMMON_OPTIONS: &str = "      --log-format <FORMAT>  Log format: text or json [default: text]\n  -h, --help             Print help\n";

/// The help of `command`, or of the program.
pub fn help(command: Option<&str>) -> String {
    match COMMANDS.iter().find(|(name, ..)| Some(*name) == command) {
        Some((name, about, options)) => {
            let config = if *name == "quickstart" {
                ""
            } else {
                CONFIG_OPTION
            };
            format!(
                "{about}\n\nUsage: tributary-agent {name} [OPTIONS]\n\nOptions:\n{config}{options}{COMMON_OPTIONS}"
            )
        }
        None => HELP.to_owned(),
    }
}

/// Parses `args` (without the program name); `env_config` is `$TRIBUTARY_AGENT_CONFIG`.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_config: Option<OsString>,
) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut config = None;
    let mut log_format = LogFormat::Text;
    let mut command: Option<String> = None;
    let mut action: Option<String> = None;
    let mut topic = None;
    let mut payload = None;
    let mut url = None;
    let mut path = None;
    let mut force = false;
    let mut dir = None;
    let mut port = None;
    let error = |e: lexopt::Error| e.to_string();
    while let Some(arg) = parser.next().map_err(error)? {
        let in_command = |name: &str| command.as_deref() == Some(name);
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Help(help(command.as_deref()))),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            Short('c') | Long("config") if !in_command("quickstart") => {
                config = Some(PathBuf::from(parser.value().map_err(error)?));
            }
            Long("log-format") => {
                let value = parser.value().map_err(error)?.string().map_err(error)?;
                log_format = value.parse()?;
            }
            Long("topic") if in_command("test") => topic = Some(string(&mut parser)?),
            Long("payload") if in_command("test") => payload = Some(string(&mut parser)?),
            Long("url") if in_command("health") => url = Some(string(&mut parser)?),
            Long("path") if in_command("buffer") => {
                path = Some(PathBuf::from(parser.value().map_err(error)?));
            }
            Long("force") if in_command("buffer") && action.as_deref() == Some("repair") => {
                force = true;
            }
            Long("dir") if in_command("quickstart") => {
                dir = Some(PathBuf::from(parser.value().map_err(error)?));
            }
            Long("port") if in_command("quickstart") => {
                let value = string(&mut parser)?;
                port = Some(value.parse::<u16>().map_err(|_| {
                    format!("invalid value {value:?} for --port: a port number (1-65535)")
                })?);
            }
            Value(value) if command.is_none() => {
                let value = value.string().map_err(error)?;
                match value.as_str() {
                    "run" | "check" | "test" | "health" | "buffer" | "quickstart" => {
                        command = Some(value);
                    }
                    "help" => return Ok(Parsed::Help(HELP.to_owned())),
                    other => {
                        return Err(format!(
                            "unrecognized command {other:?} (run, check, test, health, buffer or quickstart; see --help)"
                        ));
                    }
                }
            }
            Value(value) if in_command("buffer") && action.is_none() => {
                let value = value.string().map_err(error)?;
                if value != "inspect" && value != "repair" {
                    return Err(format!(
                        "unrecognized buffer action {value:?} (inspect or repair)"
                    ));
                }
                action = Some(value);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let command = match command.as_deref() {
        None | Some("run") => Command::Run,
        Some("check") => Command::Check,
        Some("test") => {
            if topic.is_some() != payload.is_some() {
                return Err("test: --topic and --payload go together".to_owned());
            }
            Command::Test { topic, payload }
        }
        Some("health") => Command::Health { url },
        Some("buffer") => Command::Buffer {
            action: match action.as_deref() {
                Some("inspect") => BufferAction::Inspect,
                Some(_) => BufferAction::Repair { force },
                None => return Err("buffer: say inspect or repair".to_owned()),
            },
            path,
        },
        Some(_) => Command::Quickstart {
            dir: dir.unwrap_or_else(|| PathBuf::from("tributary-quickstart")),
            port: port.unwrap_or(8080),
        },
    };
    Ok(Parsed::Run(Cli {
        config: config.or_else(|| env_config.map(PathBuf::from)),
        log_format,
        command,
    }))
}

fn string(parser: &mut lexopt::Parser) -> Result<String, String> {
    use lexopt::ValueExt;
    parser
        .value()
        .and_then(|v| v.string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Cli, String> {
        match parse(args.iter().map(OsString::from), None)? {
            Parsed::Run(cli) => Ok(cli),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn no_command_runs_and_config_goes_anywhere() {
        let cli = run(&[]).unwrap();
        assert_eq!(cli.command, Command::Run);
        assert_eq!(cli.config, None);
        let before = run(&["--config", "a.toml", "check"]).unwrap();
        let after = run(&["check", "-c", "a.toml", "--log-format=json"]).unwrap();
        assert_eq!(before.config, Some(PathBuf::from("a.toml")));
        assert_eq!(after.config, before.config);
        assert_eq!(after.command, Command::Check);
        assert_eq!(after.log_format, LogFormat::Json);
    }

    #[test]
    fn the_environment_gives_the_config_when_no_option_does() {
        let parsed = parse(
            [OsString::from("check")],
            Some(OsString::from("/etc/x.toml")),
        )
        .unwrap();
        let Parsed::Run(cli) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(cli.config, Some(PathBuf::from("/etc/x.toml")));
        let parsed = parse(
            ["-c", "mine.toml"].map(OsString::from),
            Some(OsString::from("/etc/x.toml")),
        )
        .unwrap();
        let Parsed::Run(cli) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(cli.config, Some(PathBuf::from("mine.toml")));
    }

    #[test]
    fn commands_take_their_own_options() {
        assert_eq!(
            run(&["test", "--topic", "a/b", "--payload", "{}"])
                .unwrap()
                .command,
            Command::Test {
                topic: Some("a/b".into()),
                payload: Some("{}".into())
            }
        );
        assert!(run(&["test", "--topic", "a/b"]).is_err());
        assert_eq!(
            run(&["buffer", "--path", "b.db", "repair", "--force"])
                .unwrap()
                .command,
            Command::Buffer {
                action: BufferAction::Repair { force: true },
                path: Some("b.db".into())
            }
        );
        assert_eq!(
            run(&["quickstart", "--port", "9000"]).unwrap().command,
            Command::Quickstart {
                dir: "tributary-quickstart".into(),
                port: 9000
            }
        );
        assert_eq!(
            run(&["health", "--url", "http://x/health"])
                .unwrap()
                .command,
            Command::Health {
                url: Some("http://x/health".into())
            }
        );
    }

    #[test]
    fn mistakes_are_errors() {
        for args in [
            &["frobnicate"][..],
            &["check", "--topic", "x"],
            &["buffer"],
            &["buffer", "fix"],
            &["buffer", "inspect", "--force"],
            &["quickstart", "--port", "99999"],
            &["--log-format", "xml"],
            &["--config"],
            &["run", "extra"],
            &["quickstart", "--config", "a.toml"],
        ] {
            assert!(run(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn help_and_version() {
        let Ok(Parsed::Help(text)) = parse(["--help"].map(OsString::from), None) else {
            panic!("no help")
        };
        assert!(text.contains("quickstart") && text.contains("/etc/tributary/agent.toml"));
        let Ok(Parsed::Help(text)) = parse(["quickstart", "--help"].map(OsString::from), None)
        else {
            panic!("no help")
        };
        assert!(
            text.contains("--port") && !text.contains("--config"),
            "{text}"
        );
        let Ok(Parsed::Help(text)) = parse(["check", "-h"].map(OsString::from), None) else {
            panic!("no help")
        };
        assert!(text.contains("/etc/tributary/agent.toml"), "{text}");
        assert_eq!(
            parse(["check", "-V"].map(OsString::from), None),
            Ok(Parsed::Version)
        );
    }
}
