//! The commands of the `aquifer` CLI, one module each, and what they share:
//! tables and the units limits are written in.
//!
//! Each command module owns its flags (clap `Args`), its output format and
//! its calls into the client or server crate. None of them may print an
//! error itself or exit: errors go back to `main`, which prints the one
//! `error: ...` line.

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
