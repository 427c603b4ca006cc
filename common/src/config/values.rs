//! Parsers for the value types configuration files use: durations and byte sizes.
//!
//! They return plain messages; the caller adds the file, key and line.

use std::time::Duration;

use serde::Deserialize;

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
}
