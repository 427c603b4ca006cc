//! Authentication: bearer tokens, configured by their SHA-256 so the collector's configuration
//! holds no secret. Agent tokens (`[[agents]]`) may write and not read; reader tokens
//! (`[[readers]]`) may read and not write; with `server.anonymous_read`, reads need no token.
//! `/healthz` and `/metrics` are open to all, for load balancers and Prometheus.
//!
//! Under mTLS (`server.tls_client_ca`), an agent may also be known by its client certificate:
//! its subject's common name, or one of its DNS or URI subject alternative names, equal to a
//! configured `[[agents]] id` ([`crate::tls::PeerNames`]). The token wins: a request that
//! sends one is that token's agent, and it is refused (403) if its certificate names another
//! agent; a request without an `Authorization` header is its certificate's agent. An agent
//! may then go without `token_sha256` altogether.

use std::collections::{HashMap, HashSet};

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

/// Who may do what: the configured tokens, and whether reads need one.
#[derive(Debug, Default, Clone)]
pub struct Access {
    /// Token hash -> agent id: may write.
    pub agents: HashMap<TokenHash, String>,
    /// Every configured agent id, with or without a token: the names a client certificate
    /// may give.
    pub agent_ids: HashSet<String>,
    /// Token hash -> reader id: may read.
    pub readers: HashMap<TokenHash, String>,
    /// Reads need no token.
    pub anonymous_read: bool,
}

/// Why a read is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRefusal {
    /// No `Authorization` header (401).
    Missing,
    /// A token no one was given (401).
    Unknown,
    /// An agent's token: it may write, not read (403).
    AgentToken(String),
}

/// Why a write is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefusal {
    /// No `Authorization` header, and no client certificate naming an agent (401).
    Missing,
    /// A token no one was given (401).
    Unknown,
    /// A reader's token: it may read, not write (403).
    ReaderToken(String),
    /// The token is one agent's and the client certificate names another (403).
    CertificateMismatch { certificate: String, token: String },
}

/// Maps presented tokens to agents and readers. The map can be replaced while requests run
/// (a reload adds or revokes tokens).
#[derive(Debug, Default)]
pub struct Authenticator {
    access: std::sync::RwLock<std::sync::Arc<Access>>,
}

/// The hash of the token in an `Authorization` header value: `Bearer <token>`, `Token
/// <token>` (InfluxDB clients: Telegraf's influxdb_v2 output) or `Basic` with the token as the
/// password and any user name (InfluxDB v1 clients, Grafana's basic auth).
fn presented(authorization: Option<&str>) -> Option<TokenHash> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    // Hashing first means lookups compare digests, which reveal nothing about the token
    // through timing.
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        return Some(TokenHash::of(token.trim()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .ok()?;
        let credentials = std::str::from_utf8(&decoded).ok()?;
        let (_user, password) = credentials.split_once(':')?;
        return Some(TokenHash::of(password));
    }
    None
}

impl Authenticator {
    pub fn new(access: Access) -> Authenticator {
        Authenticator {
            access: std::sync::RwLock::new(std::sync::Arc::new(access)),
        }
    }

    fn current(&self) -> std::sync::Arc<Access> {
        std::sync::Arc::clone(
            &self
                .access
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the configured tokens (a reload).
    pub fn replace(&self, access: Access) {
        *self
            .access
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(access);
    }

    /// The agent an `Authorization` header value belongs to, if any.
    pub fn agent_for(&self, authorization: Option<&str>) -> Option<String> {
        self.current()
            .agents
            .get(&presented(authorization)?)
            .cloned()
    }

    /// The reader an `Authorization` header value belongs to, if any.
    pub fn reader_for(&self, authorization: Option<&str>) -> Option<String> {
        self.current()
            .readers
            .get(&presented(authorization)?)
            .cloned()
    }

    /// The hash of the presented token if it is a configured one (an agent's or a reader's).
    pub fn known(&self, authorization: Option<&str>) -> Option<TokenHash> {
        presented(authorization).filter(|hash| self.is_configured(hash))
    }

    /// Whether `hash` is a configured token.
    pub fn is_configured(&self, hash: &TokenHash) -> bool {
        let access = self.current();
        access.agents.contains_key(hash) || access.readers.contains_key(hash)
    }

    /// Whether a request with this `Authorization` header may read.
    pub fn check_read(&self, authorization: Option<&str>) -> Result<(), ReadRefusal> {
        let access = self.current();
        if access.anonymous_read {
            return Ok(());
        }
        let Some(hash) = presented(authorization) else {
            return Err(if authorization.is_some() {
                ReadRefusal::Unknown
            } else {
                ReadRefusal::Missing
            });
        };
        if access.readers.contains_key(&hash) {
            return Ok(());
        }
        match access.agents.get(&hash) {
            Some(agent) => Err(ReadRefusal::AgentToken(agent.clone())),
            None => Err(ReadRefusal::Unknown),
        }
    }

    /// Every configured agent id.
    pub fn agent_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.current().agent_ids.iter().cloned().collect();
        ids.sort();
        ids
    }

    /// The agent a client certificate names: the first of its names that is a configured
    /// agent id.
    pub fn agent_by_certificate(&self, peer: &crate::tls::PeerNames) -> Option<String> {
        let access = self.current();
        peer.names()
            .iter()
            .find(|name| access.agent_ids.contains(name.as_str()))
            .cloned()
    }

    /// The agent a write comes from, by its token and its client certificate (see the module
    /// documentation for which wins).
    pub fn writer(
        &self,
        authorization: Option<&str>,
        peer: &crate::tls::PeerNames,
    ) -> Result<String, WriteRefusal> {
        let by_certificate = self.agent_by_certificate(peer);
        if let Some(agent) = self.agent_for(authorization) {
            return match by_certificate {
                Some(named) if named != agent => Err(WriteRefusal::CertificateMismatch {
                    certificate: named,
                    token: agent,
                }),
                _ => Ok(agent),
            };
        }
        if let Some(reader) = self.reader_for(authorization) {
            return Err(WriteRefusal::ReaderToken(reader));
        }
        match (authorization, by_certificate) {
            (None, Some(agent)) => Ok(agent),
            (None, None) => Err(WriteRefusal::Missing),
            (Some(_), _) => Err(WriteRefusal::Unknown),
        }
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
        let auth = Authenticator::new(Access {
            agents: HashMap::from([(hash, "pump-7".to_owned())]),
            ..Access::default()
        });
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
        // Basic: any user, the token as the password.
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("telegraf:{token}"));
        assert_eq!(
            auth.agent_for(Some(&format!("Basic {basic}"))),
            Some("pump-7".to_owned())
        );
        let no_colon = base64::engine::general_purpose::STANDARD.encode(&token);
        assert_eq!(auth.agent_for(Some(&format!("Basic {no_colon}"))), None);
        assert_eq!(auth.agent_for(Some("Basic !!!")), None);
        assert_eq!(auth.agent_for(Some(&token)), None);
        assert_eq!(auth.agent_for(None), None);
        // A reload revokes the token and admits another.
        let (other, other_hash) = new_token();
        auth.replace(Access {
            agents: HashMap::from([(other_hash, "pump-8".to_owned())]),
            agent_ids: HashSet::from(["pump-8".to_owned()]),
            ..Access::default()
        });
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

    #[test]
    fn reads_need_a_reader_token_unless_anonymous() {
        let (agent, agent_hash) = new_token();
        let (reader, reader_hash) = new_token();
        let mut access = Access {
            agents: HashMap::from([(agent_hash, "pump-7".to_owned())]),
            agent_ids: HashSet::from(["pump-7".to_owned()]),
            readers: HashMap::from([(reader_hash, "grafana".to_owned())]),
            anonymous_read: false,
        };
        let auth = Authenticator::new(access.clone());
        assert_eq!(auth.check_read(None), Err(ReadRefusal::Missing));
        assert_eq!(
            auth.check_read(Some("Bearer nope")),
            Err(ReadRefusal::Unknown)
        );
        assert_eq!(
            auth.check_read(Some("Basic abc")),
            Err(ReadRefusal::Unknown)
        );
        assert_eq!(
            auth.check_read(Some(&format!("Bearer {agent}"))),
            Err(ReadRefusal::AgentToken("pump-7".to_owned()))
        );
        assert_eq!(auth.check_read(Some(&format!("Bearer {reader}"))), Ok(()));
        assert_eq!(
            auth.reader_for(Some(&format!("Bearer {reader}"))),
            Some("grafana".to_owned())
        );
        // A reader's token does not write.
        assert_eq!(auth.agent_for(Some(&format!("Bearer {reader}"))), None);
        access.anonymous_read = true;
        auth.replace(access);
        assert_eq!(auth.check_read(None), Ok(()));
    }

    #[test]
    fn a_token_wins_over_a_certificate_that_must_agree_with_it() {
        use crate::tls::PeerNames;
        let (agent, agent_hash) = new_token();
        let (reader, reader_hash) = new_token();
        let auth = Authenticator::new(Access {
            agents: HashMap::from([(agent_hash, "pump-7".to_owned())]),
            // pump-9 has no token: its certificate is all that names it.
            agent_ids: HashSet::from(["pump-7".to_owned(), "pump-9".to_owned()]),
            readers: HashMap::from([(reader_hash, "grafana".to_owned())]),
            anonymous_read: false,
        });
        let bearer = |t: &str| format!("Bearer {t}");
        let none = PeerNames::default();
        let pump9 = PeerNames::new(vec!["gateway.example".into(), "pump-9".into()]);
        let pump7 = PeerNames::new(vec!["pump-7".into()]);
        let stranger = PeerNames::new(vec!["stranger".into()]);
        assert_eq!(
            auth.writer(Some(&bearer(&agent)), &none),
            Ok("pump-7".into())
        );
        assert_eq!(
            auth.writer(Some(&bearer(&agent)), &pump7),
            Ok("pump-7".into())
        );
        // A certificate naming no configured agent does not stand in the token's way.
        assert_eq!(
            auth.writer(Some(&bearer(&agent)), &stranger),
            Ok("pump-7".into())
        );
        assert_eq!(
            auth.writer(Some(&bearer(&agent)), &pump9),
            Err(WriteRefusal::CertificateMismatch {
                certificate: "pump-9".into(),
                token: "pump-7".into()
            })
        );
        assert_eq!(auth.writer(None, &pump9), Ok("pump-9".into()));
        assert_eq!(auth.writer(None, &stranger), Err(WriteRefusal::Missing));
        assert_eq!(auth.writer(None, &none), Err(WriteRefusal::Missing));
        // A wrong token is refused even when the certificate would have named an agent.
        assert_eq!(
            auth.writer(Some("Bearer nope"), &pump9),
            Err(WriteRefusal::Unknown)
        );
        assert_eq!(
            auth.writer(Some(&bearer(&reader)), &none),
            Err(WriteRefusal::ReaderToken("grafana".into()))
        );
        assert_eq!(
            auth.agent_ids(),
            vec!["pump-7".to_owned(), "pump-9".to_owned()]
        );
    }
}
