//! The commands of the `aquifer` CLI, one module each, and what they share:
//! tables and the units limits are written in.
//!
//! Each command module owns its flags (clap `Args`), its output format and
//! its calls into the client or server crate. None of them may print an
//! error itself or exit: errors go back to `main`, which prints the one
//! `error: ...` line.

pub mod acl;
pub mod audit;
pub mod cluster;
pub mod event_json;
pub mod group;
pub mod read;
pub mod scan;
pub mod serve;
pub mod stream_admin;
pub mod txn;
pub mod units;
pub mod write;

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context;
use aquifer_client::Client;

/// How client commands secure their connection (global flags, each with
/// its environment variable).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ConnectSecurity {
    /// CA certificate (PEM) that signed the nodes' certificates: speak TLS.
    #[arg(long, global = true, env = "AQUIFER_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present (with --tls-key).
    #[arg(
        long,
        global = true,
        env = "AQUIFER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "AQUIFER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// File holding the bearer token (static token or JWT) to send; or set
    /// AQUIFER_TOKEN to the token itself.
    #[arg(long, global = true, env = "AQUIFER_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
}

static SECURITY: OnceLock<ConnectSecurity> = OnceLock::new();

/// Records the global flags for [`connect`] (once, before any command).
pub fn set_security(s: ConnectSecurity) {
    let _ = SECURITY.set(s);
}

fn read_file(what: &str, path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Connects a client command to `addr` with the TLS and token settings of
/// the flags (or their environment variables).
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    let s = SECURITY.get().cloned().unwrap_or_default();
    let mut b = Client::builder(addr);
    if let Some(ca) = &s.tls_ca {
        b = b.tls_ca(read_file("--tls-ca", ca)?);
    }
    if let (Some(cert), Some(key)) = (&s.tls_cert, &s.tls_key) {
        b = b.tls_identity(read_file("--tls-cert", cert)?, read_file("--tls-key", key)?);
    }
    if let Ok(name) = std::env::var("AQUIFER_TLS_SERVER_NAME") {
        b = b.tls_server_name(&name);
    }
    if let Some(file) = &s.token_file {
        let token = String::from_utf8(read_file("--token-file", file)?)
            .context("the token file is not UTF-8")?;
        b = b.token(&token);
    } else if let Ok(token) = std::env::var("AQUIFER_TOKEN") {
        b = b.token(&token);
    }
    Ok(b.connect().await?)
}

/// `""` for one, `"s"` otherwise.
pub fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Left-aligned columns separated by two spaces; the first row is the
/// header.
pub fn write_table(out: &mut impl Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let width = widths.get(c).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// A table's header row.
pub fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            header(&["A", "LONG HEADER", "X"]),
            vec!["12345".to_string(), "1".to_string(), "yes".to_string()],
        ];
        let mut out = Vec::new();
        write_table(&mut out, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "A      LONG HEADER  X\n12345  1            yes\n");
    }
}
