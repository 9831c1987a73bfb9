//! The security part of the node's configuration: TLS on the client and
//! peer ports, how clients authenticate, and the rules that keep a node
//! from being exposed by accident (protected mode).
//!
//! Owns these keys' defaults and their checks; it loads no files (see
//! `tls.rs` and `authn.rs`) and never changes after validation.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{ConfigError, ServerConfig};

/// TLS on the client port. Off unless `cert_file` is set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The node's certificate chain (PEM) clients verify.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA (PEM) whose client certificates the node accepts; a client may
    /// still connect without one (and authenticate by token). Needed for
    /// `auth.certificates`.
    pub client_ca_file: Option<PathBuf>,
}

/// Mutual TLS between the nodes of a cluster, on the peer port. Off unless
/// all three files are set; then a peer without a certificate the cluster
/// CA signed cannot even open a connection.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PeerTlsConfig {
    /// This node's certificate (PEM), signed by the cluster CA; it serves
    /// the peer port with it and presents it when calling other nodes.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The cluster CA (PEM).
    pub ca_file: Option<PathBuf>,
}

/// How clients authenticate. Off (every caller is `anonymous` and may do
/// everything) unless a method is set; once on, a call without valid
/// credentials gets UNAUTHENTICATED and ACLs decide the rest.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Static tokens: a file of `NAME SHA256-HEX` lines (the principal and
    /// the hex SHA-256 of its token; `#` starts a comment). `aquifer auth
    /// hash-token` prints a line.
    pub tokens_file: Option<PathBuf>,
    /// Bearer JWTs.
    pub jwt: Option<JwtConfig>,
    /// Client certificates (verified against `tls.client_ca_file`): the
    /// principal is the subject's common name.
    pub certificates: bool,
    /// Principals that may do everything (the first operator, before any
    /// ACL exists).
    pub superusers: Vec<String>,
}

/// JWT validation: the principal is the `sub` claim.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: String,
    /// HS256: a file holding the shared secret (its bytes, trailing
    /// newline dropped). RS256/ES256: the public key (PEM).
    pub key_file: PathBuf,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_leeway() -> u64 {
    30
}

impl TlsConfig {
    pub fn is_on(&self) -> bool {
        self.cert_file.is_some()
    }
}

impl PeerTlsConfig {
    pub fn is_on(&self) -> bool {
        self.cert_file.is_some()
    }
}

impl AuthConfig {
    pub fn is_on(&self) -> bool {
        self.tokens_file.is_some() || self.jwt.is_some() || self.certificates
    }
}

/// Checks the security keys of `c` (called by `ServerConfig::validate`).
pub fn validate(c: &ServerConfig) -> Result<(), ConfigError> {
    let bad = |why: String| Err(ConfigError::Invalid(why));
    if c.tls.cert_file.is_some() != c.tls.key_file.is_some() {
        return bad("tls.cert_file and tls.key_file go together".into());
    }
    if c.tls.client_ca_file.is_some() && !c.tls.is_on() {
        return bad("tls.client_ca_file needs tls.cert_file and tls.key_file".into());
    }
    let p = &c.peer_tls;
    let set = [&p.cert_file, &p.key_file, &p.ca_file]
        .iter()
        .filter(|f| f.is_some())
        .count();
    if set != 0 && set != 3 {
        return bad("peer_tls needs all of cert_file, key_file and ca_file".into());
    }
    if c.auth.certificates && c.tls.client_ca_file.is_none() {
        return bad(
            "auth.certificates needs tls.client_ca_file (the CA of client certificates)".into(),
        );
    }
    if let Some(j) = &c.auth.jwt {
        if !["HS256", "RS256", "ES256"].contains(&j.algorithm.as_str()) {
            return bad(format!(
                "auth.jwt.algorithm must be HS256, RS256 or ES256, not {:?}",
                j.algorithm
            ));
        }
        if j.issuer.is_empty() || j.audience.is_empty() {
            return bad("auth.jwt needs an issuer and an audience".into());
        }
    }
    if c.insecure {
        return Ok(());
    }
    // Protected mode: a node reachable from other machines must not serve
    // everyone everything by accident.
    let protected = c.tls.is_on() && c.auth.is_on();
    if !is_loopback(c.listen) && !protected {
        return bad(format!(
            "listen {} is not a loopback address, but TLS and authentication are not both on; \
             set [tls] and [auth], or pass --insecure to serve it open anyway",
            c.listen
        ));
    }
    if let Some(peer) = c.peer_listen_addr()? {
        if !is_loopback(peer) && !p.is_on() {
            return bad(format!(
                "peer_listen {peer} is not a loopback address, but peer_tls is off; \
                 set [peer_tls], or pass --insecure"
            ));
        }
    }
    Ok(())
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}
