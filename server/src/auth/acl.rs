//! ACLs: grants of a permission on a resource to a principal, and the one
//! rule that decides a request from them.
//!
//! Pure: owns parsing and matching of grants; the grants themselves live in
//! the metadata group (`controller`), and the services ask through
//! `Node::authorize`. It never reads request bytes.

use std::fmt;

use aquifer_proto::v1::AclGrant;

use crate::error::Error;

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// The cluster and the ACLs, and everything below on every stream.
    Admin,
    /// Create streams, change their configuration, scale them.
    Create,
    /// Append, conditional appends, transactions.
    Write,
    /// Read, scan, locate, describe, list, reader groups.
    Read,
    /// Seal, truncate, delete.
    Delete,
}

impl Permission {
    pub fn parse(s: &str) -> Result<Permission, Error> {
        Ok(match s {
            "admin" => Permission::Admin,
            "create" => Permission::Create,
            "write" => Permission::Write,
            "read" => Permission::Read,
            "delete" => Permission::Delete,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "permission {s:?} is none of admin, create, write, read, delete"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Admin => "admin",
            Permission::Create => "create",
            Permission::Write => "write",
            Permission::Read => "read",
            Permission::Delete => "delete",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request touches: every stream (`None` scope: the cluster), one
/// scope, or one stream.
#[derive(Clone, Copy, Debug)]
pub struct Resource<'a> {
    pub scope: Option<&'a str>,
    pub stream: Option<&'a str>,
}

impl<'a> Resource<'a> {
    pub const CLUSTER: Resource<'static> = Resource {
        scope: None,
        stream: None,
    };

    pub fn stream(scope: &'a str, stream: &'a str) -> Resource<'a> {
        Resource {
            scope: Some(scope),
            stream: Some(stream),
        }
    }

    pub fn scope(scope: &'a str) -> Resource<'a> {
        Resource {
            scope: Some(scope),
            stream: None,
        }
    }
}

impl Resource<'_> {
    /// The resource as the audit log names it: `scope/stream`, `scope`, or
    /// empty for the cluster.
    pub fn target(&self) -> String {
        match (self.scope, self.stream) {
            (Some(scope), Some(stream)) => format!("{scope}/{stream}"),
            (Some(scope), None) => scope.to_string(),
            _ => String::new(),
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.scope, self.stream) {
            (Some(scope), Some(stream)) => write!(f, "{scope}/{stream}"),
            (Some(scope), None) => write!(f, "scope {scope}"),
            _ => f.write_str("the cluster"),
        }
    }
}

/// What a read may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every event.
    All,
    /// Only events whose routing key starts with one of these.
    Keys(Vec<String>),
}

impl Access {
    /// Whether an event with routing key `key` may be seen.
    pub fn allows_key(&self, key: &str) -> bool {
        match self {
            Access::All => true,
            Access::Keys(prefixes) => prefixes.iter().any(|p| key.starts_with(p.as_str())),
        }
    }

    pub fn is_all(&self) -> bool {
        *self == Access::All
    }
}

/// Checks and normalizes a grant before it is recorded: known permission,
/// well-formed resource, key prefixes on reads only.
pub fn normalize(mut g: AclGrant) -> Result<AclGrant, Error> {
    let bad = |why: String| Err(Error::InvalidArgument(why));
    g.principal = g.principal.trim().to_string();
    g.resource = g.resource.trim().to_string();
    if g.principal.is_empty() || g.principal.len() > 256 {
        return bad("a grant names a principal (or *), of at most 256 bytes".into());
    }
    let permission = Permission::parse(&g.permission)?;
    if g.resource.is_empty() || g.resource.len() > 512 {
        return bad("a grant names a resource: *, SCOPE, SCOPE/* or SCOPE/STREAM".into());
    }
    if g.resource.matches('/').count() > 1 {
        return bad(format!(
            "resource {:?} is not *, SCOPE, SCOPE/* or SCOPE/STREAM",
            g.resource
        ));
    }
    if permission == Permission::Admin && g.resource != "*" {
        return bad("admin is granted on * (the whole cluster)".into());
    }
    if !g.key_prefixes.is_empty() && permission != Permission::Read {
        return bad("key prefixes restrict read grants only".into());
    }
    if g.key_prefixes.iter().any(String::is_empty) {
        return bad("an empty key prefix matches every key: leave the prefixes out instead".into());
    }
    if !g.resource.contains('/') && g.resource != "*" {
        g.resource.push_str("/*");
    }
    g.key_prefixes.sort();
    g.key_prefixes.dedup();
    Ok(g)
}

/// The scope of the node's own streams (the audit log).
pub const SYSTEM_SCOPE: &str = "_system";

/// Whether name `pattern` (a trailing `*` matches any rest) matches `name`.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether a (normalized) grant's resource covers `r`. A scope-wide
/// resource covers the scope itself (listing it); a stream resource covers
/// only its stream.
fn covers(resource: &str, r: &Resource<'_>) -> bool {
    if resource == "*" {
        // The audit log's scope is reserved: only a grant that names it
        // (or admin) reaches it.
        return r.scope != Some(SYSTEM_SCOPE);
    }
    let Some((scope, stream)) = resource.split_once('/') else {
        return false;
    };
    match (r.scope, r.stream) {
        (Some(s), Some(t)) => name_matches(scope, s) && name_matches(stream, t),
        (Some(s), None) => name_matches(scope, s) && stream == "*",
        _ => false,
    }
}

/// Decides whether `principal` may `permission` on `r` under `grants`
/// (`superuser`: configured to do everything). Reads answer what they may
/// see: any unrestricted read grant gives every event, else the union of
/// the prefixes of the restricted ones.
pub fn decide(
    grants: &[AclGrant],
    superuser: bool,
    principal: &str,
    permission: Permission,
    r: &Resource<'_>,
) -> Result<Access, Error> {
    if superuser {
        return Ok(Access::All);
    }
    let mine = grants
        .iter()
        .filter(|g| g.principal == "*" || g.principal == principal);
    let mut prefixes: Vec<String> = Vec::new();
    let mut allowed = false;
    for g in mine {
        let Ok(p) = Permission::parse(&g.permission) else {
            continue;
        };
        if p == Permission::Admin {
            return Ok(Access::All);
        }
        if p != permission || !covers(&g.resource, r) {
            continue;
        }
        if g.key_prefixes.is_empty() {
            return Ok(Access::All);
        }
        allowed = true;
        prefixes.extend(g.key_prefixes.iter().cloned());
    }
    if allowed {
        prefixes.sort();
        prefixes.dedup();
        return Ok(Access::Keys(prefixes));
    }
    Err(Error::PermissionDenied(format!(
        "principal {principal} may not {permission} {r}: no ACL grants it (ask an admin: aquifer acl grant {principal} {permission} ...)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(principal: &str, permission: &str, resource: &str, keys: &[&str]) -> AclGrant {
        normalize(AclGrant {
            principal: principal.into(),
            permission: permission.into(),
            resource: resource.into(),
            key_prefixes: keys.iter().map(|k| k.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn a_scope_grant_covers_its_streams_and_nothing_else() {
        let g = [grant("alice", "read", "a", &[])];
        let s = Resource::stream("a", "x");
        assert_eq!(
            decide(&g, false, "alice", Permission::Read, &s).unwrap(),
            Access::All
        );
        assert!(decide(&g, false, "alice", Permission::Read, &Resource::scope("a")).is_ok());
        let other = Resource::stream("b", "x");
        assert!(matches!(
            decide(&g, false, "alice", Permission::Read, &other),
            Err(Error::PermissionDenied(_))
        ));
        assert!(decide(&g, false, "alice", Permission::Write, &s).is_err());
        assert!(decide(&g, false, "bob", Permission::Read, &s).is_err());
        assert!(decide(&g, false, "alice", Permission::Read, &Resource::CLUSTER).is_err());
    }

    #[test]
    fn wildcards_admin_and_superusers() {
        let g = [
            grant("*", "read", "pub/*", &[]),
            grant("ops", "admin", "*", &[]),
            grant("w", "write", "logs/web-*", &[]),
        ];
        let p = Resource::stream("pub", "news");
        assert!(decide(&g, false, "anyone", Permission::Read, &p).is_ok());
        assert!(decide(&g, false, "ops", Permission::Delete, &p).is_ok());
        assert!(decide(&g, false, "ops", Permission::Admin, &Resource::CLUSTER).is_ok());
        assert!(decide(
            &g,
            false,
            "w",
            Permission::Write,
            &Resource::stream("logs", "web-1")
        )
        .is_ok());
        assert!(decide(
            &g,
            false,
            "w",
            Permission::Write,
            &Resource::stream("logs", "db")
        )
        .is_err());
        assert!(decide(&[], true, "root", Permission::Admin, &Resource::CLUSTER).is_ok());
        // `*` stops short of the audit log's scope; naming it reaches it.
        let all = [
            grant("w", "write", "*", &[]),
            grant("a", "read", "_system", &[]),
        ];
        let audit = Resource::stream("_system", "audit-1");
        assert!(decide(&all, false, "w", Permission::Write, &audit).is_err());
        assert!(decide(&all, false, "w", Permission::Write, &p).is_ok());
        assert!(decide(&all, false, "a", Permission::Read, &audit).is_ok());
        // A stream grant does not cover listing its scope.
        let s = [grant("x", "read", "a/one", &[])];
        assert!(decide(&s, false, "x", Permission::Read, &Resource::scope("a")).is_err());
    }

    #[test]
    fn key_restricted_reads_see_the_union_unless_one_grant_is_whole() {
        let g = [
            grant("r", "read", "a/s", &["user1"]),
            grant("r", "read", "a/*", &["user2", "user1"]),
        ];
        let s = Resource::stream("a", "s");
        let access = decide(&g, false, "r", Permission::Read, &s).unwrap();
        assert_eq!(access, Access::Keys(vec!["user1".into(), "user2".into()]));
        assert!(access.allows_key("user1-x") && !access.allows_key("user3"));
        let mut whole = g.to_vec();
        whole.push(grant("r", "read", "a/s", &[]));
        assert_eq!(
            decide(&whole, false, "r", Permission::Read, &s).unwrap(),
            Access::All
        );
    }

    #[test]
    fn bad_grants_are_refused_with_the_reason() {
        let g = |p: &str, perm: &str, r: &str, k: &[&str]| {
            normalize(AclGrant {
                principal: p.into(),
                permission: perm.into(),
                resource: r.into(),
                key_prefixes: k.iter().map(|k| k.to_string()).collect(),
            })
        };
        assert!(g("a", "fly", "*", &[]).is_err());
        assert!(g("", "read", "*", &[]).is_err());
        assert!(g("a", "admin", "s/t", &[]).is_err());
        assert!(g("a", "write", "s/t", &["k"]).is_err());
        assert!(g("a", "read", "s/t/u", &[]).is_err());
        assert!(g("a", "read", "s/t", &[""]).is_err());
        assert_eq!(g("a", "read", "s", &[]).unwrap().resource, "s/*");
    }
}
