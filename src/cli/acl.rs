//! `aquifer acl ...` (grant, revoke, list, whoami) and `aquifer auth
//! hash-token`: access control from the command line.
//!
//! Owns these commands' flags and output; the rules themselves are the
//! server's. It never prints a token.

use std::io::{Read, Write};

use aquifer_client::Grant;
use clap::Subcommand;

use super::{header, write_table};

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Grant PRINCIPAL the PERMISSION on RESOURCE (admins only).
    ///
    /// PERMISSION: admin (the cluster and ACLs, and everything else; on *),
    /// create (create, update, scale streams), write (append,
    /// transactions), read (read, scan, describe, list, reader groups),
    /// delete (seal, truncate, delete). RESOURCE: *, SCOPE (every stream of
    /// it), SCOPE/STREAM; a trailing * on a name matches any rest.
    /// PRINCIPAL * means every authenticated principal.
    ///
    /// Example: aquifer acl grant alice read analytics/clicks --keys user1
    Grant(GrantArgs),
    /// Revoke a grant (the same words it was granted with).
    Revoke(GrantArgs),
    /// The grants (all of them takes admin; --principal your own name does not).
    List {
        /// Only this principal's grants.
        #[arg(long, value_name = "NAME")]
        principal: Option<String>,
    },
    /// Who the node takes this client for, and whether auth is on.
    Whoami,
}

#[derive(clap::Args, Debug)]
pub struct GrantArgs {
    /// A principal's name, or * for every authenticated principal.
    principal: String,
    /// admin, create, write, read or delete.
    permission: String,
    /// *, SCOPE, SCOPE/* or SCOPE/STREAM.
    resource: String,
    /// Read grants only: the reader gets only events whose routing key
    /// starts with one of these prefixes (comma-separated). Its direct
    /// tier-2 scans are refused.
    #[arg(long, value_name = "PREFIXES", value_delimiter = ',')]
    keys: Vec<String>,
}

impl From<GrantArgs> for Grant {
    fn from(a: GrantArgs) -> Grant {
        Grant {
            principal: a.principal,
            permission: a.permission,
            resource: a.resource,
            key_prefixes: a.keys,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Read a token from stdin and print the `NAME SHA256-HEX` line a node's
    /// auth.tokens_file takes for it (the node keeps only the hash).
    HashToken {
        /// The principal the token authenticates as.
        #[arg(long, value_name = "NAME")]
        name: String,
    },
}

pub async fn run(addr: &str, cmd: AclCommand) -> anyhow::Result<()> {
    let client = super::connect(addr).await?;
    let admin = client.admin();
    let grants = match cmd {
        AclCommand::Grant(args) => {
            let g = Grant::from(args);
            let all = admin.grant(&g).await?;
            eprintln!("granted {} {} on {}", g.principal, g.permission, g.resource);
            all
        }
        AclCommand::Revoke(args) => {
            let g = Grant::from(args);
            let all = admin.revoke(&g).await?;
            eprintln!("revoked {} {} on {}", g.principal, g.permission, g.resource);
            all
        }
        AclCommand::List { principal } => admin.acls(principal.as_deref()).await?,
        AclCommand::Whoami => {
            let me = admin.who_am_i().await?;
            let auth = if me.auth_enabled { "on" } else { "off" };
            println!("{} (auth {auth})", me.principal);
            return Ok(());
        }
    };
    let mut rows = vec![header(&["PRINCIPAL", "PERMISSION", "RESOURCE", "KEYS"])];
    for g in &grants {
        rows.push(vec![
            g.principal.clone(),
            g.permission.clone(),
            g.resource.clone(),
            if g.key_prefixes.is_empty() {
                "*".to_string()
            } else {
                g.key_prefixes.join(",")
            },
        ]);
    }
    let mut out = std::io::stdout().lock();
    write_table(&mut out, &rows)?;
    out.flush()?;
    Ok(())
}

pub fn run_auth(cmd: AuthCommand) -> anyhow::Result<()> {
    match cmd {
        AuthCommand::HashToken { name } => {
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                anyhow::bail!("--name must be one word");
            }
            let mut token = String::new();
            std::io::stdin().read_to_string(&mut token)?;
            let token = token.trim();
            if token.is_empty() {
                anyhow::bail!("no token on stdin");
            }
            println!("{name} {}", aquifer_server::hash_token(token));
            Ok(())
        }
    }
}
