//! Security against real processes: TLS on the client port, principals
//! from static tokens, JWTs and client certificates, ACLs per scope and
//! stream, key-restricted (row-level) reads, and the peer port kept apart
//! from clients (mutual TLS between nodes).

use aquifer_testkit as common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aquifer_client::{Client, Error, GroupEvent, ScanConfig};
use futures::TryStreamExt;
use protobuf::Message as _;

use common::pki::TestCa;
use common::process::ConnectAs;
use common::{stream_name, write_keyed_range, ServerOpts, ServerProcess};

const JWT_SECRET: &str = "the-shared-jwt-secret";
const ISSUER: &str = "test-issuer";

/// A node with TLS and every kind of credential on.
struct Secured {
    server: ServerProcess,
    ca: TestCa,
    dir: tempfile::TempDir,
}

fn token_line(name: &str, token: &str) -> String {
    format!("{name} {}\n", aquifer_server::hash_token(token))
}

impl Secured {
    async fn start() -> Secured {
        let ca = TestCa::new("aquifer test CA");
        let node = ca.issue("localhost");
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens");
        let text = [
            ("root", "root-token"),
            ("alice", "alice-token"),
            ("bob", "bob-token"),
        ]
        .iter()
        .map(|(n, t)| token_line(n, t))
        .collect::<String>();
        std::fs::write(&tokens, text).expect("tokens file");
        let secret = dir.path().join("jwt-secret");
        std::fs::write(&secret, format!("{JWT_SECRET}\n")).expect("secret");
        let config = format!(
            "[tier2]\nchunk_bytes = 65536\nflush_interval_ms = 100\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\
             [auth]\ntokens_file = \"{}\"\ncertificates = true\nsuperusers = [\"root\"]\n\
             [auth.jwt]\nalgorithm = \"HS256\"\nkey_file = \"{}\"\nissuer = \"{ISSUER}\"\naudience = \"aquifer\"\nleeway_secs = 0\n",
            node.cert_file.display(),
            node.key_file.display(),
            ca.ca_file.display(),
            tokens.display(),
            secret.display(),
        );
        let server = ServerProcess::start(ServerOpts {
            config: Some(config),
            connect_as: ConnectAs {
                ca_file: Some(ca.ca_file.clone()),
                token: Some("root-token".into()),
            },
            ..ServerOpts::default()
        })
        .await;
        Secured { server, ca, dir }
    }

    /// A client trusting the node's CA, with `token` (or none).
    async fn client(&self, token: Option<&str>) -> Result<Client, Error> {
        let mut b = Client::builder(&self.server.addr()).tls_ca(read(&self.ca.ca_file));
        if let Some(t) = token {
            b = b.token(t);
        }
        b.connect().await
    }

    async fn root(&self) -> Client {
        self.client(Some("root-token"))
            .await
            .expect("root connects")
    }

    /// `aquifer ARGS` as the principal of `token`.
    fn cli(&self, token: &str, args: &[&str]) -> std::process::Output {
        let file = self.dir.path().join(format!("token-{}", token.len()));
        std::fs::write(&file, token).expect("token file");
        let ca = self.ca.ca_file.display().to_string();
        let file = file.display().to_string();
        let addr = self.server.addr();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--addr", &addr, "--tls-ca", &ca, "--token-file", &file]);
        common::cli(&all, None)
    }
}

impl Secured {
    /// Waits until the audit log (read as root) holds a record matching
    /// each of `wanted` (`op`, `principal` prefix, `target`, `outcome`),
    /// and returns them all.
    async fn audited(&self, wanted: &[(&str, &str, &str, &str)]) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli("root-token", &["audit", "tail", "--lines", "0", "--json"]);
            let text = common::cli_ok(&out, "audit tail");
            let records: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let has = |(op, who, target, outcome): &(&str, &str, &str, &str)| {
                records.iter().any(|r| {
                    r["op"] == *op
                        && r["principal"].as_str().is_some_and(|p| p.starts_with(who))
                        && r["target"].as_str().is_some_and(|t| t.starts_with(target))
                        && r["outcome"] == *outcome
                })
            };
            let missing: Vec<_> = wanted.iter().filter(|w| !has(w)).collect();
            if missing.is_empty() {
                return records;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not in the audit log: {missing:?}\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn jwt(sub: &str, secret: &str, aud: &str, exp_from_now: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({
        "sub": sub, "iss": ISSUER, "aud": aud, "exp": now + exp_from_now,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn is_unauthenticated<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Unauthenticated(_)))
}

fn is_denied<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::PermissionDenied(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_good_credentials_are_unauthenticated() {
    let node = Secured::start().await;
    let root = node.root().await;
    let name = stream_name("sec/creds");
    root.admin()
        .create_stream(&name, 1)
        .await
        .expect("root creates");
    let segment = root
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe")
        .segments[0]
        .segment_id;

    let bad_tokens = [
        None,
        Some("no-such-token".to_string()),
        Some(jwt("carol", JWT_SECRET, "aquifer", -120)),
        Some(jwt("carol", "another-secret", "aquifer", 600)),
        Some(jwt("carol", JWT_SECRET, "someone-else", 600)),
    ];
    for token in &bad_tokens {
        let c = node.client(token.as_deref()).await.expect("TLS connects");
        let admin = c.admin();
        let what = format!("token {token:?}");
        assert!(
            is_unauthenticated(&admin.list_streams(None).await),
            "{what}: list"
        );
        assert!(
            is_unauthenticated(&admin.describe_stream(&name).await),
            "{what}: describe"
        );
        assert!(
            is_unauthenticated(&admin.create_stream(&stream_name("sec/other"), 1).await),
            "{what}: create"
        );
        assert!(
            is_unauthenticated(&admin.who_am_i().await),
            "{what}: whoami"
        );
        let mut reader = c.segment_reader(segment, 0, false);
        assert!(
            matches!(reader.try_next().await, Err(Error::Unauthenticated(_))),
            "{what}: read"
        );
        let w = c.segment_writer(segment, "w-unauth").expect("writer");
        let appended = w.append_conditional(1, 0, None, "x").await;
        assert!(
            is_unauthenticated(&appended),
            "{what}: append: {appended:?}"
        );
    }
    // A good JWT, a static token and a client certificate each name their
    // principal.
    let carol = node
        .client(Some(&jwt("carol", JWT_SECRET, "aquifer", 600)))
        .await
        .expect("connect");
    assert_eq!(
        carol.admin().who_am_i().await.expect("whoami").principal,
        "carol"
    );
    let alice = node.client(Some("alice-token")).await.expect("connect");
    assert_eq!(
        alice.admin().who_am_i().await.expect("whoami").principal,
        "alice"
    );
    let dave = node.ca.issue("dave");
    let by_cert = Client::builder(&node.server.addr())
        .tls_ca(read(&node.ca.ca_file))
        .tls_identity(read(&dave.cert_file), read(&dave.key_file))
        .connect()
        .await
        .expect("connect with a certificate");
    assert_eq!(
        by_cert.admin().who_am_i().await.expect("whoami").principal,
        "dave"
    );
    // Authenticated is not authorized: no grant, no listing.
    assert!(is_denied(&carol.admin().describe_stream(&name).await));
    // Every attempt is in the audit log with its outcome.
    let records = node
        .audited(&[
            ("auth", "unauthenticated@", "", "unauthenticated"),
            ("stream.create", "root", "sec/creds", "ok"),
            ("stream.describe", "carol", "sec/creds", "denied"),
        ])
        .await;
    let refused = records
        .iter()
        .filter(|r| r["outcome"] == "unauthenticated")
        .count();
    // Five bad credentials, six calls each (whoami, list, describe,
    // create, read, append; some retried).
    assert!(refused >= 5 * 6, "{refused} unauthenticated records");
    let out = node.cli("root-token", &["audit", "verify"]);
    common::cli_ok(&out, "audit verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_the_wrong_ca_or_no_tls_is_told_why() {
    let node = Secured::start().await;
    let other = TestCa::new("some other CA");
    let wrong = Client::builder(&node.server.addr())
        .tls_ca(read(&other.ca_file))
        .token("root-token")
        .connect()
        .await;
    let err = format!("{:#}", wrong.expect_err("the wrong CA must fail"));
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "a clear reason: {err}"
    );
    let plain = Client::builder(&node.server.addr())
        .token("root-token")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    match plain {
        Err(_) => {}
        Ok(c) => assert!(
            c.admin().list_streams(None).await.is_err(),
            "plaintext must not pass"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_granted_one_scope_cannot_touch_another() {
    let node = Secured::start().await;
    let root = node.root().await;
    let (a, b) = (stream_name("a/s"), stream_name("b/s"));
    root.admin().create_stream(&b, 1).await.expect("create b/s");
    for permission in ["create", "write", "read"] {
        let out = node.cli("root-token", &["acl", "grant", "alice", permission, "a"]);
        common::cli_ok(&out, "acl grant");
    }
    let listed = common::cli_ok(&node.cli("root-token", &["acl", "list"]), "acl list");
    assert!(
        listed.contains("alice") && listed.contains("a/*"),
        "{listed}"
    );
    // alice may not change the ACLs, nor list them all.
    let out = node.cli("alice-token", &["acl", "grant", "alice", "read", "b"]);
    common::cli_err(&out, "alice grants herself", &["permission denied"]);

    let alice = node.client(Some("alice-token")).await.expect("connect");
    alice
        .admin()
        .create_stream(&a, 1)
        .await
        .expect("alice creates in a");
    let writer = alice
        .writer(&a, aquifer_client::WriterConfig::default())
        .await
        .expect("alice writes a");
    write_keyed_range(&writer, 2, 0, 10, 10).await;
    let events = common::read_all(&alice, &a, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 20);

    let admin = alice.admin();
    assert!(is_denied(&admin.describe_stream(&b).await), "describe b");
    assert!(
        is_denied(&admin.create_stream(&stream_name("b/t"), 1).await),
        "create in b"
    );
    assert!(is_denied(&admin.list_streams(Some("b")).await), "list b");
    assert!(
        is_denied(&admin.delete_stream(&a).await),
        "delete needs delete"
    );
    let all = admin.list_streams(None).await.expect("list all");
    assert_eq!(
        all.iter().map(|s| s.name.to_string()).collect::<Vec<_>>(),
        vec!["a/s"]
    );
    let b_segment = root
        .admin()
        .describe_stream(&b)
        .await
        .expect("describe")
        .segments[0]
        .segment_id;
    let mut reader = alice.segment_reader(b_segment, 0, false);
    assert!(
        matches!(reader.try_next().await, Err(Error::PermissionDenied(_))),
        "read b"
    );
    let w = alice.segment_writer(b_segment, "alice-b").expect("writer");
    let appended = w.append_conditional(1, 0, None, "x").await;
    assert!(is_denied(&appended), "write b: {appended:?}");
    assert!(
        alice
            .writer(&b, aquifer_client::WriterConfig::default())
            .await
            .is_err(),
        "a writer of b"
    );
    // Revoked, gone.
    common::cli_ok(
        &node.cli("root-token", &["acl", "revoke", "alice", "read", "a"]),
        "revoke",
    );
    assert!(is_denied(&admin.describe_stream(&a).await), "read revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_restricted_reader_never_sees_another_keys_event() {
    const KEYS: u64 = 12; // k0..k11: the prefix k1 matches k1, k10 and k11
    const SEQS: u64 = 8_334; // 100,008 events
    let node = Secured::start().await;
    let root = node.root().await;
    let name = stream_name("analytics/clicks");
    let writer = common::stream_with_writer(&root, &name, 3).await;
    write_keyed_range(&writer, KEYS, 0, SEQS, 0).await;
    common::wait_all_in_tier2(&root, &name, Duration::from_secs(60)).await;
    let out = node.cli(
        "root-token",
        &[
            "acl",
            "grant",
            "bob",
            "read",
            "analytics/clicks",
            "--keys",
            "k1",
        ],
    );
    common::cli_ok(&out, "grant with keys");
    let bob = node.client(Some("bob-token")).await.expect("connect");
    let allowed = |key: &str| key.starts_with("k1");
    let check = |events: &[aquifer_client::Event], how: &str| {
        let mut per_key: HashMap<String, u64> = HashMap::new();
        for e in events {
            let key = e.routing_key.clone().unwrap_or_default();
            assert!(allowed(&key), "{how}: bob saw key {key}");
            *per_key.entry(key).or_default() += 1;
        }
        assert_eq!(per_key.len(), 3, "{how}: {per_key:?}");
        assert!(per_key.values().all(|&n| n == SEQS), "{how}: {per_key:?}");
    };
    // A tailing-style read of the whole stream.
    let events = common::read_all(&bob, &name, Duration::from_secs(60)).await;
    check(&events, "read");
    for pair in events.windows(2) {
        if pair[0].position.segment_id == pair[1].position.segment_id {
            assert!(
                pair[0].next_offset <= pair[1].position.offset,
                "offsets keep their order"
            );
        }
    }
    // A brokered scan.
    let batch = bob.batch();
    let from = batch.head_cut(&name).await.expect("head");
    let to = batch.tail_cut(&name).await.expect("tail");
    let ranges = batch
        .segment_ranges(&name, &from, &to)
        .await
        .expect("ranges");
    let mut scanned = Vec::new();
    for r in &ranges {
        let mut reader = batch.read_range(r, &ScanConfig::default().direct(false));
        while let Some(e) = reader.try_next().await.expect("brokered scan") {
            scanned.push(e);
        }
    }
    check(&scanned, "brokered scan");
    // A direct scan would bypass the filter: refused, with the reason.
    let mut direct = batch.read_range(&ranges[0], &ScanConfig::default().direct(true));
    match direct.try_next().await {
        Err(Error::PermissionDenied(why)) => assert!(why.contains("direct"), "{why}"),
        other => panic!("a direct scan must be refused: {other:?}"),
    }
    // A group read.
    let g = bob.reader_group("analytics", "bobs");
    g.create(
        std::slice::from_ref(&name),
        &aquifer_client::ReaderGroupConfig::default(),
    )
    .await
    .expect("create group");
    let mut reader = g.reader("r1").await.expect("join");
    let mut grouped = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while grouped.len() < (3 * SEQS) as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "group read got {}",
            grouped.len()
        );
        let next = tokio::time::timeout(Duration::from_millis(500), reader.try_next()).await;
        if let Ok(next) = next {
            if let Some(GroupEvent::Event(e)) = next.expect("group read") {
                grouped.push(e);
            }
        }
    }
    // Nothing more comes (no other key leaks in after the allowed ones).
    let more = tokio::time::timeout(Duration::from_secs(1), reader.try_next()).await;
    assert!(
        !matches!(more, Ok(Ok(Some(GroupEvent::Event(_))))),
        "no event past the allowed ones"
    );
    check(&grouped, "group read");
    node.audited(&[
        ("read.open", "bob", "analytics/clicks", "ok"),
        ("scan.locate", "bob", "analytics/clicks", "denied"),
        ("group.create", "bob", "analytics/clicks", "ok"),
        ("group.join", "bob", "analytics/clicks", "ok"),
    ])
    .await;
}

/// A raft message as a peer would send it: a vote request for a term far
/// ahead, which would depose every leader if it were taken.
fn forged_vote() -> Vec<u8> {
    let mut m = raft::prelude::Message::default();
    m.set_msg_type(raft::prelude::MessageType::MsgRequestVote);
    m.from = 2;
    m.to = 1;
    m.term = 1_000_000;
    m.write_to_bytes().expect("encode")
}

fn batch(message: Vec<u8>) -> aquifer_proto::v1::RaftBatch {
    aquifer_proto::v1::RaftBatch {
        from: 2,
        messages: vec![aquifer_proto::v1::RaftEnvelope {
            group: "meta".into(),
            message: message.into(),
        }],
    }
}

fn plain(addr: &str) -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_takes_only_the_clusters_nodes() {
    use aquifer_proto::v1::raft_transport_client::RaftTransportClient;
    let cluster = common::TestCluster::start(3, "", "").await;
    let client = Client::connect(&cluster.nodes[0].addr())
        .await
        .expect("connect");
    let name = stream_name("peer/s");
    let writer = common::stream_with_writer(&client, &name, 2).await;
    write_keyed_range(&writer, 2, 0, 20, 10).await;
    let terms = || async {
        cluster.statuses().await[0]
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.term))
            .collect::<Vec<(String, u64)>>()
    };
    // Settled first: a group still electing its first leader moves its
    // term on its own (every group led, the terms unchanged over a second).
    common::wait_for(
        "every group led at a steady term",
        Duration::from_secs(30),
        || async {
            let led = cluster.statuses().await[0]
                .groups
                .iter()
                .all(|g| g.leader_id != 0);
            let before = terms().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            led && before == terms().await
        },
    )
    .await;
    let terms_before = terms().await;

    // Raft on the client port: not served there at all.
    let channel = plain(&cluster.nodes[0].addr())
        .connect()
        .await
        .expect("dial");
    let refused = RaftTransportClient::new(channel)
        .send(batch(forged_vote()))
        .await;
    assert_eq!(
        refused.expect_err("raft on the client port").code(),
        tonic::Code::Unimplemented
    );

    // The peer port without the cluster's certificate: no TLS, a
    // certificate of another CA, or none at all: the connection fails
    // before any request is decoded.
    let peer = format!("127.0.0.1:{}", cluster.peer_ports[0]);
    let plaintext = match plain(&peer).connect().await {
        Ok(ch) => RaftTransportClient::new(ch)
            .send(batch(forged_vote()))
            .await
            .err(),
        Err(_) => None,
    };
    assert!(
        plaintext.is_none_or(|s| s.code() != tonic::Code::Ok),
        "plaintext to the peer port"
    );
    let stranger_ca = TestCa::new("not the cluster CA");
    let stranger = stranger_ca.issue("node-2");
    let foreign = cluster.peer_endpoint(1, &stranger);
    if let Ok(ch) = foreign.connect().await {
        let sent = RaftTransportClient::new(ch)
            .send(batch(forged_vote()))
            .await;
        assert!(
            sent.is_err(),
            "a foreign certificate must not get a raft message in"
        );
    }
    let no_cert = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(read(&cluster.ca.ca_file)),
    );
    let anonymous = tonic::transport::Endpoint::from_shared(format!("https://{peer}"))
        .expect("endpoint")
        .tls_config(no_cert)
        .expect("tls")
        .connect_timeout(Duration::from_secs(1));
    if let Ok(ch) = anonymous.connect().await {
        let mut cluster_client = aquifer_proto::v1::cluster_client::ClusterClient::new(ch);
        let status = cluster_client
            .status(aquifer_proto::v1::ClusterStatusRequest {})
            .await;
        assert!(status.is_err(), "no client certificate, no peer port");
    }

    // Nothing changed: the same terms, and the stream still serves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let terms_after = terms().await;
    assert_eq!(terms_before, terms_after, "no forged vote got through");
    assert!(terms_after.iter().all(|(_, t)| *t < 1_000_000));
    write_keyed_range(&writer, 2, 20, 30, 10).await;
    let events = common::read_all(&client, &name, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 60);
}
