//! `aquifer group ...`: create, describe, checkpoint, reset and delete
//! reader groups, and `aquifer read --group` (one reader of a group).
//!
//! Owns the group commands' flags and output. Names and cuts are checked
//! before anything is dialled. A group read leaves the group cleanly on
//! Ctrl-C or SIGTERM (its segments go to the others from where it stopped);
//! it must never print part of an event.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use aquifer_client::{
    CheckpointState, Client, GroupEvent, GroupStart, ReaderGroup, ReaderGroupConfig,
    ReaderGroupInfo, StreamCut, StreamName,
};
use clap::Subcommand;
use futures::{FutureExt, TryStreamExt};

use super::event_json::Format;
use super::read::ReadArgs;
use super::units::{format_bytes, format_duration, parse_duration_ms};
use super::{header, write_table};

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a reader group: readers that share the segments of the given
    /// streams, each segment read by one reader at a time, with
    /// checkpoints. Readers join with `aquifer read --group`.
    Create {
        /// The group, as SCOPE/GROUP.
        #[arg(value_name = "SCOPE/GROUP")]
        name: String,
        /// A stream to read, as SCOPE/STREAM. Repeatable.
        #[arg(long = "stream", value_name = "SCOPE/STREAM", required = true)]
        streams: Vec<String>,
        /// Where to start: head, tail, or a stream cut token (from `stream
        /// cut` or a checkpoint).
        #[arg(long, default_value = "head", value_name = "head|tail|CUT")]
        from: String,
        /// A reader silent this long loses its segments (they restart from
        /// its last reported positions), e.g. 30s, 500ms.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration_ms)]
        reader_timeout: u64,
        /// Retention by consumption: the streams keep data until this group
        /// has checkpointed past it.
        #[arg(long)]
        subscribe: bool,
    },
    /// Show a group: its readers, their segments, positions and lag, and
    /// its checkpoints.
    Describe {
        /// The group, as SCOPE/GROUP.
        #[arg(value_name = "SCOPE/GROUP")]
        name: String,
    },
    /// Checkpoint a group: every reader hands on a marker, and once all did,
    /// the checkpoint is a stream cut. Waits for it and prints its cut.
    Checkpoint {
        /// The group, as SCOPE/GROUP.
        #[arg(value_name = "SCOPE/GROUP")]
        name: String,
        /// The checkpoint's name [default: cp-<time in ms>].
        #[arg(long, value_name = "NAME")]
        checkpoint: Option<String>,
        /// How long to wait for every reader's marker.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration_ms)]
        wait: u64,
    },
    /// Make the group read from a completed checkpoint or a stream cut:
    /// every reader drops what it owns and resumes from there.
    Reset {
        /// The group, as SCOPE/GROUP.
        #[arg(value_name = "SCOPE/GROUP")]
        name: String,
        /// A checkpoint name, or a stream cut token.
        #[arg(long, value_name = "CHECKPOINT|CUT")]
        to: String,
    },
    /// Delete a group (its readers stop).
    Delete {
        /// The group, as SCOPE/GROUP.
        #[arg(value_name = "SCOPE/GROUP")]
        name: String,
    },
}

/// `SCOPE/GROUP`, checked by the stream naming rule.
fn group_name(name: &str) -> anyhow::Result<(String, String)> {
    let parsed: StreamName = name
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid group name {name:?}: expected SCOPE/GROUP, each part 1-255 characters of A-Z a-z 0-9 . _ - (not . or ..)"))?;
    Ok((parsed.scope, parsed.stream))
}

fn group(client: &Client, name: &str) -> anyhow::Result<ReaderGroup> {
    let (scope, group) = group_name(name)?;
    Ok(client.reader_group(&scope, &group))
}

pub async fn run(addr: &str, cmd: GroupCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        GroupCommand::Create {
            name,
            streams,
            from,
            reader_timeout,
            subscribe,
        } => {
            group_name(&name)?;
            let streams: Vec<StreamName> = streams
                .iter()
                .map(|s| s.parse())
                .collect::<Result<_, _>>()?;
            let start = match from.as_str() {
                "head" => GroupStart::Head,
                "tail" => GroupStart::Tail,
                cut => GroupStart::Cut(StreamCut::parse(cut)?),
            };
            let config = ReaderGroupConfig::default()
                .start(start)
                .reader_timeout(Duration::from_millis(reader_timeout))
                .subscribe(subscribe);
            let client = super::connect(addr).await?;
            let info = group(&client, &name)?.create(&streams, &config).await?;
            writeln!(out, "created reader group {name}")?;
            describe(&mut out, &info)?;
        }
        GroupCommand::Describe { name } => {
            group_name(&name)?;
            let client = super::connect(addr).await?;
            let info = group(&client, &name)?.describe().await?;
            describe(&mut out, &info)?;
        }
        GroupCommand::Checkpoint {
            name,
            checkpoint,
            wait,
        } => {
            group_name(&name)?;
            let checkpoint = checkpoint.unwrap_or_else(|| {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                format!("cp-{ms}")
            });
            let client = super::connect(addr).await?;
            let g = group(&client, &name)?;
            g.checkpoint(&checkpoint).await?;
            let cut = g
                .await_checkpoint(&checkpoint, Duration::from_millis(wait))
                .await?;
            writeln!(out, "checkpoint {checkpoint} complete: {cut}")?;
        }
        GroupCommand::Reset { name, to } => {
            group_name(&name)?;
            let client = super::connect(addr).await?;
            let g = group(&client, &name)?;
            let info = match StreamCut::parse(&to) {
                Ok(cut) => g.reset_to_cut(&cut).await?,
                Err(_) => g.reset_to_checkpoint(&to).await?,
            };
            writeln!(out, "reset reader group {name} to {to}")?;
            describe(&mut out, &info)?;
        }
        GroupCommand::Delete { name } => {
            group_name(&name)?;
            let client = super::connect(addr).await?;
            group(&client, &name)?.delete().await?;
            writeln!(out, "deleted reader group {name}")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn describe(out: &mut impl Write, g: &ReaderGroupInfo) -> std::io::Result<()> {
    let streams: Vec<String> = g.streams.iter().map(ToString::to_string).collect();
    writeln!(out, "group:          {}/{}", g.scope, g.group)?;
    writeln!(out, "streams:        {}", streams.join(", "))?;
    writeln!(out, "generation:     {}", g.generation)?;
    writeln!(out, "reader timeout: {}", format_duration(g.reader_timeout))?;
    writeln!(
        out,
        "subscribed:     {}",
        if g.subscribed { "yes" } else { "no" }
    )?;
    let mut rows = vec![header(&["READER", "SEGMENT", "OFFSET", "LAG"])];
    for r in &g.readers {
        if r.segments.is_empty() {
            rows.push(vec![
                r.reader_id.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for s in &r.segments {
            let releasing = if r.releasing.contains(&s.segment_id) {
                " (releasing)"
            } else {
                ""
            };
            rows.push(vec![
                r.reader_id.clone(),
                format!("{}{releasing}", s.segment_id),
                s.offset.to_string(),
                format_bytes(s.lag_bytes),
            ]);
        }
    }
    for s in &g.unassigned {
        rows.push(vec![
            "(unassigned)".into(),
            s.segment_id.to_string(),
            s.offset.to_string(),
            format_bytes(s.lag_bytes),
        ]);
    }
    writeln!(out)?;
    write_table(out, &rows)?;
    if !g.checkpoints.is_empty() {
        writeln!(out)?;
        let mut rows = vec![header(&["CHECKPOINT", "STATE", "CUT / WAITING FOR"])];
        for c in &g.checkpoints {
            let (state, detail) = match c.state {
                CheckpointState::Complete => ("complete", c.cut.to_string()),
                CheckpointState::Pending => ("pending", c.pending.join(", ")),
                _ => ("failed", c.failure.clone()),
            };
            rows.push(vec![c.name.clone(), state.into(), detail]);
        }
        write_table(out, &rows)?;
    }
    Ok(())
}

/// `aquifer read --group NAME --reader READER`.
pub async fn read(addr: &str, name: &str, reader_id: &str, args: &ReadArgs) -> anyhow::Result<()> {
    group_name(name)?;
    if reader_id.is_empty() {
        bail!("--group needs --reader READER (this reader's id in the group)");
    }
    let client = super::connect(addr).await?;
    let mut reader = group(&client, name)?
        .reader(reader_id)
        .await
        .with_context(|| format!("joining reader group {name}"))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut count: u64 = 0;
    let mut stop = std::pin::pin!(shutdown_signal());
    let result: anyhow::Result<()> = async {
        while args.max.is_none_or(|max| count < max) {
            let next = match reader.try_next().now_or_never() {
                Some(next) => next,
                None => {
                    out.flush()?;
                    tokio::select! {
                        next = reader.try_next() => next,
                        () = &mut stop => break,
                    }
                }
            };
            match next? {
                Some(GroupEvent::Event(event)) => {
                    super::read::print(&mut out, args, &event)?;
                    count += 1;
                }
                Some(GroupEvent::Checkpoint(name)) => {
                    if args.format() == Format::Json {
                        writeln!(out, "{{\"checkpoint\":{}}}", serde_json::Value::from(name))?;
                    } else {
                        out.flush()?;
                        eprintln!("checkpoint {name}");
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        out.flush()?;
        Ok(())
    }
    .await;
    // Leave cleanly: the others take over from exactly here.
    reader.close().await?;
    result
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
