//! Who is calling: the authenticated principal of a request.
//!
//! Owns the `Principal` type that authentication puts into a request's
//! extensions and that authorization and the audit log read back. It never
//! decides what a principal may do.

pub mod acl;
pub mod authn;
pub mod config;
pub mod tls;

use std::sync::Arc;

/// The name a caller was authenticated as (`anonymous` while auth is off).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(Arc<str>);

impl Principal {
    pub const ANONYMOUS: &'static str = "anonymous";

    pub fn named(name: &str) -> Principal {
        Principal(Arc::from(name))
    }

    /// The caller of a request whose principal no authenticator set.
    pub fn anonymous() -> Principal {
        Principal::named(Principal::ANONYMOUS)
    }

    /// The principal authentication attached to `req`, or anonymous.
    pub fn of<T>(req: &tonic::Request<T>) -> Principal {
        req.extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or_else(Principal::anonymous)
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
