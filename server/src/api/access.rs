//! The `Access` service: grant, revoke and list ACLs (admins only), and
//! who the caller is.
//!
//! Changes are answered by the metadata leader; another node redirects
//! (UNAVAILABLE naming the leader, which the client follows).

use std::sync::Arc;

use aquifer_proto::v1::access_server::Access;
use aquifer_proto::v1::{AclGrant, AclList, AclListRequest, WhoAmIRequest, WhoAmIResponse};
use tonic::{Request, Response, Status};

use crate::auth::acl::{normalize, Permission, Resource};
use crate::auth::Principal;
use crate::node::Node;

pub struct AccessService {
    node: Arc<Node>,
}

impl AccessService {
    pub fn new(node: Arc<Node>) -> Self {
        AccessService { node }
    }

    fn list(&self, principal: &str) -> AclList {
        let grants = self
            .node
            .controller
            .acls()
            .into_iter()
            .filter(|g| principal.is_empty() || g.principal == principal)
            .collect();
        AclList { grants }
    }

    async fn change(&self, req: Request<AclGrant>, revoke: bool) -> Result<AclList, Status> {
        let principal = Principal::of(&req);
        let operation = if revoke { "acl.revoke" } else { "acl.grant" };
        self.node
            .authorize(&principal, Permission::Admin, Resource::CLUSTER, operation)?;
        self.node.check_meta_leader()?;
        let grant = normalize(req.into_inner())?;
        tracing::info!(%principal, operation, grantee = %grant.principal, permission = %grant.permission, resource = %grant.resource, keys = ?grant.key_prefixes, "ACL changed");
        self.node.controller.change_acl(grant, revoke).await?;
        Ok(self.list(""))
    }
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn grant(&self, req: Request<AclGrant>) -> Result<Response<AclList>, Status> {
        self.change(req, false).await.map(Response::new)
    }

    async fn revoke(&self, req: Request<AclGrant>) -> Result<Response<AclList>, Status> {
        self.change(req, true).await.map(Response::new)
    }

    async fn list(&self, req: Request<AclListRequest>) -> Result<Response<AclList>, Status> {
        let principal = Principal::of(&req);
        let wanted = req.into_inner().principal;
        // Anyone may see their own grants; all of them takes admin.
        if wanted != principal.name() {
            self.node
                .authorize(&principal, Permission::Admin, Resource::CLUSTER, "acl.list")?;
        }
        Ok(Response::new(self.list(&wanted)))
    }

    async fn who_am_i(
        &self,
        req: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        Ok(Response::new(WhoAmIResponse {
            principal: Principal::of(&req).name().to_string(),
            auth_enabled: self.node.auth_on(),
        }))
    }
}
