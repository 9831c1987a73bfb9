//! `aquifer read`: a stream's events to stdout, as raw lines or as the JSON
//! lines of `event_json`, optionally following the stream.
//!
//! Owns the read flags and flushing: output is buffered, and flushed
//! whenever the reader would wait, so a tailing read shows events at once.
//! It must never print part of an event.

use std::io::Write;

use aquifer_client::{Event, ReaderConfig, StartFrom, StreamCut, StreamName};
use clap::{Args, ValueEnum};
use futures::{FutureExt, TryStreamExt};

use super::event_json::{self, Format};

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum From {
    /// The first readable event of each segment.
    Head,
    /// The current end of each segment: only newer events.
    Tail,
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    /// The stream to read, as SCOPE/STREAM (not with --group).
    #[arg(value_name = "SCOPE/STREAM", required_unless_present = "group")]
    name: Option<String>,
    /// Where to start in each segment.
    #[arg(long, value_enum, default_value_t = From::Head, conflicts_with = "from_cut")]
    pub from: From,
    /// Start at this stream cut (a token from `stream cut` or a group
    /// checkpoint); segments after it are read once their predecessors are.
    #[arg(long, value_name = "CUT")]
    from_cut: Option<String>,
    /// Read as reader READER of reader group SCOPE/GROUP (see `group
    /// create`): only the segments the group gives this reader, with
    /// positions reported to the group. A group read always follows
    /// (--follow is implied) until stopped (Ctrl-C or SIGTERM leave the
    /// group cleanly) or --max.
    #[arg(long, value_name = "SCOPE/GROUP", requires = "reader", conflicts_with_all = ["name", "from", "from_cut"])]
    group: Option<String>,
    /// This reader's id in the group (with --group).
    #[arg(long, value_name = "READER")]
    reader: Option<String>,
    /// Keep waiting for new events (until every segment is sealed and read)
    /// instead of stopping at the current end.
    #[arg(long)]
    pub follow: bool,
    /// Stop after N events [default: no limit].
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
    /// Print "KEY<TAB>PAYLOAD" (empty KEY for events without one).
    #[arg(long, conflicts_with = "format")]
    with_key: bool,
    /// How to print events: text (the raw payload per line) or json (one
    /// object per line with key, segment, offset and the payload).
    #[arg(long, value_enum, default_value_t = Format::Text, long_help = event_json::READ_HELP)]
    format: Format,
}

impl ReadArgs {
    /// How events are printed.
    pub fn format(&self) -> Format {
        self.format
    }
}

pub async fn run(addr: &str, args: ReadArgs) -> anyhow::Result<()> {
    if let Some(group) = &args.group {
        let reader = args.reader.as_deref().unwrap_or_default();
        return super::group::read(addr, group, reader, &args).await;
    }
    let name: StreamName = args.name.as_deref().unwrap_or_default().parse()?;
    let from_cut = args.from_cut.as_deref().map(StreamCut::parse).transpose()?;
    let client = super::connect(addr).await?;
    let start = match (from_cut, args.from) {
        (Some(cut), _) => StartFrom::Positions(cut.positions),
        (None, From::Head) => StartFrom::Head,
        (None, From::Tail) => StartFrom::Tail,
    };
    let config = ReaderConfig::default().start(start).follow(args.follow);
    let mut reader = client.reader(&name, config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut count: u64 = 0;
    while args.max.is_none_or(|max| count < max) {
        // Flush before waiting, so a tailing reader shows events promptly.
        let next = match reader.try_next().now_or_never() {
            Some(next) => next,
            None => {
                out.flush()?;
                reader.try_next().await
            }
        };
        let Some(event) = next? else { break };
        print(&mut out, &args, &event)?;
        count += 1;
    }
    out.flush()?;
    Ok(())
}

pub(super) fn print(out: &mut impl Write, args: &ReadArgs, event: &Event) -> std::io::Result<()> {
    if args.format == Format::Json {
        let line = event_json::encode(
            event.routing_key.as_deref(),
            event.position.segment_id,
            event.position.offset,
            &event.payload,
        );
        out.write_all(line.as_bytes())?;
        return out.write_all(b"\n");
    }
    if args.with_key {
        if let Some(key) = &event.routing_key {
            out.write_all(key.as_bytes())?;
        }
        out.write_all(b"\t")?;
    }
    out.write_all(&event.payload)?;
    out.write_all(b"\n")
}
