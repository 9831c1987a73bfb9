//! Operators' view: after some writes and reads the `/metrics` endpoint has
//! the key series with sane values, the gRPC health service answers
//! SERVING, and reflection lists the services.

use aquifer_testkit as common;

use std::time::Duration;

use common::metrics::{samples, scrape};

use common::{free_port, read_all, stream_name, write_keyed_range, ServerOpts, ServerProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_reflection() {
    let port = free_port();
    let config = format!(
        "metrics_listen = \"127.0.0.1:{port}\"\n[tier2]\nchunk_bytes = 65536\nflush_interval_ms = 100\n"
    );
    let server = ServerProcess::start(ServerOpts::with_config(&config)).await;
    let client = server.client().await;
    let name = stream_name("ops/metered");
    let writer = common::stream_with_writer(&client, &name, 2).await;
    write_keyed_range(&writer, 8, 0, 250, 200).await; // 2,000 events
    common::wait_all_in_tier2(&client, &name, Duration::from_secs(30)).await;
    assert_eq!(
        read_all(&client, &name, Duration::from_secs(30))
            .await
            .len(),
        2000
    );

    let s = samples(&scrape(port).await);
    let get = |key: &str| {
        *s.get(key)
            .unwrap_or_else(|| panic!("series {key} missing; have {:?}", s.keys()))
    };
    assert_eq!(
        get("aquifer_append_events_total{stream=\"ops/metered\"}"),
        2000.0
    );
    assert!(get("aquifer_append_bytes_total{stream=\"ops/metered\"}") > 2000.0 * 200.0);
    assert!(get("aquifer_append_ack_seconds_count") >= 1.0);
    assert!(get("aquifer_append_ack_seconds_sum") > 0.0);
    assert!(get("aquifer_log_write_seconds_count") >= 1.0);
    assert!(get("aquifer_log_write_entries_sum") >= get("aquifer_log_write_entries_count"));
    for group in ["meta", "container-0"] {
        assert!(get(&format!("aquifer_raft_term{{group=\"{group}\"}}")) >= 1.0);
        assert_eq!(
            get(&format!("aquifer_raft_leader{{group=\"{group}\"}}")),
            1.0
        );
        let commit = get(&format!("aquifer_raft_commit_index{{group=\"{group}\"}}"));
        let applied = get(&format!("aquifer_raft_applied_index{{group=\"{group}\"}}"));
        assert!(
            commit >= 1.0 && applied <= commit,
            "{group}: {applied} / {commit}"
        );
    }
    assert!(get("aquifer_tier2_puts_total") >= 1.0);
    assert!(get("aquifer_tier2_put_bytes_total") >= 2000.0 * 200.0);
    assert_eq!(get("aquifer_tier2_put_errors_total"), 0.0);
    // All flushed but the audit log's newest records (its own calls here).
    assert!(
        get("aquifer_tail_buffer_bytes") < 16384.0,
        "all flushed: {}",
        get("aquifer_tail_buffer_bytes")
    );
    // Everything was flushed before the read, so it came from tier-2 and
    // filled the cache.
    assert!(get("aquifer_read_bytes_total{tier=\"tier2\"}") >= 2000.0 * 200.0);
    assert!(get("aquifer_cache_misses_total") >= 1.0);
    assert!(get("aquifer_cache_bytes") > 0.0);
    assert!(get("aquifer_connections") >= 1.0);
    assert!(s.contains_key("aquifer_backpressure_seconds_total"));
    // The audit log stored the admin calls above and dropped none.
    assert!(get("aquifer_audit_records_written_total") >= 1.0);
    assert_eq!(get("aquifer_audit_records_dropped_total"), 0.0);

    // Health: SERVING overall and per service.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "aquifer.v1.Append"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }

    // Reflection lists Aquifer's services.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "aquifer.v1.StreamAdmin",
        "aquifer.v1.Append",
        "aquifer.v1.Read",
        "aquifer.v1.Segments",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
}

/// Many short-lived writers: each writer id stays in the dedup table
/// (`aquifer_writer_ids`) until it has been idle for `writer_id_expiry_ms`,
/// then goes, so the table does not grow with every writer ever seen; a
/// writer that opens again under a forgotten id starts afresh and its event
/// is kept, not taken for a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_writer_ids_expire_so_the_dedup_table_stays_bounded() {
    let port = free_port();
    let config = format!(
        "metrics_listen = \"127.0.0.1:{port}\"\nwriter_id_expiry_ms = 5000\n[scaling]\ntick_ms = 200\n"
    );
    let server = ServerProcess::start(ServerOpts::with_config(&config)).await;
    let client = server.client().await;
    let name = stream_name("ops/many-writers");
    client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    const WRITERS: usize = 50;
    for w in 0..WRITERS {
        let writer = client
            .writer(
                &name,
                aquifer_client::WriterConfig::default().writer_id(format!("short-lived-{w}")),
            )
            .await
            .expect("writer");
        writer
            .write_event(Some("k"), format!("event of {w}").into_bytes())
            .await
            .expect("queue")
            .await
            .expect("ack");
        writer.close().await.expect("close");
    }
    // Every node-wide writer id, over the containers this node leads (the
    // audit log's own writer among them).
    let writer_ids = || async move {
        samples(&scrape(port).await)
            .iter()
            .filter(|(k, _)| k.starts_with("aquifer_writer_ids{"))
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    common::wait_for(
        "the writers in the table",
        Duration::from_secs(4),
        || async { writer_ids().await >= WRITERS as f64 },
    )
    .await;
    common::wait_for(
        "idle writer ids to expire",
        Duration::from_secs(30),
        || async { writer_ids().await <= 2.0 },
    )
    .await;
    // A forgotten id opens again: it starts at event number 1 as a new
    // writer, and its event is appended.
    let again = client
        .writer(
            &name,
            aquifer_client::WriterConfig::default().writer_id("short-lived-0"),
        )
        .await
        .expect("writer");
    let ack = again
        .write_event(Some("k"), b"back after expiry".to_vec())
        .await
        .expect("queue")
        .await
        .expect("ack");
    assert!(ack.offset.is_some(), "appended, not taken for a duplicate");
    let events = read_all(&client, &name, Duration::from_secs(30)).await;
    assert_eq!(events.len(), WRITERS + 1);
}
