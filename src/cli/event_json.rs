//! The JSON line format of `read --format json` and `write --format json`:
//! one event per line, so any payload (binary, multi-line) survives a shell
//! pipeline, as with kcat's `-J`.
//!
//! ```text
//! {"key":"user-42","segment":7,"offset":1024,"payload":"clicked"}
//! {"key":null,"segment":8,"offset":0,"payload_base64":"AAEC/w=="}
//! ```
//!
//! - `key`: the routing key, or `null` for none;
//! - `segment`, `offset`: where the event was read (ignored by `write`);
//! - exactly one of `payload` (the payload, when it is valid UTF-8) or
//!   `payload_base64` (standard base64 with padding, otherwise).
//!
//! Owns the format and nothing else: it must never lose or alter a byte
//! (what `write` reads back is what `read` printed, exactly).

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How `read` prints and `write` takes events.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// The raw payload, one event per line (a payload holding a newline
    /// comes back as two events).
    #[default]
    Text,
    /// One JSON object per line; any payload round-trips.
    Json,
}

/// The format in words, for `--help` (a macro so `concat!` can build each
/// command's text from it).
macro_rules! scheme {
    () => {
        "json: one JSON object per line, {\"key\": KEY or null, \"segment\": N, \"offset\": N, \"payload\": TEXT} when the payload is valid UTF-8, or with \"payload_base64\": BASE64 (standard alphabet, padded) in place of \"payload\" when it is not. Binary and multi-line payloads survive a pipe from `aquifer read --format json` into `aquifer write --format json` byte for byte."
    };
}

/// `read --format`'s long help.
pub const READ_HELP: &str = concat!(
    "How to print events.\n\ntext: the raw payload and a newline (a payload holding a newline reads back as two lines).\n\n",
    scheme!()
);

/// `write --format`'s long help.
pub const WRITE_HELP: &str = concat!(
    "How stdin holds events.\n\ntext: one payload per line (a line is one event, without its newline).\n\n",
    scheme!(),
    " On the way in, segment and offset may be left out and are ignored (the stream routes each event by its key); --key and --key-field-tab do not apply."
);

/// One event as printed.
#[derive(Serialize)]
struct Out<'a> {
    key: Option<&'a str>,
    segment: u64,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

/// One event as read back; `segment` and `offset` are accepted and ignored
/// (a write goes where the stream routes it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In {
    #[serde(default)]
    key: Option<String>,
    #[serde(default, rename = "segment")]
    _segment: Option<u64>,
    #[serde(default, rename = "offset")]
    _offset: Option<u64>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
}

/// One event's line, without the newline.
pub fn encode(key: Option<&str>, segment: u64, offset: u64, payload: &[u8]) -> String {
    let text = std::str::from_utf8(payload).ok();
    let line = Out {
        key,
        segment,
        offset,
        payload: text,
        payload_base64: text.is_none().then(|| BASE64.encode(payload)),
    };
    // A struct of strings and integers always serializes.
    serde_json::to_string(&line).unwrap_or_default()
}

/// The routing key and payload of one line (without its newline).
pub fn decode(line: &[u8]) -> anyhow::Result<(Option<String>, Bytes)> {
    let event: In = serde_json::from_slice(line).context("not an event as JSON")?;
    let payload = match (event.payload, event.payload_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => Bytes::from(
            BASE64
                .decode(b64.as_bytes())
                .context("payload_base64 is not valid base64")?,
        ),
        (Some(_), Some(_)) => bail!("give either payload or payload_base64, not both"),
        (None, None) => bail!("no payload (give payload or payload_base64)"),
    };
    Ok((event.key, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_round_trip() {
        let text = encode(Some("k"), 3, 10, b"line one\nline \"two\"");
        assert_eq!(
            text,
            r#"{"key":"k","segment":3,"offset":10,"payload":"line one\nline \"two\""}"#
        );
        let binary = [0u8, 1, 2, 0xff, b'\n'];
        let line = encode(None, 1, 0, &binary);
        assert_eq!(
            line,
            r#"{"key":null,"segment":1,"offset":0,"payload_base64":"AAEC/wo="}"#
        );
        assert!(!line.contains('\n'));
        for (line, key, payload) in [
            (text, Some("k"), &b"line one\nline \"two\""[..]),
            (line, None, &binary[..]),
        ] {
            let (k, p) = decode(line.as_bytes()).unwrap();
            assert_eq!(k.as_deref(), key);
            assert_eq!(&p[..], payload);
        }
        // Position fields are optional on the way in.
        let (k, p) = decode(br#"{"payload":""}"#).unwrap();
        assert_eq!((k, &p[..]), (None, &b""[..]));
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, why) in [
            (&br#"{"key":"k"}"#[..], "no payload"),
            (br#"{"payload":"a","payload_base64":"YQ=="}"#, "not both"),
            (br#"{"payload_base64":"***"}"#, "base64"),
            (br#"{"payload":"a","color":"red"}"#, "JSON"),
            (b"plain text", "JSON"),
        ] {
            let err = format!("{:#}", decode(line).unwrap_err());
            assert!(err.contains(why), "{err}");
        }
    }
}
