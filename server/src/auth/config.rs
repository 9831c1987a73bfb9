//! The security part of the node's configuration: TLS on the client and
//! peer ports, how clients authenticate, and the rules that keep a node
//! from being exposed by accident (protected mode).
//!
//! Owns these keys and their defaults (`ServerConfig::validate` checks
//! them, with protected mode); it loads no files (see `tls.rs` and
//! `authn.rs`) and never changes after validation.

use std::path::PathBuf;

use serde::Deserialize;

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
