//! `aquifer audit tail|verify`: the audit log every node keeps in its
//! stream `_system/audit-<node id>`, shown and checked.
//!
//! Owns the commands' flags and output. The record format and the chain
//! rule are the server crate's (`aquifer_server::audit::record`), so the
//! check here is the one the writer builds for; this module never writes
//! to an audit stream.

use std::io::Write;

use anyhow::{bail, Context};
use aquifer_client::{Client, Event, SegmentInfo, StreamInfo};
use aquifer_server::audit::record::{Chain, Record};
use aquifer_server::audit::SCOPE;
use clap::Subcommand;
use futures::{StreamExt, TryStreamExt};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Show the audit log: who called what, on which node, and how it
    /// ended.
    ///
    /// Prints the newest records of every node's audit stream
    /// (`_system/audit-<node id>`), oldest first, one line each: time (UTC),
    /// node, sequence number, principal, operation, target and outcome
    /// (with the reason of a failure or refusal). With --follow it then
    /// prints each record as it is stored, until interrupted.
    Tail {
        /// How many of the newest records to show first (0: all).
        #[arg(long, short = 'n', default_value_t = 20, value_name = "N")]
        lines: usize,
        /// Keep printing records as they are stored.
        #[arg(long)]
        follow: bool,
        /// Print each record as stored: one JSON object per line (v, seq,
        /// time_ms, node, principal, op, target, outcome, detail, bytes,
        /// prev, hash).
        #[arg(long)]
        json: bool,
        /// Only this node's audit stream.
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
    /// Check the hash chain of every audit record.
    ///
    /// Reads every node's audit stream whole. Each record holds the hash of
    /// the one before it in its segment (the first one, a value derived from
    /// the segment id) and its own hash; verify recomputes them and checks
    /// the sequence numbers run 1, 2, 3, ... So a record altered, removed,
    /// reordered or replaced is found. Prints OK with the counts and each
    /// chain's last hash (keep it elsewhere: a later verify that ends
    /// elsewhere shows a rewritten or truncated tail, which the chain alone
    /// cannot), or exits non-zero naming the first broken link: stream,
    /// segment, offset, sequence number and what is wrong (hash mismatch,
    /// missing predecessor, undecodable record).
    Verify {
        /// Only this node's audit stream.
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
}

pub async fn run(addr: &str, cmd: AuditCommand) -> anyhow::Result<()> {
    let client = super::connect(addr).await?;
    match cmd {
        AuditCommand::Tail {
            lines,
            follow,
            json,
            node,
        } => tail(&client, lines, follow, json, node).await,
        AuditCommand::Verify { node } => verify(&client, node).await,
    }
}

/// Every node's audit stream (or node `only`'s), by node id.
async fn audit_streams(client: &Client, only: Option<u64>) -> anyhow::Result<Vec<StreamInfo>> {
    let mut streams: Vec<(u64, StreamInfo)> = client
        .admin()
        .list_streams(Some(SCOPE))
        .await?
        .into_iter()
        .filter_map(|s| {
            let node = s.name.stream.strip_prefix("audit-")?.parse::<u64>().ok()?;
            only.is_none_or(|n| n == node).then_some((node, s))
        })
        .collect();
    if streams.is_empty() {
        match only {
            Some(n) => bail!("node {n} has no audit stream ({SCOPE}/audit-{n})"),
            None => bail!("no audit streams in scope {SCOPE}: is the audit log off ([audit] enabled = false)?"),
        }
    }
    streams.sort_by_key(|(node, _)| *node);
    Ok(streams.into_iter().map(|(_, s)| s).collect())
}

/// A stream's segments in the order they were written.
fn segments(stream: &StreamInfo) -> Vec<&SegmentInfo> {
    let mut segments: Vec<&SegmentInfo> = stream.segments.iter().collect();
    segments.sort_by_key(|s| s.segment_id);
    segments
}

/// Every event of `segment` from its head to its length now.
async fn read_segment(client: &Client, segment: &SegmentInfo) -> anyhow::Result<Vec<Event>> {
    client
        .segment_reader(segment.segment_id, segment.head_offset, false)
        .try_collect()
        .await
        .with_context(|| format!("cannot read audit segment {}", segment.segment_id))
}

async fn tail(
    client: &Client,
    lines: usize,
    follow: bool,
    json: bool,
    node: Option<u64>,
) -> anyhow::Result<()> {
    let streams = audit_streams(client, node).await?;
    let mut shown: Vec<(u64, String)> = Vec::new();
    let mut ends = Vec::new();
    for stream in &streams {
        for segment in segments(stream) {
            let events = read_segment(client, segment).await?;
            let end = events.last().map_or(segment.length, |e| e.next_offset);
            for e in &events {
                shown.push(format_event(e, json));
            }
            if !segment.sealed {
                ends.push((segment.segment_id, end));
            }
        }
    }
    // Oldest first by the time the nodes took the calls.
    shown.sort_by_key(|(time, _)| *time);
    let skip = if lines == 0 {
        0
    } else {
        shown.len().saturating_sub(lines)
    };
    let mut out = std::io::stdout().lock();
    for (_, line) in &shown[skip..] {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    drop(out);
    if !follow {
        return Ok(());
    }
    let readers = ends
        .into_iter()
        .map(|(segment, offset)| client.segment_reader(segment, offset, true));
    let mut all = futures::stream::select_all(readers);
    while let Some(event) = all.next().await {
        let (_, line) = format_event(&event?, json);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

/// An event as a tail line, with the time to order it by.
fn format_event(e: &Event, json: bool) -> (u64, String) {
    let record = Record::decode(&e.payload);
    if json {
        let line = String::from_utf8_lossy(&e.payload).into_owned();
        return (record.map_or(0, |r| r.time_ms), line);
    }
    match record {
        Ok(r) => {
            let outcome = if r.detail.is_empty() {
                r.outcome.as_str().to_string()
            } else {
                format!("{} ({})", r.outcome.as_str(), r.detail)
            };
            let target = if r.target.is_empty() { "-" } else { &r.target };
            let line = format!(
                "{}  node {}  #{}  {}  {}  {}  {}",
                utc(r.time_ms),
                r.node,
                r.seq,
                r.principal,
                r.op,
                target,
                outcome
            );
            (r.time_ms, line)
        }
        Err(why) => (
            0,
            format!(
                "segment {} offset {}: {why}",
                e.position.segment_id, e.position.offset
            ),
        ),
    }
}

async fn verify(client: &Client, node: Option<u64>) -> anyhow::Result<()> {
    let streams = audit_streams(client, node).await?;
    let (mut segment_count, mut records) = (0u64, 0u64);
    let mut report = Vec::new();
    for stream in &streams {
        for segment in segments(stream) {
            let mut chain = Chain::new(segment.segment_id, segment.head_offset == 0);
            let mut reader = client.segment_reader(segment.segment_id, segment.head_offset, false);
            let (mut last_seq, mut last_hash, mut at) = (0, String::new(), segment.head_offset);
            while let Some(event) = reader.next().await {
                let event = event.with_context(|| {
                    format!(
                        "audit log broken: {}, segment {}: the record at offset {at} (after sequence number {last_seq}) cannot be read",
                        stream.name, segment.segment_id
                    )
                })?;
                match chain.push(&event.payload) {
                    Ok(r) => {
                        (last_seq, last_hash) = (r.seq, r.hash);
                        at = event.next_offset;
                    }
                    Err(why) => {
                        let seq = Record::decode(&event.payload)
                            .map_or_else(|_| "unknown".to_string(), |r| r.seq.to_string());
                        bail!(
                            "audit log broken: {}, segment {}, offset {}, sequence number {seq} (after {last_seq}): {why}",
                            stream.name,
                            segment.segment_id,
                            event.position.offset
                        );
                    }
                }
            }
            segment_count += 1;
            records += chain.records;
            let from = if segment.head_offset == 0 {
                String::new()
            } else {
                format!(" from offset {} (head)", segment.head_offset)
            };
            let ends = if chain.records == 0 {
                "no records".to_string()
            } else {
                format!("last sequence number {last_seq}, last hash {last_hash}")
            };
            report.push(format!(
                "  {} segment {}{from}: {} record{}, {ends}",
                stream.name,
                segment.segment_id,
                chain.records,
                super::plural(chain.records)
            ));
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "OK: {records} audit record{} in {} stream{}, {segment_count} segment{}: every chain verifies",
        super::plural(records),
        streams.len(),
        super::plural(streams.len() as u64),
        super::plural(segment_count)
    )?;
    for line in report {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(utc(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }
}
