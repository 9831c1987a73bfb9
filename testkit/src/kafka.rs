//! A small Kafka client for the tests, over the `kafka-protocol` codecs:
//! request and response frames, one connection to one broker, and a
//! transactional producer that finds its coordinator and partition leaders
//! and retries what Kafka calls retriable (the Jepsen checker's Kafka
//! writer).
//!
//! It never compresses and never pipelines: it exists to drive the Kafka
//! listener under faults, not to be a general client.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, BrokerId, EndTxnRequest,
    EndTxnResponse, FindCoordinatorRequest, FindCoordinatorResponse, InitProducerIdRequest,
    InitProducerIdResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    ProducerId, RequestHeader, ResponseHeader, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest one call waits for its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a producer step retries before it gives up.
const STEP_DEADLINE: Duration = Duration::from_secs(20);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A request with its header, length-prefixed as it goes on the wire.
pub fn request_frame<Req: Encodable>(
    key: ApiKey,
    version: i16,
    correlation: i32,
    req: &Req,
) -> Result<Vec<u8>, String> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("aquifer-tests")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, key.request_header_version(version))
        .map_err(|e| e.to_string())?;
    req.encode(&mut body, version).map_err(|e| e.to_string())?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The response in `reply` (after the length prefix), checked to answer
/// `correlation`.
pub fn response<Resp: Decodable>(
    mut reply: Bytes,
    key: ApiKey,
    version: i16,
    correlation: i32,
) -> Result<Resp, String> {
    let header = ResponseHeader::decode(&mut reply, key.response_header_version(version))
        .map_err(|e| e.to_string())?;
    if header.correlation_id != correlation {
        return Err(format!(
            "answer to {} where {correlation} was asked",
            header.correlation_id
        ));
    }
    Resp::decode(&mut reply, version).map_err(|e| e.to_string())
}

/// One connection to one broker; calls are answered in turn.
pub struct Conn {
    stream: TcpStream,
    correlation: i32,
}

impl Conn {
    pub async fn connect(addr: &str) -> Result<Conn, String> {
        let stream = tokio::time::timeout(CALL_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        Ok(Conn {
            stream,
            correlation: 0,
        })
    }

    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp, String> {
        self.correlation += 1;
        let frame = request_frame(key, version, self.correlation, req)?;
        let exchange = async {
            self.stream.write_all(&frame).await?;
            let len = self.stream.read_u32().await?;
            let mut reply = vec![0u8; len as usize];
            self.stream.read_exact(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        let reply = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{key:?} timed out"))?
            .map_err(|e| format!("{key:?}: {e}"))?;
        response(Bytes::from(reply), key, version, self.correlation)
    }
}

/// Why a producer step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaError {
    /// A Kafka error the client must not retry (fenced, bad state, ...).
    Code(i16),
    /// Retriable errors until the step's deadline.
    GaveUp(String),
}

/// Kafka codes a client retries (after fresh metadata).
fn retriable(code: i16) -> bool {
    // UNKNOWN_SERVER_ERROR, UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE,
    // NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, COORDINATOR_LOAD_IN_PROGRESS,
    // COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR, NOT_ENOUGH_REPLICAS,
    // CONCURRENT_TRANSACTIONS, KAFKA_STORAGE_ERROR.
    matches!(code, -1 | 3 | 5 | 6 | 7 | 14 | 15 | 16 | 19 | 51 | 56)
}

/// DUPLICATE_SEQUENCE_NUMBER: the batch was appended before.
const DUPLICATE_SEQUENCE: i16 = 46;

/// A producer step's retries: until an answer other than a retriable
/// code, or the deadline.
struct Retry {
    deadline: Instant,
    turn: usize,
}

impl Retry {
    fn new() -> Self {
        Retry {
            deadline: Instant::now() + STEP_DEADLINE,
            turn: 0,
        }
    }

    /// After an attempt: what the step returns, or None to try again (the
    /// coordinator and leaders forgotten, after a pause).
    async fn after(
        &mut self,
        p: &mut TxnProducer,
        what: &str,
        outcome: Result<i16, String>,
    ) -> Option<Result<(), KafkaError>> {
        let why = match outcome {
            Ok(0) => return Some(Ok(())),
            Ok(code) if !retriable(code) => return Some(Err(KafkaError::Code(code))),
            Ok(code) => format!("{what}: code {code}"),
            Err(e) => format!("{what}: {e}"),
        };
        if Instant::now() >= self.deadline {
            return Some(Err(KafkaError::GaveUp(why)));
        }
        p.coordinator = None;
        p.leaders.clear();
        self.turn += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
        None
    }
}

/// A Kafka transactional producer: `init`, then per transaction
/// `add_partitions`, `produce` and `end`. After an error, `init` again
/// (which aborts what the last epoch left open).
pub struct TxnProducer {
    bootstrap: Vec<String>,
    transactional_id: String,
    timeout_ms: i32,
    conns: HashMap<String, Conn>,
    coordinator: Option<String>,
    leaders: HashMap<(String, i32), String>,
    producer: Option<(i64, i16)>,
    sequences: HashMap<(String, i32), i32>,
}

impl TxnProducer {
    pub fn new(bootstrap: Vec<String>, transactional_id: &str, timeout_ms: i32) -> Self {
        TxnProducer {
            bootstrap,
            transactional_id: transactional_id.to_string(),
            timeout_ms,
            conns: HashMap::new(),
            coordinator: None,
            leaders: HashMap::new(),
            producer: None,
            sequences: HashMap::new(),
        }
    }

    /// Whether `init` succeeded since the last failure.
    pub fn ready(&self) -> bool {
        self.producer.is_some()
    }

    /// Forgets the producer id: the next `init` takes the next epoch.
    pub fn reset(&mut self) {
        self.producer = None;
    }

    /// Calls `addr` (connecting first); a failed call drops the
    /// connection.
    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        addr: &str,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp, String> {
        if !self.conns.contains_key(addr) {
            let conn = Conn::connect(addr).await?;
            self.conns.insert(addr.to_string(), conn);
        }
        let Some(conn) = self.conns.get_mut(addr) else {
            return Err(format!("no connection to {addr}"));
        };
        let answer = conn.call(key, version, req).await;
        if answer.is_err() {
            self.conns.remove(addr);
        }
        answer
    }

    /// Any broker that answers, starting with a different one each time.
    async fn any_broker<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
        turn: usize,
    ) -> Result<Resp, String> {
        let n = self.bootstrap.len().max(1);
        let mut last = String::from("no brokers");
        for i in 0..n {
            let addr = self.bootstrap[(turn + i) % n].clone();
            match self.call(&addr, key, version, req).await {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn coordinator(&mut self, turn: usize) -> Result<String, String> {
        if let Some(c) = &self.coordinator {
            return Ok(c.clone());
        }
        let req = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(self.transactional_id.clone()))
            .with_key_type(1);
        let r: FindCoordinatorResponse = self
            .any_broker(ApiKey::FindCoordinator, 1, &req, turn)
            .await?;
        if r.error_code != 0 {
            return Err(format!("FindCoordinator: {}", r.error_code));
        }
        let addr = format!("{}:{}", r.host, r.port);
        self.coordinator = Some(addr.clone());
        Ok(addr)
    }

    async fn leader(&mut self, topic: &str, partition: i32, turn: usize) -> Result<String, String> {
        if let Some(l) = self.leaders.get(&(topic.to_string(), partition)) {
            return Ok(l.clone());
        }
        let req =
            MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))]));
        let r: MetadataResponse = self.any_broker(ApiKey::Metadata, 4, &req, turn).await?;
        let brokers: HashMap<BrokerId, String> = r
            .brokers
            .iter()
            .map(|b| (b.node_id, format!("{}:{}", b.host, b.port)))
            .collect();
        for t in &r.topics {
            for p in &t.partitions {
                if p.error_code == 0 {
                    if let Some(addr) = brokers.get(&p.leader_id) {
                        self.leaders
                            .insert((topic.to_string(), p.partition_index), addr.clone());
                    }
                }
            }
        }
        self.leaders
            .get(&(topic.to_string(), partition))
            .cloned()
            .ok_or_else(|| format!("no leader for {topic}/{partition}"))
    }

    /// InitProducerId: this id's next epoch, fencing the last and aborting
    /// what it left open.
    pub async fn init(&mut self) -> Result<(), KafkaError> {
        self.producer = None;
        self.sequences.clear();
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_string(
                self.transactional_id.clone(),
            ))))
            .with_transaction_timeout_ms(self.timeout_ms);
        let mut retry = Retry::new();
        loop {
            let outcome = async {
                let c = self.coordinator(retry.turn).await?;
                let r: InitProducerIdResponse =
                    self.call(&c, ApiKey::InitProducerId, 1, &req).await?;
                if r.error_code == 0 {
                    self.producer = Some((r.producer_id.0, r.producer_epoch));
                }
                Ok(r.error_code)
            }
            .await;
            if let Some(done) = retry.after(self, "InitProducerId", outcome).await {
                return done;
            }
        }
    }

    fn producer(&self) -> Result<(i64, i16), KafkaError> {
        self.producer
            .ok_or_else(|| KafkaError::GaveUp("no producer id: init first".into()))
    }

    /// AddPartitionsToTxn for `partitions` of `topic`.
    pub async fn add_partitions(
        &mut self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<(), KafkaError> {
        let (pid, epoch) = self.producer()?;
        let req = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_string(
                self.transactional_id.clone(),
            )))
            .with_v3_and_below_producer_id(ProducerId(pid))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(partitions.to_vec())]);
        let mut retry = Retry::new();
        loop {
            let outcome = async {
                let c = self.coordinator(retry.turn).await?;
                let r: AddPartitionsToTxnResponse =
                    self.call(&c, ApiKey::AddPartitionsToTxn, 1, &req).await?;
                Ok(r.results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|t| &t.results_by_partition)
                    .map(|p| p.partition_error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(0))
            }
            .await;
            if let Some(done) = retry.after(self, "AddPartitionsToTxn", outcome).await {
                return done;
            }
        }
    }

    /// One transactional batch of `values` to `topic`/`partition`, resent
    /// with the same sequences until it is appended (or a duplicate).
    pub async fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        values: &[String],
    ) -> Result<(), KafkaError> {
        let (pid, epoch) = self.producer()?;
        let key = (topic.to_string(), partition);
        let base = self.sequences.get(&key).copied().unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: true,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: pid,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: base + i as i32,
                timestamp: now,
                key: None,
                value: Some(Bytes::from(v.clone())),
                headers: Default::default(),
            })
            .collect();
        let mut batch = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut batch, records.iter(), &options)
            .map_err(|e| KafkaError::GaveUp(e.to_string()))?;
        let req = ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_string(
                self.transactional_id.clone(),
            ))))
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch.freeze()))])]);
        let mut retry = Retry::new();
        loop {
            let outcome = async {
                let l = self.leader(topic, partition, retry.turn).await?;
                let r: ProduceResponse = self.call(&l, ApiKey::Produce, 7, &req).await?;
                let code = r
                    .responses
                    .iter()
                    .flat_map(|t| &t.partition_responses)
                    .map(|p| p.error_code)
                    .next()
                    .unwrap_or(-1);
                Ok(if code == DUPLICATE_SEQUENCE { 0 } else { code })
            }
            .await;
            if let Some(done) = retry.after(self, "Produce", outcome).await {
                done?;
                self.sequences.insert(key, base + values.len() as i32);
                return Ok(());
            }
        }
    }

    /// EndTxn: commit or abort.
    pub async fn end(&mut self, commit: bool) -> Result<(), KafkaError> {
        let (pid, epoch) = self.producer()?;
        let req = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                self.transactional_id.clone(),
            )))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_committed(commit);
        let mut retry = Retry::new();
        loop {
            let outcome = async {
                let c = self.coordinator(retry.turn).await?;
                let r: EndTxnResponse = self.call(&c, ApiKey::EndTxn, 1, &req).await?;
                Ok(r.error_code)
            }
            .await;
            if let Some(done) = retry.after(self, "EndTxn", outcome).await {
                return done;
            }
        }
    }
}
