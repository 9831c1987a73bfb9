//! Authorization: what the caller's principal may do, decided from the
//! ACLs the metadata group holds; session opens and refusals audited.
//!
//! Owns the one entry the services call before they act
//! ([`Node::authorize`]); the matching rule itself is `auth::acl`. It never
//! authenticates (the interceptors did) and never blocks on the audit log.

use crate::audit::{AuditRecord, Outcome};
use crate::auth::acl::{self, Access, Permission, Resource};
use crate::auth::Principal;
use crate::error::Error;

use super::Node;

impl Node {
    /// Whether auth is on: off, every caller may do everything.
    pub(crate) fn auth_on(&self) -> bool {
        self.authn.is_on()
    }

    /// What `principal` may see of `r` with `permission`, or why it may
    /// not act; the decision is audited as `operation` (with auth off too:
    /// every session open is recorded, by `anonymous`).
    pub(crate) fn authorize(
        &self,
        principal: &Principal,
        permission: Permission,
        r: Resource<'_>,
        operation: &str,
    ) -> Result<Access, Error> {
        self.authorize_as(principal, permission, r, operation, false)
    }

    /// [`Node::authorize`]; with `whole`, a grant limited to some routing
    /// keys is a refusal too (direct tier-2 reads would bypass the filter).
    fn authorize_as(
        &self,
        principal: &Principal,
        permission: Permission,
        r: Resource<'_>,
        operation: &str,
        whole: bool,
    ) -> Result<Access, Error> {
        let decided = match self.auth_on() {
            false => Ok(Access::All),
            true => match self.decide(principal, permission, &r) {
                Ok(Access::Keys(_)) if whole => Err(Error::PermissionDenied(format!(
                    "principal {principal} may read only some routing keys of {r}: direct tier-2 \
                     scans would bypass that filter; scan through the broker instead"
                ))),
                decided => decided,
            },
        };
        let outcome = match &decided {
            Ok(_) => Outcome::Ok,
            Err(e) => {
                tracing::info!(%principal, operation, target = %r, error = %e, "denied");
                Outcome::Denied(e.to_string())
            }
        };
        self.audit.record(AuditRecord {
            principal,
            operation,
            target: r.target(),
            outcome,
            bytes: 0,
        });
        decided
    }

    /// Records a refusal [`Node::check`] made (callers that audit the
    /// allowed case with its outcome themselves).
    pub(crate) fn audit_denied(
        &self,
        principal: &Principal,
        operation: &str,
        r: &Resource<'_>,
        e: &Error,
    ) {
        tracing::info!(%principal, operation, target = %r, error = %e, "denied");
        self.audit.record(AuditRecord {
            principal,
            operation,
            target: r.target(),
            outcome: Outcome::Denied(e.to_string()),
            bytes: 0,
        });
    }

    /// [`Node::authorize`] for the stream segment `segment_id` belongs to.
    pub(crate) fn authorize_segment(
        &self,
        principal: &Principal,
        permission: Permission,
        segment_id: u64,
        operation: &str,
    ) -> Result<Access, Error> {
        self.authorize_segment_as(principal, permission, segment_id, operation, false)
    }

    /// [`Node::authorize_segment`] for a read that must see every event of
    /// the segment (a direct scan): a key-restricted grant refuses it.
    pub(crate) fn authorize_segment_whole(
        &self,
        principal: &Principal,
        segment_id: u64,
        operation: &str,
    ) -> Result<(), Error> {
        self.authorize_segment_as(principal, Permission::Read, segment_id, operation, true)
            .map(drop)
    }

    fn authorize_segment_as(
        &self,
        principal: &Principal,
        permission: Permission,
        segment_id: u64,
        operation: &str,
        whole: bool,
    ) -> Result<Access, Error> {
        if !self.auth_on() {
            return Ok(Access::All);
        }
        let Some(key) = self.controller.stream_of_segment(segment_id) else {
            // A stream created a moment ago may not have reached this
            // node's metadata yet: worth a retry, not a verdict.
            return Err(Error::Unavailable(format!(
                "segment {segment_id} belongs to no stream this node knows yet; retry"
            )));
        };
        self.authorize_as(
            principal,
            permission,
            Resource::stream(&key.scope, &key.stream),
            operation,
            whole,
        )
    }

    /// [`Node::authorize`] without the audit record: for calls a session
    /// repeats (a reader's heartbeats) once its open was audited.
    pub(crate) fn check(
        &self,
        principal: &Principal,
        permission: Permission,
        r: Resource<'_>,
    ) -> Result<Access, Error> {
        if !self.auth_on() {
            return Ok(Access::All);
        }
        self.decide(principal, permission, &r)
    }

    /// Whether [`Node::check`] allows: filters (which streams a listing
    /// shows).
    pub(crate) fn may(
        &self,
        principal: &Principal,
        permission: Permission,
        r: Resource<'_>,
    ) -> bool {
        self.check(principal, permission, r).is_ok()
    }

    fn decide(
        &self,
        principal: &Principal,
        permission: Permission,
        r: &Resource<'_>,
    ) -> Result<Access, Error> {
        let superuser = self
            .config
            .auth
            .superusers
            .iter()
            .any(|s| s == principal.name());
        self.controller
            .with_acls(|grants| acl::decide(grants, superuser, principal.name(), permission, r))
    }

    /// A call refused for its credentials (the interceptor's): the
    /// principal is unknown, so the record names where it came from.
    pub(crate) fn audit_unauthenticated(&self, from: &str, e: &Error) {
        tracing::info!(from, error = %e, "unauthenticated call refused");
        self.audit.record(AuditRecord {
            principal: &Principal::named(&format!("unauthenticated@{from}")),
            operation: "auth",
            target: String::new(),
            outcome: Outcome::Unauthenticated(e.to_string()),
            bytes: 0,
        });
    }
}
