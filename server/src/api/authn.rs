//! Who calls: the interceptors that put a `Principal` into every request.
//!
//! On the client port, the node's `Authenticator` checks the credentials
//! (refusing the call with UNAUTHENTICATED, audited, when they fail). On
//! the peer port, where only cluster nodes get in (mutual TLS), a call one
//! node forwarded for a client carries that client's principal, already
//! authenticated there. It never decides what a principal may do.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::auth::Principal;
use crate::node::Node;

/// Carries the principal of a call one node forwards to another.
pub const PRINCIPAL_METADATA_KEY: &str = "aquifer-principal";

/// Authenticates client-port calls.
#[derive(Clone)]
pub struct Authenticate {
    pub node: Arc<Node>,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if !self.node.authn.is_on() {
            return Ok(req);
        }
        let certs = req.peer_certs();
        match self
            .node
            .authn
            .authenticate(req.metadata(), certs.as_ref().map(|c| c.as_slice()))
        {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                Ok(req)
            }
            Err(e) => {
                let from = req
                    .remote_addr()
                    .map_or_else(|| "unknown".to_string(), |a| a.to_string());
                self.node.audit_unauthenticated(&from, &e);
                Err(e.into())
            }
        }
    }
}

/// Takes the principal a forwarding node names (peer port only).
#[derive(Clone, Copy)]
pub struct Forwarded;

impl tonic::service::Interceptor for Forwarded {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let named = req
            .metadata()
            .get(PRINCIPAL_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(Principal::named);
        if let Some(principal) = named {
            req.extensions_mut().insert(principal);
        }
        Ok(req)
    }
}
