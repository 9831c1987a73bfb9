//! Test certificates: a CA and the certificates it signs (for 127.0.0.1
//! and localhost), written as PEM files in a temp dir, for nodes, peers
//! and clients.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA whose certificates are files under its own temp dir.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    dir: tempfile::TempDir,
    /// The CA certificate's PEM file.
    pub ca_file: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("aquifer-pki-")
            .tempdir()
            .expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).expect("write CA");
        TestCa {
            issuer: Issuer::new(params, key),
            dir,
            ca_file,
        }
    }

    /// A certificate for subject common name `cn`, valid for 127.0.0.1 and
    /// localhost, as server and as client.
    pub fn issue(&self, cn: &str) -> CertFiles {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let cert_file = self.dir.path().join(format!("{cn}.pem"));
        let key_file = self.dir.path().join(format!("{cn}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        CertFiles {
            cert_file,
            key_file,
        }
    }

    /// A `[peer_tls]` table for a node with certificate `c`.
    pub fn peer_tls_toml(&self, c: &CertFiles) -> String {
        format!(
            "[peer_tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
            c.cert_file.display(),
            c.key_file.display(),
            self.ca_file.display()
        )
    }
}
