//! `aquifer write`: stdin lines to events, as text (one payload per line,
//! optionally keyed) or as the JSON lines of `event_json`.
//!
//! With `--expect-length`, one conditional append instead: the single
//! event on stdin goes to the stream's one active segment only if that
//! segment is exactly as long as expected. With `--txn`, all of stdin is one
//! transaction: committed at EOF, aborted on any error, so the exit status
//! says all or nothing.
//!
//! Owns reading stdin in bounded pieces and the summary on stderr; it must
//! never report success before every event is durable (it closes the
//! writer, which flushes, or commits the transaction, before printing the
//! summary).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use aquifer_client::{
    Client, EventWriter, KeepAlive, PendingWrite, StreamName, Transaction, WriterConfig,
};
use bytes::Bytes;
use clap::Args;
use tokio::io::AsyncBufReadExt;

use super::event_json::{self, Format};
use super::plural;

#[derive(Args, Debug)]
pub struct WriteArgs {
    /// The stream to append to, as SCOPE/STREAM.
    #[arg(value_name = "SCOPE/STREAM")]
    name: String,
    /// Routing key for every event [default: none: events are spread
    /// round-robin over the segments].
    #[arg(long, value_name = "KEY", conflicts_with_all = ["key_field_tab", "format"])]
    key: Option<String>,
    /// Take each line's routing key from the text before its first tab; the
    /// rest of the line is the payload (a line without a tab has no key).
    #[arg(long, conflicts_with = "format")]
    key_field_tab: bool,
    /// Writer id for exactly-once appends: reuse it to resume a writer
    /// without duplicates [default: random].
    #[arg(long, value_name = "ID")]
    writer_id: Option<String>,
    /// How stdin holds events: text (one payload per line) or json (one
    /// event per line, as `read --format json` prints them).
    #[arg(long, value_enum, default_value_t = Format::Text, long_help = event_json::WRITE_HELP)]
    format: Format,
    /// Append the one event on stdin only if the stream's segment is
    /// exactly BYTES long (a conditional append; the stream must have one
    /// active segment). Fails, naming the actual length, if it is not.
    #[arg(long, value_name = "BYTES")]
    expect_length: Option<u64>,
    /// With --expect-length: the event's number for its writer id: 1 for a
    /// new writer id, else one more than its last applied event; resend a
    /// failed append with the same number [default: 1].
    #[arg(long, value_name = "N", requires = "expect_length")]
    event_number: Option<i64>,
    /// Write all of stdin as one transaction: committed at EOF (every event
    /// visible at once), aborted on any error (none visible). The exit
    /// status tells which.
    #[arg(long, conflicts_with = "expect_length")]
    txn: bool,
    /// With --txn: the transaction times out this long after its last ping
    /// (it is pinged while stdin is read), e.g. 10m, 30s.
    #[arg(long, default_value = "10m", value_name = "DURATION", requires = "txn",
          value_parser = super::units::parse_duration_ms)]
    txn_timeout: u64,
}

/// Where the events go: a plain writer, or one transaction (pinged while
/// it is written).
enum Sink {
    Plain(EventWriter),
    Txn(Box<Transaction>, KeepAlive),
}

impl Sink {
    async fn write(
        &self,
        key: Option<&str>,
        payload: Bytes,
    ) -> Result<PendingWrite, aquifer_client::Error> {
        match self {
            Sink::Plain(w) => w.write_event(key, payload).await,
            Sink::Txn(t, _) => t.write(key, payload).await,
        }
    }

    /// Makes every event durable (and, for a transaction, visible); what
    /// to say of it.
    async fn finish(self) -> anyhow::Result<String> {
        match self {
            Sink::Plain(w) => {
                w.close().await?;
                Ok(String::new())
            }
            Sink::Txn(t, _alive) => {
                let id = t.id().to_string();
                let info = t
                    .commit()
                    .await
                    .with_context(|| format!("transaction {id} not committed"))?;
                Ok(format!(" in transaction {} ({})", info.id, info.state))
            }
        }
    }

    /// After an error: a transaction is aborted, so nothing of it shows.
    async fn fail(self, e: anyhow::Error) -> anyhow::Error {
        match self {
            Sink::Plain(_) => e,
            Sink::Txn(t, _alive) => {
                let id = t.id().to_string();
                match t.abort().await {
                    Ok(_) => e.context(format!("transaction {id} aborted: nothing was written")),
                    Err(abort) => e.context(format!(
                        "transaction {id} could not be aborted ({abort}); it times out unless committed"
                    )),
                }
            }
        }
    }
}

/// Bytes of stdin buffered at most (lines beyond wait for the writer).
const STDIN_BUFFER: usize = 1024 * 1024;

pub async fn run(addr: &str, args: WriteArgs) -> anyhow::Result<()> {
    let name: StreamName = args.name.parse()?;
    let client = super::connect(addr).await?;
    let mut config = WriterConfig::default();
    if let Some(id) = &args.writer_id {
        config = config.writer_id(id.as_str());
    }
    if let Some(expected) = args.expect_length {
        return write_conditional(&client, &name, &args, &config.writer_id, expected).await;
    }
    let sink = if args.txn {
        let txn = client
            .transactional_writer(&name, config.writer_id.clone())?
            .timeout(Duration::from_millis(args.txn_timeout))
            .begin()
            .await?;
        let alive = txn.keep_alive();
        Sink::Txn(Box::new(txn), alive)
    } else {
        Sink::Plain(client.writer(&name, config).await?)
    };
    let progress = progress_spinner();
    let started = Instant::now();
    let copied = copy_stdin(&args, &sink, progress.as_ref()).await;
    let finished = match copied {
        Ok(counts) => sink.finish().await.map(|said| (counts, said)),
        Err(e) => Err(sink.fail(e).await),
    };
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    let ((events, bytes), said) = finished?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let mb = bytes as f64 / 1e6;
    eprintln!(
        "wrote {events} event{}{said} ({mb:.2} MB, {:.0} events/s, {:.2} MB/s)",
        plural(events),
        events as f64 / secs,
        mb / secs
    );
    Ok(())
}

/// Writes stdin's events to `sink`; their count and payload bytes.
async fn copy_stdin(
    args: &WriteArgs,
    sink: &Sink,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<(u64, u64)> {
    let mut input = tokio::io::BufReader::with_capacity(STDIN_BUFFER, tokio::io::stdin());
    let mut line = Vec::new();
    let mut events: u64 = 0;
    let mut bytes: u64 = 0;
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .await
            .context("cannot read stdin")?;
        if n == 0 {
            return Ok((events, bytes));
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let what = || format!("line {}", events + 1);
        let (key, payload) = event(args, &line).with_context(what)?;
        // The PendingWrite is not awaited: the close or commit reports
        // failures.
        let _pending = sink
            .write(key.as_deref(), payload.clone())
            .await
            .with_context(what)?;
        events += 1;
        bytes += payload.len() as u64;
        if let Some(p) = progress {
            if events.is_multiple_of(1024) {
                p.set_position(events);
            }
        }
    }
}

/// `--expect-length`: appends the one event on stdin to the stream's one
/// active segment, only at length `expected`.
async fn write_conditional(
    client: &Client,
    name: &StreamName,
    args: &WriteArgs,
    writer_id: &str,
    expected: u64,
) -> anyhow::Result<()> {
    let mut input = tokio::io::BufReader::with_capacity(STDIN_BUFFER, tokio::io::stdin());
    let mut line = Vec::new();
    let n = input
        .read_until(b'\n', &mut line)
        .await
        .context("cannot read stdin")?;
    if n == 0 {
        anyhow::bail!("--expect-length appends one event, but stdin is empty");
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    let mut more = Vec::new();
    if input
        .read_until(b'\n', &mut more)
        .await
        .context("cannot read stdin")?
        > 0
    {
        anyhow::bail!(
            "--expect-length appends exactly one event, but stdin holds more than one line"
        );
    }
    let (key, payload) = event(args, &line).context("line 1")?;
    let info = client.admin().describe_stream(name).await?;
    let active: Vec<_> = info
        .segments
        .iter()
        .filter(|s| !s.sealed && s.successors.is_empty())
        .collect();
    let [segment] = active[..] else {
        anyhow::bail!(
            "--expect-length needs a stream with one active segment; {name} has {}",
            active.len()
        );
    };
    let number = args.event_number.unwrap_or(1);
    let appended = client
        .segment_writer(segment.segment_id, writer_id)?
        .append_conditional(number, expected, key.as_deref(), payload)
        .await?;
    let segment_id = segment.segment_id;
    if appended.duplicate {
        eprintln!(
            "event {number} of writer {writer_id} was already written at offset {} of segment {segment_id}",
            appended.offset
        );
    } else {
        eprintln!(
            "wrote 1 event at offset {} of segment {segment_id} (now {} bytes long)",
            appended.offset, appended.length
        );
    }
    Ok(())
}

/// One line's routing key and payload, as `args` say to read it.
fn event(args: &WriteArgs, line: &[u8]) -> anyhow::Result<(Option<String>, Bytes)> {
    if args.format == Format::Json {
        return event_json::decode(line);
    }
    if !args.key_field_tab {
        return Ok((args.key.clone(), Bytes::copy_from_slice(line)));
    }
    match line.iter().position(|&b| b == b'\t') {
        Some(tab) => {
            let key = std::str::from_utf8(&line[..tab])
                .map_err(|_| anyhow::anyhow!("the routing key is not valid UTF-8"))?;
            let key = Some(key.to_string()).filter(|k| !k.is_empty());
            Ok((key, Bytes::copy_from_slice(&line[tab + 1..])))
        }
        None => Ok((None, Bytes::copy_from_slice(line))),
    }
}

/// A spinner with a running count, only when stderr is a terminal.
fn progress_spinner() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {human_pos} events ({per_sec}, {elapsed})",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}
