//! The audit log against the real binary: admin calls show in `audit tail`
//! with their outcome, the chain survives `kill -9` and a restart, and one
//! record altered in tier-2 makes `audit verify` fail naming it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aquifer_testkit as common;
use bytes::BytesMut;

use common::{cli_err, cli_ok, wait_for, ServerOpts, ServerProcess};

/// Audit records reach tier-2 a moment after they are stored.
const CONFIG: &str = "[tier2]\nflush_interval_ms = 100\n";

/// `audit tail` lines, every record.
fn tail(server: &ServerProcess) -> String {
    cli_ok(
        &server.cli(&["audit", "tail", "--lines", "0"], None),
        "audit tail",
    )
}

/// Waits until `audit tail` shows a line holding every one of `parts`.
async fn wait_for_line(server: &ServerProcess, parts: &[&str]) {
    wait_for(
        &format!("audit tail shows {parts:?}"),
        Duration::from_secs(30),
        || {
            let out = tail(server);
            async move { out.lines().any(|l| parts.iter().all(|p| l.contains(p))) }
        },
    )
    .await;
}

/// Every chunk object under `dir`.
fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            files.extend(chunk_files(&path));
        } else if path.extension().is_some_and(|x| x == "chunk") {
            files.push(path);
        }
    }
    files
}

/// The chunk file holding `needle`, and where.
fn find_in_tier2(tier2: &Path, needle: &[u8]) -> Option<(PathBuf, usize)> {
    chunk_files(tier2).into_iter().find_map(|f| {
        let bytes = std::fs::read(&f).ok()?;
        let at = bytes.windows(needle.len()).position(|w| w == needle)?;
        Some((f, at))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_are_audited_and_an_altered_record_in_tier2_fails_verify() {
    let mut server = ServerProcess::start(ServerOpts::with_config(CONFIG)).await;
    cli_ok(
        &server.cli(
            &["stream", "create", "audited/one", "--segments", "1"],
            None,
        ),
        "create",
    );
    cli_err(
        &server.cli(&["stream", "create", "audited/one"], None),
        "create again",
        &["exists"],
    );
    cli_err(
        &server.cli(&["stream", "describe", "audited/missing"], None),
        "describe a missing stream",
        &["not found"],
    );
    cli_ok(
        &server.cli(&["stream", "seal", "audited/one"], None),
        "seal",
    );

    // Each call, with its outcome.
    wait_for_line(&server, &["stream.seal", "audited/one", "ok"]).await;
    let out = tail(&server);
    for parts in [
        &["anonymous", "stream.create", "audited/one", "  ok"][..],
        &["stream.create", "audited/one", "failed (AlreadyExists"],
        &["stream.describe", "audited/missing", "failed (NotFound"],
        &["stream.seal", "audited/one", "  ok"],
    ] {
        assert!(
            out.lines().any(|l| parts.iter().all(|p| l.contains(p))),
            "no line with {parts:?} in:\n{out}"
        );
    }
    let json = cli_ok(
        &server.cli(&["audit", "tail", "--json", "--lines", "0"], None),
        "audit tail --json",
    );
    let seal: serde_json::Value = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON record a line"))
        .find(|r| r["op"] == "stream.seal")
        .expect("the seal's record");
    assert_eq!(seal["outcome"], "ok");
    assert_eq!(seal["node"], 1);
    assert_eq!(seal["v"], 1);
    let seal_seq = seal["seq"].as_u64().expect("a sequence number");
    let out = cli_ok(&server.cli(&["audit", "verify"], None), "verify");
    assert!(out.starts_with("OK: "), "{out}");

    // kill -9 and a restart: the chain goes on from the last stored record.
    server.kill9();
    server.restart().await;
    cli_ok(&server.cli(&["stream", "list"], None), "list");
    wait_for_line(&server, &["stream.list", "ok"]).await;
    let out = cli_ok(
        &server.cli(&["audit", "verify"], None),
        "verify after a restart",
    );
    assert!(out.starts_with("OK: "), "{out}");

    // Alter one byte of the seal's record in its tier-2 chunk, keeping the
    // event framing valid (a fresh CRC), so only the chain can tell.
    let tier2 = server.data_dir().join("tier2").join("chunks");
    let needle = br#""op":"stream.seal","target":"audited/one""#;
    wait_for(
        "the seal's record in tier-2",
        Duration::from_secs(30),
        || {
            let found = find_in_tier2(&tier2, needle).is_some();
            async move { found }
        },
    )
    .await;
    server.stop();
    let (file, at) = find_in_tier2(&tier2, needle).expect("still there");
    let mut bytes = std::fs::read(&file).expect("read the chunk");
    let start = bytes[..at]
        .windows(6)
        .rposition(|w| w == br#"{"v":1"#)
        .expect("the record's start");
    let end = start
        + bytes[start..]
            .iter()
            .position(|&b| b == b'}')
            .expect("its end")
        + 1;
    // Framing: u32 body length | u32 crc | u16 key length (0) | payload.
    let frame = start - 10;
    let body_len = u32::from_le_bytes(bytes[frame..frame + 4].try_into().unwrap()) as usize;
    assert_eq!(body_len, 2 + end - start, "the record is one whole event");
    let mut payload = bytes[start..end].to_vec();
    let target = at - start + needle.len() - 4; // the "o" of "one"
    payload[target] = b'x';
    let mut framed = BytesMut::new();
    aquifer_proto::frame::encode_event(&mut framed, None, &payload);
    assert_eq!(framed.len(), end - frame);
    bytes[frame..end].copy_from_slice(&framed);
    std::fs::write(&file, &bytes).expect("write the altered chunk");

    // Restarted, so no cache holds the old bytes.
    server.restart().await;
    let out = server.cli(&["audit", "verify"], None);
    let line = cli_err(
        &out,
        "verify of an altered log",
        &[
            "_system/audit-1",
            &format!("sequence number {seal_seq} "),
            "hash mismatch",
        ],
    );
    assert!(line.contains("altered"), "{line}");
    // The altered record reads as the attacker left it.
    let out = tail(&server);
    assert!(out.contains("audited/xne"), "{out}");
}
