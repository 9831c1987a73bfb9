//! Authentication: from a request's credentials to its principal.
//!
//! Owns the three ways a client proves who it is: a static token (the
//! node keeps only SHA-256 hashes), a JWT (HS256, RS256 or ES256; issuer,
//! audience and expiry checked), and a client certificate (its subject's
//! common name). It never decides what a principal may do.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::transport::CertificateDer;

use super::config::{AuthConfig, JwtConfig};
use super::Principal;
use crate::error::Error;

/// Largest credential accepted (a JWT with a few claims is well below).
const CREDENTIAL_BYTES_MAX: usize = 16 * 1024;

/// The configured ways of proving who one is.
pub struct Authenticator {
    on: bool,
    /// SHA-256 of each static token → its principal.
    tokens: HashMap<[u8; 32], Principal>,
    jwt: Option<(DecodingKey, Validation)>,
    certificates: bool,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

/// The hex SHA-256 of `token`, as the tokens file holds it.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::InvalidArgument(format!("{what} {}: {e}", path.display())))
}

/// Parses a tokens file: `NAME SHA256-HEX` per line, `#` comments.
fn parse_tokens(path: &Path, text: &str) -> Result<HashMap<[u8; 32], Principal>, Error> {
    let mut tokens = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = || {
            Error::InvalidArgument(format!(
                "auth.tokens_file {} line {}: not `NAME SHA256-HEX` (make one with `aquifer auth hash-token`)",
                path.display(),
                n + 1
            ))
        };
        let mut parts = line.split_whitespace();
        let (Some(name), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let hash = unhex(&hash.to_ascii_lowercase()).ok_or_else(bad)?;
        tokens.insert(hash, Principal::named(name));
    }
    Ok(tokens)
}

fn jwt(j: &JwtConfig) -> Result<(DecodingKey, Validation), Error> {
    let key = read("auth.jwt.key_file", &j.key_file)?;
    let bad_key = |e: jsonwebtoken::errors::Error| {
        Error::InvalidArgument(format!(
            "auth.jwt.key_file {}: not a {} key: {e}",
            j.key_file.display(),
            j.algorithm
        ))
    };
    let (algorithm, key) = match j.algorithm.as_str() {
        "HS256" => {
            let secret = key.strip_suffix(b"\n").unwrap_or(&key);
            (Algorithm::HS256, DecodingKey::from_secret(secret))
        }
        "RS256" => (
            Algorithm::RS256,
            DecodingKey::from_rsa_pem(&key).map_err(bad_key)?,
        ),
        "ES256" => (
            Algorithm::ES256,
            DecodingKey::from_ec_pem(&key).map_err(bad_key)?,
        ),
        other => {
            return Err(Error::InvalidArgument(format!(
                "auth.jwt.algorithm {other:?} is none of HS256, RS256, ES256"
            )))
        }
    };
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&j.issuer]);
    validation.set_audience(&[&j.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = j.leeway_secs;
    validation.validate_nbf = true;
    Ok((key, validation))
}

impl Authenticator {
    /// Loads the tokens file and keys `config` names (errors name the file).
    pub fn load(config: &AuthConfig) -> Result<Authenticator, Error> {
        let tokens = match &config.tokens_file {
            Some(path) => {
                let text = String::from_utf8(read("auth.tokens_file", path)?).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "auth.tokens_file {} is not UTF-8",
                        path.display()
                    ))
                })?;
                parse_tokens(path, &text)?
            }
            None => HashMap::new(),
        };
        Ok(Authenticator {
            on: config.is_on(),
            tokens,
            jwt: config.jwt.as_ref().map(jwt).transpose()?,
            certificates: config.certificates,
        })
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The principal `metadata`'s bearer credential (or, without one, the
    /// client certificate `certs` leads with) proves.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Principal, Error> {
        if let Some(value) = metadata.get("authorization") {
            let value = value.to_str().map_err(|_| {
                Error::Unauthenticated("the authorization header is not text".into())
            })?;
            if value.len() > CREDENTIAL_BYTES_MAX {
                return Err(Error::Unauthenticated(format!(
                    "the authorization header is over {CREDENTIAL_BYTES_MAX} bytes"
                )));
            }
            let token = value
                .strip_prefix("Bearer ")
                .ok_or_else(|| {
                    Error::Unauthenticated("the authorization header is not `Bearer TOKEN`".into())
                })?
                .trim();
            return self.bearer(token);
        }
        if self.certificates {
            if let Some(cert) = certs.and_then(|c| c.first()) {
                return common_name(cert);
            }
        }
        Err(Error::Unauthenticated(
            "no credentials: this node requires a token (authorization: Bearer ...) or a client certificate"
                .into(),
        ))
    }

    fn bearer(&self, token: &str) -> Result<Principal, Error> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.tokens.get(&hash) {
            return Ok(p.clone());
        }
        let Some((key, validation)) = &self.jwt else {
            return Err(Error::Unauthenticated(
                "the token is not one this node knows".into(),
            ));
        };
        match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) if !data.claims.sub.is_empty() => Ok(Principal::named(&data.claims.sub)),
            Ok(_) => Err(Error::Unauthenticated("the JWT has an empty sub".into())),
            Err(e) => Err(Error::Unauthenticated(format!("the JWT is refused: {e}"))),
        }
    }
}

/// The subject common name of a (verified) client certificate.
fn common_name(cert: &CertificateDer<'_>) -> Result<Principal, Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| Error::Unauthenticated(format!("undecodable client certificate: {e}")))?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or_else(|| {
            Error::Unauthenticated("the client certificate's subject has no common name".into())
        })?;
    Ok(Principal::named(cn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn bearer(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", format!("Bearer {token}").parse().unwrap());
        m
    }

    #[derive(serde::Serialize)]
    struct Out<'a> {
        sub: &'a str,
        iss: &'a str,
        aud: &'a str,
        exp: u64,
    }

    /// An authenticator of JWTs only: `algorithm` with `key_file`, issuer
    /// `iss`, audience `aquifer`, no leeway.
    fn jwt_only(algorithm: &str, key_file: std::path::PathBuf) -> Authenticator {
        let config = JwtConfig {
            algorithm: algorithm.into(),
            key_file,
            issuer: "iss".into(),
            audience: "aquifer".into(),
            leeway_secs: 0,
        };
        Authenticator {
            on: true,
            tokens: HashMap::new(),
            jwt: Some(jwt(&config).unwrap()),
            certificates: false,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn static_tokens_are_kept_hashed_and_matched() {
        let text = format!(
            "# ops\nalice {}\n\nbob {}  # reader\n",
            hash_token("s3cret"),
            hash_token("b")
        );
        let a = Authenticator {
            on: true,
            tokens: parse_tokens(Path::new("t"), &text).unwrap(),
            jwt: None,
            certificates: false,
        };
        assert_eq!(
            a.authenticate(&bearer("s3cret"), None).unwrap().name(),
            "alice"
        );
        assert_eq!(a.authenticate(&bearer("b"), None).unwrap().name(), "bob");
        assert!(matches!(
            a.authenticate(&bearer("nope"), None),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authenticate(&MetadataMap::new(), None),
            Err(Error::Unauthenticated(_))
        ));
        assert!(parse_tokens(Path::new("t"), "alice zz\n").is_err());
    }

    #[test]
    fn jwts_are_checked_for_signature_issuer_audience_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret");
        std::fs::write(&key, "k3y\n").unwrap();
        let a = jwt_only("HS256", key);
        let sign = |secret: &[u8], claims: &Out| {
            encode(
                &Header::default(),
                claims,
                &EncodingKey::from_secret(secret),
            )
            .unwrap()
        };
        let good = Out {
            sub: "carol",
            iss: "iss",
            aud: "aquifer",
            exp: now() + 60,
        };
        assert_eq!(
            a.authenticate(&bearer(&sign(b"k3y", &good)), None)
                .unwrap()
                .name(),
            "carol"
        );
        let expired = Out {
            exp: now() - 60,
            ..good
        };
        let wrong_aud = Out {
            aud: "other",
            ..good
        };
        let wrong_iss = Out {
            iss: "evil",
            ..good
        };
        for token in [
            sign(b"k3y", &expired),
            sign(b"other-key", &good),
            sign(b"k3y", &wrong_aud),
            sign(b"k3y", &wrong_iss),
        ] {
            assert!(matches!(
                a.authenticate(&bearer(&token), None),
                Err(Error::Unauthenticated(_))
            ));
        }
    }

    #[test]
    fn es256_jwts_are_checked_against_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = dir.path().join("jwt.pub");
        std::fs::write(&public, key.public_key_pem()).unwrap();
        let a = jwt_only("ES256", public);
        let claims = Out {
            sub: "erin",
            iss: "iss",
            aud: "aquifer",
            exp: now() + 60,
        };
        let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::ES256), &claims, &signing).unwrap();
        assert_eq!(
            a.authenticate(&bearer(&token), None).unwrap().name(),
            "erin"
        );
        // Signed by another key: refused.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let forged = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::ES256), &claims, &forged).unwrap();
        assert!(matches!(
            a.authenticate(&bearer(&token), None),
            Err(Error::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_client_certificate_names_its_common_name() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dave");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let a = Authenticator {
            on: true,
            tokens: HashMap::new(),
            jwt: None,
            certificates: true,
        };
        let p = a.authenticate(&MetadataMap::new(), Some(&[der])).unwrap();
        assert_eq!(p.name(), "dave");
    }
}
