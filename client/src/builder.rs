//! [`ClientBuilder`]: every setting of a client connection in one place,
//! after async-nats's `ConnectOptions`.
//!
//! Owns the defaults and the checks of the connection settings (timeouts,
//! retry backoff, TLS, credentials), and reading them from the
//! `AQUIFER_TLS_*` and `AQUIFER_TOKEN*` environment variables. It must never
//! hold a setting that does nothing.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, Identity};

use crate::conn::{Backoff, Settings};
use crate::{Client, Error};

/// How to connect a [`Client`]: get one from [`Client::builder`], set what
/// differs from the defaults, then [`connect`](ClientBuilder::connect).
///
/// ```
/// use std::time::Duration;
/// use aquifer_client::Client;
///
/// let builder = Client::builder("127.0.0.1:7450")
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Duration::from_secs(10))
///     .retry_backoff(Duration::from_millis(20), Duration::from_secs(1));
/// assert_eq!(builder.addr(), "127.0.0.1:7450");
/// // let client = builder.connect().await?;
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until .connect() is awaited"]
pub struct ClientBuilder {
    addr: String,
    settings: Settings,
    token: Option<String>,
    /// What `from_env` could not use, reported by `connect`.
    problems: Vec<String>,
}

impl ClientBuilder {
    pub(crate) fn new(addr: &str) -> ClientBuilder {
        ClientBuilder {
            addr: addr.to_string(),
            settings: Settings::default(),
            token: None,
            problems: Vec::new(),
        }
    }

    /// The address it will connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How long dialling a node may take, for the first connection and for
    /// every reconnect. Default: 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Deadline of each unary call (admin, cluster status), and of an admin
    /// call's redirects and retries together. Appends and reads are streams
    /// and are bounded by [`crate::WriterConfig::retry_timeout`] and the
    /// readers' own retry limit instead. Default: 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// Delay between retries of a failed call: `initial` after the first
    /// failure, doubling after each further one, up to `max`. Used by the
    /// writer, the readers and admin calls. Default: 50 ms doubling to
    /// 250 ms, so a writer finds a new leader soon after an election.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.backoff = Backoff { initial, max };
        self
    }

    /// Speaks TLS, trusting the CA certificate(s) in `ca_pem` (PEM) to sign
    /// the nodes' certificates.
    pub fn tls_ca(mut self, ca_pem: impl AsRef<[u8]>) -> Self {
        let tls = self.settings.tls.take().unwrap_or_default();
        self.settings.tls = Some(tls.ca_certificate(Certificate::from_pem(ca_pem)));
        self
    }

    /// Presents this client certificate (PEM chain and key) in the TLS
    /// handshake (for nodes that take certificates as credentials).
    pub fn tls_identity(mut self, cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        let tls = self.settings.tls.take().unwrap_or_default();
        self.settings.tls = Some(tls.identity(Identity::from_pem(cert_pem, key_pem)));
        self
    }

    /// The name the nodes' certificates must carry, when it is not the
    /// host the client dials.
    pub fn tls_server_name(mut self, name: &str) -> Self {
        let tls = self.settings.tls.take().unwrap_or_default();
        self.settings.tls = Some(tls.domain_name(name));
        self
    }

    /// Sends `token` (a static token or a JWT) as `authorization: Bearer`
    /// on every call.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.trim().to_string());
        self
    }

    /// Takes TLS and credentials from the environment, where set:
    /// `AQUIFER_TLS_CA` (CA file), `AQUIFER_TLS_CERT` and `AQUIFER_TLS_KEY`
    /// (client certificate and key files), `AQUIFER_TLS_SERVER_NAME`,
    /// `AQUIFER_TOKEN` (the token) or `AQUIFER_TOKEN_FILE` (a file holding
    /// it). A named file that cannot be read fails `connect`.
    pub fn from_env(mut self) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut file = |name: &str| {
            let path = var(name)?;
            match std::fs::read(&path) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    self.problems.push(format!("{name}={path}: {e}"));
                    None
                }
            }
        };
        let ca = file("AQUIFER_TLS_CA");
        let cert = file("AQUIFER_TLS_CERT");
        let key = file("AQUIFER_TLS_KEY");
        let token_file = file("AQUIFER_TOKEN_FILE");
        if let Some(ca) = ca {
            self = self.tls_ca(ca);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => self = self.tls_identity(cert, key),
            (None, None) => {}
            _ => self
                .problems
                .push("AQUIFER_TLS_CERT and AQUIFER_TLS_KEY go together".into()),
        }
        if let Some(name) = var("AQUIFER_TLS_SERVER_NAME") {
            self = self.tls_server_name(&name);
        }
        if let Some(token) = var("AQUIFER_TOKEN") {
            self = self.token(&token);
        } else if let Some(bytes) = token_file {
            match String::from_utf8(bytes) {
                Ok(t) => self = self.token(&t),
                Err(_) => self.problems.push("AQUIFER_TOKEN_FILE is not UTF-8".into()),
            }
        }
        self
    }

    /// Connects to the node, eagerly (waits up to the connect timeout):
    /// [`Error::Unavailable`] ("cannot reach aquifer at ADDR") when nothing
    /// answers, [`Error::InvalidArgument`] for a bad address or settings.
    /// Later calls reconnect by themselves if the connection breaks.
    ///
    /// In a cluster, any node will do: the client learns the others from it
    /// and follows each group's leader by itself (redirects, failover).
    pub async fn connect(mut self) -> Result<Client, Error> {
        self.check()?;
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                Error::InvalidArgument("the token holds characters a header cannot".into())
            })?;
            self.settings.credentials.bearer = Some(value);
        }
        Client::from_settings(&self.addr, Arc::new(self.settings)).await
    }

    fn check(&self) -> Result<(), Error> {
        if !self.problems.is_empty() {
            return Err(Error::InvalidArgument(self.problems.join("; ")));
        }
        let s = &self.settings;
        if s.connect_timeout.is_zero() || s.request_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "the connect and request timeouts must be above 0".into(),
            ));
        }
        if s.backoff.initial.is_zero() || s.backoff.max < s.backoff.initial {
            return Err(Error::InvalidArgument(format!(
                "retry backoff must start above 0 and its max ({:?}) be at least its start ({:?})",
                s.backoff.max, s.backoff.initial
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_settings_fail_before_dialling() {
        let zero = Client::builder("127.0.0.1:1").connect_timeout(Duration::ZERO);
        assert!(matches!(
            zero.connect().await,
            Err(Error::InvalidArgument(_))
        ));
        let backwards = Client::builder("127.0.0.1:1")
            .retry_backoff(Duration::from_secs(1), Duration::from_millis(1));
        assert!(matches!(
            backwards.connect().await,
            Err(Error::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn the_connect_timeout_bounds_the_first_connection() {
        // A black-hole address (TEST-NET-1, RFC 5737): nothing answers.
        let started = std::time::Instant::now();
        let res = Client::builder("192.0.2.1:7450")
            .connect_timeout(Duration::from_millis(200))
            .connect()
            .await;
        assert!(matches!(res, Err(Error::Unavailable { .. })), "{res:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
