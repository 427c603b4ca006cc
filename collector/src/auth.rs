//! Agent authentication: bearer tokens, configured by their SHA-256 so the collector's
//! configuration holds no secret.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// The SHA-256 of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a presented token.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses the configured form: 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<TokenHash, String> {
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "{text:?} is not a SHA-256 in lowercase hex (64 characters 0-9, a-f)"
            ));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|e| e.to_string())?;
        Ok(TokenHash(out))
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// Maps presented tokens to agent ids. The map can be replaced while requests run (a reload
/// adds or revokes agents).
#[derive(Debug, Default)]
pub struct Authenticator {
    agents: std::sync::RwLock<std::sync::Arc<HashMap<TokenHash, String>>>,
}

impl Authenticator {
    pub fn new(agents: HashMap<TokenHash, String>) -> Authenticator {
        Authenticator {
            agents: std::sync::RwLock::new(std::sync::Arc::new(agents)),
        }
    }

    fn current(&self) -> std::sync::Arc<HashMap<TokenHash, String>> {
        std::sync::Arc::clone(
            &self
                .agents
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the configured agents (a reload).
    pub fn replace(&self, agents: HashMap<TokenHash, String>) {
        *self
            .agents
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(agents);
    }

    /// The agent an `Authorization` header value belongs to, if any.
    pub fn agent_for(&self, authorization: Option<&str>) -> Option<String> {
        let value = authorization?.trim();
        let (scheme, token) = value.split_once(' ')?;
        // `Token` is what InfluxDB v2 clients (Telegraf's influxdb_v2 output) send.
        if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("token") {
            return None;
        }
        // Hashing first means the lookup compares digests, which reveal nothing about the
        // token through timing.
        self.current().get(&TokenHash::of(token.trim())).cloned()
    }

    /// Every configured agent id.
    pub fn agent_ids(&self) -> Vec<String> {
        self.current().values().cloned().collect()
    }
}

/// A new random token (32 bytes, hex) and its hash.
pub fn new_token() -> (String, TokenHash) {
    let token = hex::encode(rand::random::<[u8; 32]>());
    let hash = TokenHash::of(&token);
    (token, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_their_agent_only() {
        let (token, hash) = new_token();
        assert_eq!(token.len(), 64);
        assert_eq!(TokenHash::parse(&hash.to_hex()).unwrap(), hash);
        let auth = Authenticator::new(HashMap::from([(hash, "pump-7".to_owned())]));
        assert_eq!(
            auth.agent_for(Some(&format!("Bearer {token}"))),
            Some("pump-7".to_owned())
        );
        assert_eq!(
            auth.agent_for(Some(&format!("bearer {token}"))),
            Some("pump-7".to_owned())
        );
        assert_eq!(auth.agent_for(Some("Bearer wrong")), None);
        assert_eq!(auth.agent_for(Some(&format!("Basic {token}"))), None);
        assert_eq!(auth.agent_for(Some(&token)), None);
        assert_eq!(auth.agent_for(None), None);
        // A reload revokes the token and admits another.
        let (other, other_hash) = new_token();
        auth.replace(HashMap::from([(other_hash, "pump-8".to_owned())]));
        assert_eq!(auth.agent_for(Some(&format!("Bearer {token}"))), None);
        assert_eq!(
            auth.agent_for(Some(&format!("Bearer {other}"))),
            Some("pump-8".to_owned())
        );
        assert_eq!(auth.agent_ids(), vec!["pump-8".to_owned()]);
    }

    #[test]
    fn known_hash() {
        // SHA-256("test"), as printed by `printf test | sha256sum`.
        assert_eq!(
            TokenHash::of("test").to_hex(),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(
            TokenHash::parse("9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08")
                .is_err()
        );
    }
}
