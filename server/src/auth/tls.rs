//! TLS material from the configured PEM files, as tonic wants it: the
//! client port's server side, and both sides of the peer port (mutual).
//!
//! Owns reading and checking the files at start-up (a missing or bad file
//! stops the node with its path); it never decides who may do what.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::config::{PeerTlsConfig, TlsConfig};
use crate::error::Error;

/// The node's TLS settings, loaded once.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// The client port's (None: plaintext).
    pub client: Option<ServerTlsConfig>,
    /// The peer port's server side: peers must present a certificate the
    /// cluster CA signed (None: plaintext).
    pub peer_server: Option<ServerTlsConfig>,
    /// How this node calls the other nodes' peer ports.
    pub peer_client: Option<ClientTlsConfig>,
}

/// Installs the process's TLS crypto provider (once; later calls are
/// no-ops). rustls needs one chosen when more than one is compiled in.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::InvalidArgument(format!("{what} {}: {e}", path.display())))
}

/// Reads every configured certificate, key and CA file of the client
/// port's `client` and the peer port's `peer` settings.
pub fn load(client: &TlsConfig, peer: &PeerTlsConfig) -> Result<TlsSettings, Error> {
    install_crypto_provider();
    let mut tls = TlsSettings::default();
    if let (Some(cert), Some(key)) = (&client.cert_file, &client.key_file) {
        let identity = Identity::from_pem(read("tls.cert_file", cert)?, read("tls.key_file", key)?);
        let mut server = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &client.client_ca_file {
            server = server
                .client_ca_root(Certificate::from_pem(read("tls.client_ca_file", ca)?))
                .client_auth_optional(true);
        }
        tls.client = Some(server);
    }
    if let (Some(cert), Some(key), Some(ca)) = (&peer.cert_file, &peer.key_file, &peer.ca_file) {
        let (cert, key) = (
            read("peer_tls.cert_file", cert)?,
            read("peer_tls.key_file", key)?,
        );
        let ca = Certificate::from_pem(read("peer_tls.ca_file", ca)?);
        tls.peer_server = Some(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&cert, &key))
                .client_ca_root(ca.clone()),
        );
        tls.peer_client = Some(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .identity(Identity::from_pem(cert, key)),
        );
    }
    Ok(tls)
}
