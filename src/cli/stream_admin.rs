//! `aquifer stream ...`: create, update, list, describe, scale, history,
//! seal and delete streams, and how a stream is shown (the describe block,
//! the list table, the epoch history).
//!
//! Owns only the admin commands' flags and output; limits are shown through
//! `units` (never as raw seconds or bytes), names are checked by the
//! client's `StreamName` before anything is dialled, and so are the segment
//! ids and piece counts of `stream scale`.

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use aquifer_client::{Retention, Scale, ScalingKind, ScalingPolicy, StreamInfo, StreamName};
use clap::{Args, Subcommand};

use super::units::{
    format_bytes, format_duration, format_utc, parse_duration_ms, parse_size_bytes,
};
use super::{header, plural, write_table};

#[derive(Subcommand, Debug)]
pub enum StreamCommand {
    /// Create a stream whose key space is split evenly over N segments.
    Create {
        /// The stream to create, as SCOPE/STREAM (each part 1-255 characters
        /// of A-Z a-z 0-9 . _ -, not . or ..).
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
        /// Number of segments (parallelism of writes and reads).
        #[arg(long, default_value_t = 1, value_name = "N")]
        segments: u32,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        scaling: ScalingArgs,
    },
    /// Change a stream's retention (data past the new limits leaves the head
    /// within seconds, whole tier-2 chunks at a time) or its scaling policy.
    /// Prints the stream as `describe` does.
    Update {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        scaling: ScalingArgs,
    },
    /// List streams, of one scope or of all scopes.
    List {
        /// Only streams of this scope [default: every scope].
        #[arg(value_name = "SCOPE")]
        scope: Option<String>,
    },
    /// Show a stream's retention and segments: key ranges, offsets and where
    /// the bytes are.
    Describe {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
    },
    /// Scale a stream by hand: seal active segments and replace them, in a
    /// new epoch, by successors whose key ranges exactly cover theirs.
    /// Writers move to the successors and readers read them after their
    /// predecessors, so per-key order and exactly-once hold. Prints the
    /// stream as `describe` does once the new epoch is in force.
    ///
    /// Example: `aquifer stream scale shop/orders --split 4 --merge 5,6`.
    Scale {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
        /// Split active segment SEG (its id, as `describe` shows it) into N
        /// equal key ranges, 2 to 16 [default N: 2]. Repeatable.
        #[arg(long = "split", value_name = "SEG[:N]", value_parser = parse_split)]
        splits: Vec<SplitArg>,
        /// Merge key-adjacent active segments (at least two ids, comma
        /// separated, any order) into one. Repeatable.
        #[arg(long = "merge", value_name = "SEG,SEG[,...]", value_parser = parse_merge)]
        merges: Vec<MergeArg>,
    },
    /// Show a stream's epochs, oldest first: when each began and its active
    /// segments (one line per epoch).
    History {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
    },
    /// Print a stream cut as a token (SEGMENT:OFFSET pairs): the tail (where
    /// the stream ends now) or, with --head, the head. Give it to `read
    /// --from-cut`, `scan --from-cut/--to-cut` or `group create --from`.
    Cut {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
        /// The head cut (the first readable event of every segment) instead
        /// of the tail.
        #[arg(long)]
        head: bool,
    },
    /// Seal a stream: no more appends, reads still work. Idempotent.
    Seal {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
    },
    /// Delete a stream and all its data.
    Delete {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
    },
}

/// Most pieces one split makes (the protocol's limit).
const SPLIT_PIECES_MAX: u32 = 16;

/// `--split SEG[:N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitArg {
    segment_id: u64,
    pieces: u32,
}

/// `--merge SEG,SEG[,...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeArg(Vec<u64>);

fn parse_segment_id(s: &str) -> Result<u64, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a segment id (a number, as `stream describe` shows it)"))
}

fn parse_split(s: &str) -> Result<SplitArg, String> {
    let (seg, pieces) = match s.split_once(':') {
        Some((seg, n)) => {
            let n: u32 = n
                .trim()
                .parse()
                .map_err(|_| format!("'{n}' is not a number of pieces"))?;
            (seg, n)
        }
        None => (s, 2),
    };
    if !(2..=SPLIT_PIECES_MAX).contains(&pieces) {
        return Err(format!(
            "a split makes 2 to {SPLIT_PIECES_MAX} pieces, not {pieces}"
        ));
    }
    Ok(SplitArg {
        segment_id: parse_segment_id(seg)?,
        pieces,
    })
}

fn parse_merge(s: &str) -> Result<MergeArg, String> {
    let ids = s
        .split(',')
        .map(parse_segment_id)
        .collect::<Result<Vec<u64>, String>>()?;
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 2 || distinct.len() != ids.len() {
        return Err(format!(
            "a merge takes at least two different segment ids, comma separated, not '{s}'"
        ));
    }
    Ok(MergeArg(ids))
}

/// How much of a stream to keep. Without either flag: everything, forever.
#[derive(Args, Debug, Default)]
pub struct RetentionArgs {
    /// Keep events for this long after they reach tier-2: NUMBER with s, m,
    /// h or d (e.g. 7d, 12h); 0 for no time limit.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    retention_time: Option<u64>,
    /// Keep about this much of the stream: NUMBER with B, KiB, MiB, GiB or
    /// TiB (e.g. 100GiB); 0 for no size limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    retention_size: Option<u64>,
    /// Retention by consumption: remove data once every reader group that
    /// subscribes to the stream (`group create --subscribe`) has
    /// checkpointed past it. --retention-time/--retention-size are then
    /// the most kept; `--retention-by-consumption false` turns it off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    retention_by_consumption: Option<bool>,
    /// By consumption: keep at least this long (e.g. 1h; 0: no minimum).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    retention_min_time: Option<u64>,
    /// By consumption: keep at least about this much (e.g. 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    retention_min_size: Option<u64>,
}

/// How a stream follows its traffic. Without `--scaling`: a fixed number
/// of segments (`stream scale` still works).
#[derive(Args, Debug, Default)]
pub struct ScalingArgs {
    /// Scale by rate: `events:N` keeps each segment near N events/s,
    /// `kib:N` near N KiB/s; `fixed` turns auto-scaling off. A segment whose
    /// rate stays above N splits; cold neighbours merge.
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    scaling: Option<ScalingPolicy>,
    /// With --scaling: the most pieces one split makes, 2 to 16 [default: 2].
    #[arg(long, value_name = "N", requires = "scaling")]
    scale_factor: Option<u32>,
    /// With --scaling: the fewest active segments the stream keeps
    /// [default: 1].
    #[arg(long, value_name = "N", requires = "scaling")]
    min_segments: Option<u32>,
}

impl ScalingArgs {
    /// The policy these flags ask for, if any.
    fn policy(&self) -> anyhow::Result<Option<ScalingPolicy>> {
        let Some(mut p) = self.scaling else {
            return Ok(None);
        };
        if let Some(n) = self.scale_factor {
            if !(2..=16).contains(&n) {
                bail!("--scale-factor must be 2 to 16, not {n}");
            }
            p = p.scale_factor(n);
        }
        if let Some(n) = self.min_segments {
            if n == 0 {
                bail!("--min-segments must be at least 1");
            }
            p = p.min_segments(n);
        }
        Ok(Some(p))
    }
}

/// `events:N`, `kib:N` or `fixed`.
fn parse_policy(s: &str) -> Result<ScalingPolicy, String> {
    if s == "fixed" {
        return Ok(ScalingPolicy::fixed());
    }
    let (kind, n) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: use events:N, kib:N or fixed"))?;
    let n: u64 = n
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?}: the target must be a number above 0"))?;
    match kind {
        "events" => Ok(ScalingPolicy::events_per_second(n)),
        "kib" => Ok(ScalingPolicy::kib_per_second(n)),
        _ => Err(format!("{s:?}: use events:N, kib:N or fixed")),
    }
}

/// The policy as `--scaling` writes it.
fn policy_line(p: &ScalingPolicy) -> String {
    match (p.kind(), p.target()) {
        (ScalingKind::EventsPerSecond, Some(t)) => format!(
            "scaling: events:{t} (events/s per segment), scale factor {}, min segments {}",
            p.get_scale_factor(),
            p.get_min_segments()
        ),
        (ScalingKind::KibPerSecond, Some(t)) => format!(
            "scaling: kib:{t} (KiB/s per segment), scale factor {}, min segments {}",
            p.get_scale_factor(),
            p.get_min_segments()
        ),
        _ => "scaling: fixed".to_string(),
    }
}

impl RetentionArgs {
    /// `base` with the limits these flags set (0 removes a limit).
    fn applied_to(&self, base: Retention) -> Retention {
        let mut r = base;
        if let Some(ms) = self.retention_time {
            r.time = Some(Duration::from_millis(ms)).filter(|t| !t.is_zero());
        }
        if let Some(bytes) = self.retention_size {
            r.size_bytes = Some(bytes).filter(|&b| b > 0);
        }
        if let Some(on) = self.retention_by_consumption {
            r.by_consumption = on;
        }
        if let Some(ms) = self.retention_min_time {
            r.min_time = Some(Duration::from_millis(ms)).filter(|t| !t.is_zero());
        }
        if let Some(bytes) = self.retention_min_size {
            r.min_size_bytes = Some(bytes).filter(|&b| b > 0);
        }
        r
    }

    fn is_empty(&self) -> bool {
        self.retention_time.is_none()
            && self.retention_size.is_none()
            && self.retention_by_consumption.is_none()
            && self.retention_min_time.is_none()
            && self.retention_min_size.is_none()
    }
}

pub async fn run(addr: &str, cmd: StreamCommand) -> anyhow::Result<()> {
    // Validate names before dialling, so a typo is reported as such.
    let name = match &cmd {
        StreamCommand::Create { name, .. }
        | StreamCommand::Update { name, .. }
        | StreamCommand::Describe { name }
        | StreamCommand::Scale { name, .. }
        | StreamCommand::History { name }
        | StreamCommand::Cut { name, .. }
        | StreamCommand::Seal { name }
        | StreamCommand::Delete { name } => Some(name.parse::<StreamName>()?),
        StreamCommand::List { .. } => None,
    };
    if let StreamCommand::Create { segments: 0, .. } = cmd {
        bail!("--segments must be at least 1");
    }
    if let StreamCommand::Update {
        retention, scaling, ..
    } = &cmd
    {
        if retention.is_empty() && scaling.scaling.is_none() {
            bail!("nothing to change: give --retention-time, --retention-size (0 removes a limit), --retention-by-consumption, or --scaling");
        }
    }
    if let StreamCommand::Scale { splits, merges, .. } = &cmd {
        if splits.is_empty() && merges.is_empty() {
            bail!("nothing to scale: give --split SEG[:N] and/or --merge SEG,SEG");
        }
    }
    let client = super::connect(addr).await?;
    let admin = client.admin();
    let mut out = std::io::stdout().lock();
    match (cmd, name) {
        (
            StreamCommand::Create {
                segments,
                retention,
                scaling,
                ..
            },
            Some(name),
        ) => {
            let policy = scaling.policy()?.unwrap_or_default();
            let info = admin
                .create_stream_with(
                    &name,
                    segments,
                    retention.applied_to(Retention::default()),
                    policy,
                )
                .await?;
            let n = info.segments.len() as u64;
            writeln!(out, "created stream {name} with {n} segment{}", plural(n))?;
        }
        (
            StreamCommand::Update {
                retention, scaling, ..
            },
            Some(name),
        ) => {
            let mut info = admin.describe_stream(&name).await?;
            if !retention.is_empty() {
                info = admin
                    .update_retention(&name, retention.applied_to(info.retention))
                    .await?;
            }
            if let Some(policy) = scaling.policy()? {
                info = admin.update_scaling(&name, policy).await?;
            }
            describe(&mut out, &info)?;
        }
        (StreamCommand::List { scope }, _) => {
            let mut streams = admin.list_streams(scope.as_deref()).await?;
            streams.sort_by(|a, b| a.name.cmp(&b.name));
            if streams.is_empty() {
                eprintln!("no streams");
            } else {
                write_table(&mut out, &list_rows(&streams))?;
            }
        }
        (StreamCommand::Describe { .. }, Some(name)) => {
            let info = admin.describe_stream(&name).await?;
            describe(&mut out, &info)?;
        }
        (StreamCommand::Scale { splits, merges, .. }, Some(name)) => {
            let scale = splits.iter().fold(Scale::default(), |scale, s| {
                scale.split(s.segment_id, s.pieces)
            });
            let scale = merges.into_iter().fold(scale, |scale, m| scale.merge(m.0));
            let info = admin.scale_stream(&name, &scale).await?;
            describe(&mut out, &info)?;
        }
        (StreamCommand::History { .. }, Some(name)) => {
            let info = admin.describe_stream(&name).await?;
            write_table(&mut out, &history_rows(&info))?;
        }
        (StreamCommand::Cut { head, .. }, Some(name)) => {
            let batch = client.batch();
            let cut = if head {
                batch.head_cut(&name).await?
            } else {
                batch.tail_cut(&name).await?
            };
            writeln!(out, "{cut}")?;
        }
        (StreamCommand::Seal { .. }, Some(name)) => {
            admin.seal_stream(&name).await?;
            writeln!(out, "sealed stream {name}")?;
        }
        (StreamCommand::Delete { .. }, Some(name)) => {
            admin.delete_stream(&name).await?;
            writeln!(out, "deleted stream {name}")?;
        }
        _ => bail!("internal error: stream name missing"),
    }
    out.flush()?;
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn list_rows(streams: &[StreamInfo]) -> Vec<Vec<String>> {
    let mut rows = vec![header(&["STREAM", "SEGMENTS", "BYTES", "SEALED"])];
    for s in streams {
        let bytes: u64 = s
            .segments
            .iter()
            .map(|g| g.length.saturating_sub(g.head_offset))
            .sum();
        rows.push(vec![
            s.name.to_string(),
            s.segments.len().to_string(),
            bytes.to_string(),
            yes_no(s.sealed),
        ]);
    }
    rows
}

/// `time 7d, size 100 GiB` (`none` for no limit).
fn retention_line(r: &Retention) -> String {
    let time = r.time.map_or_else(|| "none".to_string(), format_duration);
    let size = r
        .size_bytes
        .map_or_else(|| "none".to_string(), format_bytes);
    if !r.by_consumption {
        return format!("retention: time {time}, size {size}");
    }
    let min_time = r
        .min_time
        .map_or_else(|| "none".to_string(), format_duration);
    let min_size = r
        .min_size_bytes
        .map_or_else(|| "none".to_string(), format_bytes);
    format!(
        "retention: by consumption (at least time {min_time}, size {min_size}; at most time {time}, size {size})"
    )
}

/// One row per epoch: number, start, active segments.
fn history_rows(info: &StreamInfo) -> Vec<Vec<String>> {
    let mut rows = vec![header(&["EPOCH", "CREATED", "SEGMENTS"])];
    for e in &info.epochs {
        rows.push(vec![
            e.epoch.to_string(),
            format_utc(e.created),
            ids(&e.segment_ids),
        ]);
    }
    rows
}

/// `3,4,5`; `-` for none.
fn ids(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "-".to_string();
    }
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn describe(out: &mut impl Write, info: &StreamInfo) -> std::io::Result<()> {
    let n = info.segments.len() as u64;
    let active = info.active_segments().count() as u64;
    writeln!(
        out,
        "stream {}: {n} segment{} ({active} active), epoch {}, sealed: {}",
        info.name,
        plural(n),
        info.epoch,
        yes_no(info.sealed)
    )?;
    writeln!(out, "{}", retention_line(&info.retention))?;
    writeln!(out, "{}", policy_line(&info.scaling))?;
    let mut segments = info.segments.clone();
    segments.sort_by_key(|s| (s.epoch, s.number));
    // The graph columns only when a scale made one.
    let graph = segments
        .iter()
        .any(|s| !s.successors.is_empty() || !s.predecessors.is_empty());
    let mut head = vec![
        "SEGMENT",
        "NUMBER",
        "CONTAINER",
        "KEY RANGE",
        "HEAD",
        "LENGTH",
        "TIER2 LENGTH",
        "CHUNKS",
        "TAIL BUFFER",
        "LOG",
        "SEALED",
        "EPOCH",
        "EVENTS/S",
    ];
    if graph {
        head.extend(["PREDECESSORS", "SUCCESSORS"]);
    }
    let mut rows = vec![header(&head)];
    for s in &segments {
        let mut row = vec![
            s.segment_id.to_string(),
            s.number.to_string(),
            s.container.to_string(),
            format!("[{:.4}, {:.4})", s.key_low, s.key_high),
            s.head_offset.to_string(),
            s.length.to_string(),
            s.tier2_length.to_string(),
            s.chunk_count.to_string(),
            s.tail_buffer_bytes.to_string(),
            s.log_bytes.to_string(),
            yes_no(s.sealed),
            s.epoch.to_string(),
            rate_cell(s),
        ];
        if graph {
            row.extend([ids(&s.predecessors), ids(&s.successors)]);
        }
        rows.push(row);
    }
    write_table(out, &rows)
}

/// A segment's shortest-window events/s, marked when it is a hot key.
fn rate_cell(s: &aquifer_client::SegmentInfo) -> String {
    let rate = s.events_per_second.first().copied().unwrap_or(0.0);
    if s.hot_key {
        format!("{rate:.0} (hot key)")
    } else {
        format!("{rate:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_policies_parse_as_written() {
        assert_eq!(
            parse_policy("events:1000"),
            Ok(ScalingPolicy::events_per_second(1000))
        );
        assert_eq!(
            parse_policy("kib:64"),
            Ok(ScalingPolicy::kib_per_second(64))
        );
        assert_eq!(parse_policy("fixed"), Ok(ScalingPolicy::fixed()));
        assert!(parse_policy("events:0").unwrap_err().contains("above 0"));
        assert!(parse_policy("bytes:5").unwrap_err().contains("events:N"));
        assert!(parse_policy("events").unwrap_err().contains("events:N"));
        assert_eq!(
            policy_line(&ScalingPolicy::events_per_second(1000).scale_factor(4)),
            "scaling: events:1000 (events/s per segment), scale factor 4, min segments 1"
        );
    }

    #[test]
    fn scale_flags_are_checked_before_dialling() {
        assert_eq!(
            parse_split("7"),
            Ok(SplitArg {
                segment_id: 7,
                pieces: 2
            })
        );
        assert_eq!(
            parse_split("7:4"),
            Ok(SplitArg {
                segment_id: 7,
                pieces: 4
            })
        );
        assert!(parse_split("x").unwrap_err().contains("not a segment id"));
        assert!(parse_split("7:1")
            .unwrap_err()
            .contains("2 to 16 pieces, not 1"));
        assert!(parse_split("7:17").is_err());
        assert!(parse_split("7:two")
            .unwrap_err()
            .contains("number of pieces"));
        assert_eq!(parse_merge("5, 6,7"), Ok(MergeArg(vec![5, 6, 7])));
        assert!(parse_merge("5").unwrap_err().contains("at least two"));
        assert!(parse_merge("5,5").is_err());
        assert!(parse_merge("5,x")
            .unwrap_err()
            .contains("'x' is not a segment id"));
    }

    #[test]
    fn retention_reads_as_typed() {
        let r = RetentionArgs {
            retention_time: parse_duration_ms("7d").ok(),
            retention_size: parse_size_bytes("100GiB").ok(),
            ..RetentionArgs::default()
        }
        .applied_to(Retention::default());
        assert_eq!(retention_line(&r), "retention: time 7d, size 100 GiB");
        assert_eq!(
            retention_line(&Retention::default()),
            "retention: time none, size none"
        );
        // 0 removes one limit and keeps the other.
        let r = RetentionArgs {
            retention_time: Some(0),
            ..RetentionArgs::default()
        }
        .applied_to(r);
        assert_eq!(retention_line(&r), "retention: time none, size 100 GiB");
        let r = RetentionArgs {
            retention_by_consumption: Some(true),
            retention_min_time: parse_duration_ms("1h").ok(),
            ..RetentionArgs::default()
        }
        .applied_to(r);
        assert_eq!(
            retention_line(&r),
            "retention: by consumption (at least time 1h, size none; at most time none, size 100 GiB)"
        );
    }
}
