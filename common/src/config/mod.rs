//! Loading configuration files: the first of the two configuration stages.
//!
//! Both programs read TOML the same way:
//!
//! 1. The file is parsed once with `toml_edit`, to report syntax errors with their line, to
//!    find the line of a key when a later stage complains about it, and to check the types of
//!    the values as written (strictly: the next step is lenient).
//! 2. The `config` crate builds the value tree from the file, then applies environment overrides
//!    (`<PREFIX>__SECTION__KEY=value`, e.g. `TRIBUTARY_AGENT__FORWARD__URL`).
//! 3. `${VAR}` in any string is replaced from the environment (`${VAR:-default}` gives a
//!    default, `$${` is a literal `${`). A missing variable is an error that names the key.
//! 4. The tree is deserialized into the program's raw structs (`deny_unknown_fields`), with
//!    `serde_path_to_error` keeping the path of whatever fails. Both deserializations go
//!    through one tree type (see `tree`), so each struct's code is generated once.
//!
//! The second stage, turning raw values into checked types, belongs to each program; it reports
//! problems through [`Source::error`] so they carry the file, key and line too.

mod env;
mod locate;
mod tree;
pub mod values;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration problem: which file, which key, which line, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// The dotted key path, e.g. `inputs.mqtt[0].topics[1]`; empty for file-level problems.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The file a configuration came from, kept to point at keys in later error messages.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    document: Option<toml_edit::Document<String>>,
}

impl Source {
    /// A source for configuration that did not come from a file (built-in defaults).
    pub fn builtin(name: &str) -> Source {
        Source {
            path: PathBuf::from(name),
            document: None,
        }
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about `key`, located in the file where possible.
    pub fn error(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        let line = self
            .document
            .as_ref()
            .and_then(|doc| locate::line_of(doc, &key));
        ConfigError {
            file: self.path.clone(),
            key,
            line,
            message: message.into(),
        }
    }
}

/// Reads `path` and deserializes it into `T` (see the crate docs for the steps).
/// `env_prefix` selects the environment overrides, e.g. `TRIBUTARY_AGENT`.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    env_prefix: &str,
) -> Result<(T, Source), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        key: String::new(),
        line: None,
        message: format!("cannot read the file: {e}"),
    })?;
    load_str(&text, path, env_prefix)
}

/// A raw configuration (first stage) that knows how to become the checked one (second stage).
pub trait Resolve: DeserializeOwned {
    /// The checked configuration.
    type Checked;
    /// Prefix of environment overrides, e.g. `TRIBUTARY_AGENT`.
    const ENV_PREFIX: &'static str;
    /// Keys holding secrets only needed to send (`forward.token`): commands that send nothing
    /// (`check`, `test`, `health`) load the file even when their `${VAR}` is unset.
    const SECRET_KEYS: &'static [&'static str] = &[];
    /// Checks every value and fills in defaults, reporting problems through `source`.
    fn resolve(self, source: &Source) -> Result<Self::Checked, ConfigError>;
}

/// Loads the file at `path` through both stages.
pub fn load_file<R: Resolve>(path: &Path) -> Result<R::Checked, ConfigError> {
    let (raw, source) = load::<R>(path, R::ENV_PREFIX)?;
    raw.resolve(&source)
}

/// [`load_file`] on the blocking pool, for a reload while the program runs; the error as text
/// (file, line, key and reason).
pub async fn reload_file<R>(path: &Path) -> Result<R::Checked, String>
where
    R: Resolve,
    R::Checked: Send + 'static,
{
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || load_file::<R>(&path).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(format!("loading failed: {e}")))
}

/// For a program's `main`: the checked configuration from `--config`, or, when the option is
/// missing or the file is wrong, a message on stderr and exit status 2. `example` names the
/// documented example file, e.g. `config/agent.toml`.
pub fn load_for_main<R: Resolve>(
    path: Option<&Path>,
    example: &str,
    sends: bool,
) -> Result<R::Checked, std::process::ExitCode> {
    let Some(path) = path else {
        eprintln!("error: --config FILE is required (see {example} for every key)");
        return Err(std::process::ExitCode::from(2));
    };
    let optional = if sends { &[][..] } else { R::SECRET_KEYS };
    let loaded = std::fs::read_to_string(path)
        .map_err(|e| ConfigError {
            file: path.to_owned(),
            key: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        })
        .and_then(|text| load_str_with::<R>(&text, path, R::ENV_PREFIX, optional))
        .and_then(|(raw, source)| raw.resolve(&source));
    loaded.map_err(|e| {
        eprintln!("error: {e}");
        std::process::ExitCode::from(2)
    })
}

/// Like [`load_file`], for text already in memory; `path` is used in messages.
pub fn load_text<R: Resolve>(text: &str, path: &Path) -> Result<R::Checked, ConfigError> {
    let (raw, source) = load_str::<R>(text, path, R::ENV_PREFIX)?;
    raw.resolve(&source)
}

/// Like [`load`], for text already in memory; `path` is used in messages.
pub fn load_str<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    env_prefix: &str,
) -> Result<(T, Source), ConfigError> {
    load_str_with(text, path, env_prefix, &[])
}

/// [`load_str`], with `optional` keys whose unset `${VAR}` expands to nothing.
fn load_str_with<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    env_prefix: &str,
    optional: &[&str],
) -> Result<(T, Source), ConfigError> {
    let document = toml_edit::Document::parse(text.to_owned()).map_err(|e| ConfigError {
        file: path.to_owned(),
        key: String::new(),
        line: e.span().map(|span| locate::line_at(text, span.start)),
        message: format!("invalid TOML: {}", e.message()),
    })?;
    // Strict types first: the `config` crate below reads `"1"` as 1 and `"no"` as false, so a
    // value of the wrong type would pass unnoticed. The file as written must have the types
    // the keys take; only a `${VAR}` string is let through, as its type is known once expanded.
    let strict = match tree::strict::<T>(tree::from_document(&document)) {
        Ok(_) => None,
        Err(e) => {
            let key = e.path().to_string();
            (!locate::holds_variable(&document, &key)).then(|| (key, e.inner().to_string()))
        }
    };
    let source = Source {
        path: path.to_owned(),
        document: Some(document),
    };
    if let Some((key, message)) = strict {
        let key = if key == "." { String::new() } else { key };
        return Err(source.error(key, message));
    }

    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(env_prefix)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| source.error("", e.to_string()))?;
    let mut tree: config::Value = built
        .try_deserialize()
        .map_err(|e| source.error("", e.to_string()))?;
    env::substitute(&mut tree, &mut String::new(), optional, &|key, message| {
        source.error(key, message)
    })?;

    let raw = tree::lenient(tree::from_config(tree)).map_err(|e| {
        let mut key = e.path().to_string();
        if key == "." {
            key.clear();
        }
        // The `config` crate appends its own spelling of the key (without the dot after an
        // index: `inputs.mqtt[0]qos`); the error names the key already.
        let mut message = e.inner().to_string();
        if let Some(at) = message.find(" for key `") {
            message.truncate(at);
        }
        // The file alone passed the strict check above, so an error here came with the
        // environment: name the overrides rather than a line of the file that is not at fault.
        let mut overrides: Vec<String> = std::env::vars()
            .map(|(name, _)| name)
            .filter(|name| name.starts_with(&format!("{env_prefix}__")))
            .collect();
        if overrides.is_empty() {
            return source.error(key, message);
        }
        overrides.sort();
        let hint = if message.contains("expected a sequence") {
            "; keys inside arrays of tables ([[inputs.*]], [[agents]]) cannot be overridden from the environment: write \"${VAR}\" in the file for them instead"
        } else {
            ""
        };
        ConfigError {
            file: path.to_owned(),
            key,
            line: None,
            message: format!(
                "{message} (from the environment: {}){hint}",
                overrides.join(", ")
            ),
        }
    })?;
    Ok((raw, source))
}

#[cfg(test)]
mod tests;
