//! ACL administration and identity: grant, revoke and list what principals
//! may do (admins only), and ask who the client is authenticated as.
//!
//! Owns the `Access` service's calls; they run through [`Admin::call`]'s
//! leader-following rule, as every metadata change does.

use crate::proto::access_client::AccessClient;
use crate::proto::{AclGrant, AclListRequest, WhoAmIRequest};
use crate::{Admin, Error};

/// One ACL grant: `principal` (or `*`) may `permission` (`admin`,
/// `create`, `write`, `read`, `delete`) on `resource` (`*`, `SCOPE`,
/// `SCOPE/*`, `SCOPE/STREAM`, a trailing `*` matching any rest); a read
/// grant may be limited to routing-key prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// A principal's name, or `*` for every authenticated one.
    pub principal: String,
    /// `admin`, `create`, `write`, `read` or `delete`.
    pub permission: String,
    /// `*`, `SCOPE`, `SCOPE/*` or `SCOPE/STREAM`.
    pub resource: String,
    /// Read grants only: the routing-key prefixes it sees (empty: all).
    pub key_prefixes: Vec<String>,
}

impl From<AclGrant> for Grant {
    fn from(g: AclGrant) -> Grant {
        Grant {
            principal: g.principal,
            permission: g.permission,
            resource: g.resource,
            key_prefixes: g.key_prefixes,
        }
    }
}

impl From<&Grant> for AclGrant {
    fn from(g: &Grant) -> AclGrant {
        AclGrant {
            principal: g.principal.clone(),
            permission: g.permission.clone(),
            resource: g.resource.clone(),
            key_prefixes: g.key_prefixes.clone(),
        }
    }
}

/// Who the node took the client for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The principal's name (`anonymous` while auth is off).
    pub principal: String,
    /// Whether the node checks credentials at all.
    pub auth_enabled: bool,
}

impl Admin {
    /// Adds `grant` (a grant already held is kept once); the grants after.
    pub async fn grant(&self, grant: &Grant) -> Result<Vec<Grant>, Error> {
        let req = AclGrant::from(grant);
        let answer = self
            .call(|c| {
                let req = c.request(req.clone());
                async move { AccessClient::new(c.channel().1).grant(req).await }
            })
            .await?;
        Ok(answer.grants.into_iter().map(Grant::from).collect())
    }

    /// Removes a grant equal to `grant` ([`Error::NotFound`] if none is).
    pub async fn revoke(&self, grant: &Grant) -> Result<Vec<Grant>, Error> {
        let req = AclGrant::from(grant);
        let answer = self
            .call(|c| {
                let req = c.request(req.clone());
                async move { AccessClient::new(c.channel().1).revoke(req).await }
            })
            .await?;
        Ok(answer.grants.into_iter().map(Grant::from).collect())
    }

    /// The grants to `principal` (None: every grant, which takes admin).
    pub async fn acls(&self, principal: Option<&str>) -> Result<Vec<Grant>, Error> {
        let req = AclListRequest {
            principal: principal.unwrap_or("").to_string(),
        };
        let answer = self
            .call(|c| {
                let req = c.request(req.clone());
                async move { AccessClient::new(c.channel().1).list(req).await }
            })
            .await?;
        Ok(answer.grants.into_iter().map(Grant::from).collect())
    }

    /// Who the node took this client for.
    pub async fn who_am_i(&self) -> Result<Identity, Error> {
        let answer = self
            .call(|c| {
                let req = c.request(WhoAmIRequest {});
                async move { AccessClient::new(c.channel().1).who_am_i(req).await }
            })
            .await?;
        Ok(Identity {
            principal: answer.principal,
            auth_enabled: answer.auth_enabled,
        })
    }
}
