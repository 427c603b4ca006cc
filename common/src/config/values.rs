//! The value types configuration files use: durations, byte sizes, PEM certificate files and
//! enums spelled as strings ([`choices!`](crate::choices)).
//!
//! The parsers return plain messages; [`duration`], [`size`] and [`read_pem`] add the file,
//! key and line through a [`Source`].

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Source};

/// Parses `"10s"`, `"500ms"`, `"1h 30m"` (humantime's grammar).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\" or \"5m\"")
    })
}

/// A byte size as written in a file: a bare number of bytes or text such as `"64MiB"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

impl RawSize {
    /// The size in bytes. `KB`/`MB` are powers of 10 and `KiB`/`MiB` powers of 2.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            RawSize::Bytes(n) => Ok(*n),
            RawSize::Text(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|size| size.as_u64())
                .map_err(|e| {
                    format!("{text:?} is not a size ({e}); write e.g. \"512MiB\", \"1GB\" or a number of bytes")
                }),
        }
    }
}

impl From<&str> for RawSize {
    fn from(text: &str) -> Self {
        RawSize::Text(text.to_owned())
    }
}

/// The duration at `key` (`value`, or `default` when it is absent).
pub fn duration(
    source: &Source,
    key: &str,
    value: Option<&str>,
    default: &str,
) -> Result<Duration, ConfigError> {
    parse_duration(value.unwrap_or(default)).map_err(|message| source.error(key, message))
}

/// The byte size at `key` (`value`, or `default` when it is absent).
pub fn size(
    source: &Source,
    key: &str,
    value: Option<RawSize>,
    default: &str,
) -> Result<u64, ConfigError> {
    value
        .unwrap_or_else(|| RawSize::from(default))
        .bytes()
        .map_err(|message| source.error(key, message))
}

/// Reads the PEM file at `path` (named by `key`) and checks it holds at least one certificate.
pub fn read_pem(source: &Source, key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| source.error(key, format!("cannot read {}: {e}", path.display())))?;
    let certificates = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| source.error(key, format!("{} is not PEM: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(source.error(key, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(pem)
}

/// Reads the PEM file at `path` (named by `key`) and checks it holds a private key (PKCS#8,
/// PKCS#1 or SEC1).
pub fn read_key_pem(source: &Source, key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| source.error(key, format!("cannot read {}: {e}", path.display())))?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(_)) => Ok(pem),
        Ok(None) => Err(source.error(key, format!("{} holds no PEM private key", path.display()))),
        Err(e) => Err(source.error(key, format!("{} is not PEM: {e}", path.display()))),
    }
}

/// Declares how a configuration enum is spelled, so a wrong value gets a message listing the
/// choices (the `config` crate's own enum errors are hard to read). The enum derives
/// `Deserialize` with `#[serde(try_from = "String")]`:
///
/// ```
/// #[derive(Debug, PartialEq, serde::Deserialize)]
/// #[serde(try_from = "String")]
/// enum Encoding { Msgpack, Json }
/// tributary_common::choices!(Encoding, "batch encoding", {
///     "msgpack" => Encoding::Msgpack,
///     "json" => Encoding::Json,
/// });
/// assert_eq!(Encoding::try_from("json".to_owned()), Ok(Encoding::Json));
/// assert_eq!(
///     Encoding::try_from("cbor".to_owned()).unwrap_err(),
///     "\"cbor\" is not a batch encoding; choose one of \"msgpack\", \"json\""
/// );
/// ```
#[macro_export]
macro_rules! choices {
    ($ty:ty, $what:literal, { $($text:literal => $variant:expr),+ $(,)? }) => {
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                match text.as_str() {
                    $($text => Ok($variant),)+
                    _ => Err(format!(
                        concat!("{:?} is not a ", $what, "; choose one of {}"),
                        text,
                        [$(concat!("\"", $text, "\"")),+].join(", ")
                    )),
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("10 parsecs").is_err());
        assert_eq!(RawSize::from("64MiB").bytes().unwrap(), 64 << 20);
        assert_eq!(RawSize::from("1 KB").bytes().unwrap(), 1000);
        assert_eq!(RawSize::Bytes(12).bytes().unwrap(), 12);
        assert!(RawSize::from("lots").bytes().is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let source = Source::builtin("test.toml");
        assert_eq!(
            duration(&source, "a.b", None, "5s").unwrap(),
            Duration::from_secs(5)
        );
        let error = duration(&source, "a.b", Some("soon"), "5s").unwrap_err();
        assert!(error.to_string().contains("a.b"), "{error}");
        let error = size(&source, "a.size", Some(RawSize::from("big")), "1MiB").unwrap_err();
        assert!(error.to_string().contains("a.size"), "{error}");
        let dir = std::env::temp_dir().join(format!("pem-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = read_pem(&source, "tls.ca", &not_pem).unwrap_err();
        assert!(
            error.to_string().contains("holds no PEM certificate"),
            "{error}"
        );
        let error = read_pem(&source, "tls.ca", &dir.join("absent.pem")).unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
