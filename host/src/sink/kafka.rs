//! The `kafka` sink (Spark's `format("kafka")`): each output row becomes a record from its
//! `value` column and the optional `key`, `topic`, `partition` and `headers` columns.
//!
//! Delivery is at-least-once by default (an idempotent producer; a batch counts as written once
//! every record is acknowledged). With `deliveryGuarantee = "exactly_once"` each batch is one
//! Kafka transaction under a transactional id derived from the query id, so a restarted query
//! fences the old producer. The transaction also commits `batch id + 1` as the offset of a
//! marker consumer group (named after the transactional id) on partition 0 of the batch's first
//! topic, atomically with the records. After a crash between the Kafka commit and the
//! checkpoint's `commits/N`, the rerun of batch N finds that marker and skips the batch, so
//! `read_committed` consumers see every batch exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::{Array, BinaryArray, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, SchemaRef};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset as KOffset, TopicPartitionList};

use super::{OutputMode, Sink};
use crate::error::{Error, Result};
use crate::kafka::{blocking, client_config, create, create_with};
use crate::options::Options;

const C: &str = "kafka sink";

const OPTIONS: &[&str] = &["kafka.*", "topic", "deliveryGuarantee"];

/// Counts the records handed to librdkafka and the delivery reports that came back, and keeps
/// the first delivery failure. Reports arrive on the producer's polling thread
/// ([`ThreadedProducer`]), which wakes whoever waits in [`await_acks`].
#[derive(Default)]
struct Delivery {
    failed: Mutex<Option<String>>,
    /// Records accepted by `send` so far.
    sent: AtomicU64,
    /// Delivery reports so far (acknowledged or failed).
    reported: Mutex<u64>,
    report: Condvar,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            use rdkafka::message::Message;
            if let Ok(mut f) = self.failed.lock() {
                f.get_or_insert_with(|| format!("delivery to {}-{} failed: {e}", m.topic(), m.partition()));
            }
        }
        if let Ok(mut n) = self.reported.lock() {
            *n += 1;
        }
        self.report.notify_all();
    }
}

/// A producer with its own polling thread: delivery reports are served as they arrive, so
/// waiting for them blocks instead of polling (rust-rdkafka's `poll` rounds timeouts below a
/// millisecond down to zero and spins until its deadline).
type Prod = ThreadedProducer<Delivery>;

struct Transactional {
    /// The marker consumer group (also the transactional id).
    group: String,
    consumer: Arc<BaseConsumer>,
    /// The batch this run re-executes first after a crash, if any (its transaction may
    /// already be committed in Kafka).
    rerun: Option<u64>,
    /// Whether the first non-empty batch of this run was checked against the marker.
    checked: bool,
    /// Continuous trigger: the epoch whose transaction is open, and its marker's topic.
    open: Option<(u64, String)>,
}

pub(crate) struct KafkaSink {
    servers: String,
    topic: Option<String>,
    exactly_once: bool,
    options: Options,
    config: ClientConfig,
    producer: Option<Arc<Prod>>,
    txn: Option<Transactional>,
    timeout: Duration,
    /// The crash-test pause before a transaction commits (`SLUICE_TEST_PAUSE_MS`).
    pause: Option<Duration>,
}

/// The columns of one output batch, cast to the types records are made from.
struct Columns {
    value: BinaryArray,
    key: Option<BinaryArray>,
    topic: Option<StringArray>,
    partition: Option<Int32Array>,
    headers: Option<arrow_array::ListArray>,
}

fn bytes_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    )
}

fn headers_type_ok(t: &DataType) -> bool {
    let DataType::List(f) = t else { return false };
    let DataType::Struct(fs) = f.data_type() else { return false };
    fs.len() == 2
        && fs[0].name() == "key"
        && matches!(fs[0].data_type(), DataType::Utf8)
        && fs[1].name() == "value"
        && matches!(fs[1].data_type(), DataType::Binary)
}

impl Columns {
    fn of(batch: &RecordBatch) -> Result<Self> {
        // Casts fail on values that do not fit (a partition beyond Int32) instead of nulling them.
        let strict = arrow_cast::CastOptions { safe: false, ..Default::default() };
        let col = |name: &str, to: &DataType| -> Result<Option<Arc<dyn Array>>> {
            match batch.schema().index_of(name) {
                Ok(i) => Ok(Some(arrow_cast::cast_with_options(batch.column(i), to, &strict)?)),
                Err(_) => Ok(None),
            }
        };
        let value = col("value", &DataType::Binary)?
            .ok_or_else(|| Error::Internal("kafka sink: value column vanished".into()))?;
        Ok(Columns {
            value: value.as_binary::<i32>().clone(),
            key: col("key", &DataType::Binary)?.map(|a| a.as_binary::<i32>().clone()),
            topic: col("topic", &DataType::Utf8)?.map(|a| a.as_string::<i32>().clone()),
            partition: col("partition", &DataType::Int32)?.map(|a| a.as_primitive().clone()),
            headers: batch.schema().index_of("headers").ok().map(|i| batch.column(i).as_list::<i32>().clone()),
        })
    }
}

fn sink_error(message: String) -> Error {
    Error::Sink { sink: C.into(), message }
}

impl KafkaSink {
    pub(crate) fn try_new(options: &Options) -> Result<Self> {
        options.check(C, OPTIONS)?;
        let exactly_once = match options.get("deliveryGuarantee").map(|s| s.trim().to_ascii_lowercase()) {
            None => false,
            Some(s) if s == "at_least_once" => false,
            Some(s) if s == "exactly_once" => true,
            Some(_) => return Err(options.invalid(C, "deliveryGuarantee", "expected at_least_once or exactly_once")),
        };
        let topic = options.get("topic").map(str::to_string);
        let defaults = [
            ("enable.idempotence", "true"),
            // Records go out at once: a batch (or a continuous chunk) is waited for as a whole
            // anyway, and records produced while a request is in flight still share the next one.
            ("linger.ms", "0"),
            // A batch that cannot be delivered fails after this long instead of hanging.
            ("message.timeout.ms", "60000"),
        ];
        let mut defaults = defaults.to_vec();
        if exactly_once {
            // One transaction spans a whole batch: allow big ones (the broker's cap,
            // transaction.max.timeout.ms, is 15 minutes by default).
            defaults.push(("transaction.timeout.ms", "600000"));
            // Right after a commit the broker answers the next transaction's first records with
            // CONCURRENT_TRANSACTIONS until the commit's markers are written; librdkafka's
            // default 100 ms back-off would add that to every batch (or epoch).
            defaults.push(("retry.backoff.ms", "5"));
        }
        let config = client_config(C, options, &defaults)?;
        let servers = config.get("bootstrap.servers").unwrap_or_default().to_string();
        if exactly_once && config.get("enable.idempotence") == Some("false") {
            return Err(options.invalid(C, "kafka.enable.idempotence", "exactly_once needs the idempotent producer"));
        }
        if config.get("delivery.report.only.error").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Err(options.invalid(
                C,
                "kafka.delivery.report.only.error",
                "the sink counts a batch as written when every record's delivery report is in; leave it false",
            ));
        }
        let timeout =
            Duration::from_millis(config.get("message.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(60_000))
                + Duration::from_secs(5);
        // Check the configuration now (unknown keys, bad values), not at the first batch.
        let producer = if exactly_once {
            // Only the check: the transactional producer is made at `start`. A plain producer
            // is dropped at once (a threaded one would wait for its polling thread).
            let _probe: BaseProducer<Delivery> =
                create_with(C, options, &config, |c| BaseProducer::from_config_and_context(c, Delivery::default()))?;
            None
        } else {
            Some(Arc::new(create_producer(options, &config)?))
        };
        Ok(KafkaSink {
            servers,
            topic,
            exactly_once,
            options: options.clone(),
            config,
            producer,
            txn: None,
            timeout,
            pause: crate::faults::Pauses::from_env().duration(),
        })
    }

    /// Whether this sink needs a checkpoint (its exactly-once mode does).
    pub(crate) fn needs_checkpoint(options: &Options) -> bool {
        options.get("deliveryGuarantee").is_some_and(|s| s.trim().eq_ignore_ascii_case("exactly_once"))
    }
}

/// Dropping a [`ThreadedProducer`] joins its polling thread (up to 100 ms) and flushes: not on
/// a runtime worker.
impl Drop for KafkaSink {
    fn drop(&mut self) {
        if let Some(p) = self.producer.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            drop(rt.spawn_blocking(move || drop(p)));
        }
    }
}

fn create_producer(options: &Options, config: &ClientConfig) -> Result<Prod> {
    create_with(C, options, config, |c| Prod::from_config_and_context(c, Delivery::default()))
}

/// Produces every row of `data`; returns once all are acknowledged or one failed.
fn produce_all(
    producer: &Prod,
    topic: Option<&str>,
    data: &[RecordBatch],
    timeout: Duration,
) -> std::result::Result<u64, String> {
    let n = produce(producer, topic, data)?;
    await_acks(producer, timeout)?;
    Ok(n)
}

/// Waits until every record produced so far is acknowledged; the first delivery failure is an error.
fn await_acks(producer: &Prod, timeout: Duration) -> std::result::Result<(), String> {
    // Not `Producer::flush`: rust-rdkafka's flush polls in steps of 100 ms that run to their
    // end, so every batch would wait 100 ms for acknowledgements that take one.
    let deadline = Instant::now() + timeout;
    let ctx = producer.context();
    let sent = ctx.sent.load(Ordering::Acquire);
    let late = |left: i64| format!("{left} records not acknowledged within {} ms", timeout.as_millis());
    let mut reported = ctx.reported.lock().map_err(|_| "delivery state poisoned".to_string())?;
    while *reported < sent {
        let now = Instant::now();
        if now >= deadline {
            return Err(late((sent - *reported) as i64));
        }
        reported = ctx
            .report
            .wait_timeout(reported, (deadline - now).min(Duration::from_millis(100)))
            .map_err(|_| "delivery state poisoned".to_string())?
            .0;
    }
    drop(reported);
    // The last report's message is released just after its callback returns; until then
    // librdkafka still counts it (and a transaction commit would flush in 100 ms steps).
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(late(i64::from(producer.in_flight_count())));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    if let Some(f) = ctx.failed.lock().map_err(|_| "delivery state poisoned".to_string())?.take() {
        return Err(f);
    }
    Ok(())
}

/// Hands every row of `data` to the producer, which sends within `linger.ms` (at once on a flush).
fn produce(producer: &Prod, topic: Option<&str>, data: &[RecordBatch]) -> std::result::Result<u64, String> {
    let mut n = 0u64;
    for batch in data {
        let cols = Columns::of(batch).map_err(|e| e.to_string())?;
        for row in 0..batch.num_rows() {
            let t = match (topic, &cols.topic) {
                (Some(t), _) => t,
                (None, Some(c)) if c.is_valid(row) => c.value(row),
                _ => return Err(format!("row {row} has a null topic and the sink has no `topic` option")),
            };
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(t);
            if cols.value.is_valid(row) {
                rec = rec.payload(cols.value.value(row));
            }
            if let Some(k) = &cols.key
                && k.is_valid(row)
            {
                rec = rec.key(k.value(row));
            }
            if let Some(p) = &cols.partition
                && p.is_valid(row)
            {
                rec = rec.partition(p.value(row));
            }
            if let Some(h) = &cols.headers
                && h.is_valid(row)
            {
                let entries = h.value(row);
                let s = entries.as_struct();
                let keys = s.column(0).as_string::<i32>();
                let values = s.column(1).as_binary::<i32>();
                let mut hs = OwnedHeaders::new_with_capacity(s.len());
                for i in 0..s.len() {
                    if keys.is_null(i) {
                        return Err(format!("row {row} has a header with a null key"));
                    }
                    hs = hs.insert(Header { key: keys.value(i), value: values.is_valid(i).then(|| values.value(i)) });
                }
                rec = rec.headers(hs);
            }
            loop {
                match producer.send(rec) {
                    Ok(()) => {
                        producer.context().sent.fetch_add(1, Ordering::AcqRel);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // The polling thread frees the queue as reports come back.
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, r)) => {
                        let hint = match (e.rdkafka_error_code(), r.partition) {
                            (Some(RDKafkaErrorCode::UnknownPartition), Some(p)) => format!(
                                " (the `partition` column asks for partition {p}, which {t} does not have; drop the column to let Kafka choose)"
                            ),
                            _ => String::new(),
                        };
                        return Err(format!("cannot produce to {t}: {e}{hint}"));
                    }
                }
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Before the first transaction of a run: whether batch `batch_id` is already committed in
/// Kafka (only possible for the batch a restart re-runs, `rerun`), read from the marker group.
fn marker_says_committed(
    consumer: &BaseConsumer,
    group: &str,
    anchor: &str,
    batch_id: u64,
    rerun: bool,
    timeout: Duration,
) -> std::result::Result<bool, String> {
    let mut q = TopicPartitionList::new();
    q.add_partition(anchor, 0);
    let committed = consumer
        .committed_offsets(q, timeout)
        .map_err(|e| format!("reading the exactly-once marker of group {group}: {e}"))?;
    if let Some(KOffset::Offset(o)) = committed.elements().first().map(|e| e.offset()) {
        let next = batch_id as i64 + 1;
        if rerun && o == next {
            tracing::info!(
                sink = C,
                batch_id,
                "batch already committed in a Kafka transaction before a restart; skipping it"
            );
            return Ok(true);
        }
        if o >= next {
            return Err(format!(
                "the exactly-once marker of group {group} on {anchor}-0 says batch {} was committed, but this checkpoint is at batch {batch_id}: the transactional id is shared with another query or an older checkpoint; use a new kafka.transactional.id (or none: the default is unique per query)",
                o - 1
            ));
        }
    }
    Ok(false)
}

/// Ends the open transaction of batch (or epoch) `batch_id`: its marker, then the commit.
fn commit_txn(
    producer: &Prod,
    consumer: &BaseConsumer,
    anchor: &str,
    batch_id: u64,
    pause: Option<Duration>,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let mut marker = TopicPartitionList::new();
    marker.add_partition_offset(anchor, 0, KOffset::Offset(batch_id as i64 + 1)).map_err(|e| e.to_string())?;
    let cgm = consumer.group_metadata().ok_or("no consumer group metadata")?;
    producer
        .send_offsets_to_transaction(&marker, &cgm, timeout)
        .map_err(|e| txn_error("recording the batch marker", &e))?;
    if let Some(d) = pause {
        std::thread::sleep(d);
    }
    // A retriable commit error (a timeout, a coordinator move) is retried as is; librdkafka
    // keeps the transaction.
    let mut attempts = 0;
    loop {
        match producer.commit_transaction(timeout) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => attempts += 1,
            Err(e) => return Err(txn_error("commit transaction", &e)),
        }
    }
}

/// Aborts the open transaction after `e`, returning `e`.
fn abort_after(producer: &Prod, batch_id: u64, timeout: Duration, e: String) -> String {
    if let Err(abort) = producer.abort_transaction(timeout) {
        tracing::warn!(sink = C, batch_id, error = %abort, "abort transaction failed");
    }
    e
}

/// A transactional call's error, saying so when a newer producer fenced this one.
fn txn_error(what: &str, e: &KafkaError) -> String {
    let fenced = matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    );
    format!(
        "{what}: {e}{}",
        if fenced {
            " (another producer with the same transactional.id took over: is the query running twice?)"
        } else {
            ""
        }
    )
}

/// The topic whose partition 0 carries the exactly-once marker for a batch.
fn anchor_topic(topic: Option<&str>, data: &[RecordBatch]) -> Result<Option<String>> {
    if let Some(t) = topic {
        return Ok(Some(t.to_string()));
    }
    let mut min: Option<String> = None;
    for b in data {
        let Ok(i) = b.schema().index_of("topic") else { continue };
        let c = arrow_cast::cast(b.column(i), &DataType::Utf8)?;
        if let Some(c) = c.as_string_opt::<i32>() {
            for t in c.iter().flatten() {
                if min.as_deref().is_none_or(|m| t < m) {
                    min = Some(t.to_string());
                }
            }
        }
    }
    Ok(min)
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn description(&self) -> String {
        format!(
            "KafkaSink[{}, topic={}, {}]",
            self.servers,
            self.topic.as_deref().unwrap_or("(column)"),
            if self.exactly_once { "exactly_once" } else { "at_least_once" }
        )
    }

    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        let cols: Vec<String> = schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
        let bad = |message: String| Error::Config {
            location: self.options.location(),
            message: format!("kafka sink: {message}; the query's output is ({})", cols.join(", ")),
        };
        let field = |name: &str| schema.field_with_name(name).ok();
        match field("value") {
            None => {
                return Err(bad(
                    "the output needs a `value` column (string or binary), e.g. `SELECT to_json(named_struct('word', word, 'count', count)) AS value`"
                        .into(),
                ));
            }
            Some(f) if !bytes_type(f.data_type()) => {
                return Err(bad(format!("`value` must be a string or binary, not {}", f.data_type())));
            }
            _ => {}
        }
        if let Some(f) = field("key")
            && !bytes_type(f.data_type())
        {
            return Err(bad(format!("`key` must be a string or binary, not {}", f.data_type())));
        }
        match (field("topic"), &self.topic) {
            (None, None) => return Err(bad("set the `topic` option or give the output a `topic` column".into())),
            (Some(f), None) if !matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
                return Err(bad(format!("`topic` must be a string, not {}", f.data_type())));
            }
            _ => {}
        }
        if let Some(f) = field("partition")
            && !f.data_type().is_integer()
        {
            return Err(bad(format!("`partition` must be an integer, not {}", f.data_type())));
        }
        if let Some(f) = field("headers")
            && !headers_type_ok(f.data_type())
        {
            return Err(bad(format!(
                "`headers` must be array<struct<key: string, value: binary>>, not {}",
                f.data_type()
            )));
        }
        Ok(())
    }

    async fn start(&mut self, query_id: &str, rerun: Option<u64>) -> Result<()> {
        if !self.exactly_once {
            return Ok(());
        }
        let txn_id =
            self.config.get("transactional.id").map(str::to_string).unwrap_or_else(|| format!("sluice-{query_id}"));
        let mut config = self.config.clone();
        config.set("transactional.id", &txn_id);
        let producer: Prod = create_producer(&self.options, &config)?;
        let mut cc = ClientConfig::new();
        for (k, v) in self.config.config_map() {
            // Client-level settings (servers, security) carry over; producer settings do not.
            if !k.starts_with("transaction")
                && !matches!(
                    k,
                    "enable.idempotence"
                        | "linger.ms"
                        | "message.timeout.ms"
                        | "acks"
                        | "compression.type"
                        | "batch.size"
                        | "batch.num.messages"
                )
            {
                cc.set(k, v);
            }
        }
        cc.set("group.id", &txn_id);
        cc.set("enable.auto.commit", "false");
        cc.set("isolation.level", "read_committed");
        cc.set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
        let consumer: BaseConsumer = create(C, &self.options, &cc)?;
        let producer = Arc::new(producer);
        let p = producer.clone();
        let timeout = self.timeout;
        let servers = self.servers.clone();
        let tid = txn_id.clone();
        blocking(move || p.init_transactions(timeout)).await?.map_err(|e| {
                sink_error(format!(
                    "cannot initialise transactions for transactional.id {tid} at {servers}: {e}; is the broker up and does it allow transactions?"
                ))
            })?;
        tracing::info!(sink = C, transactional_id = %txn_id, "kafka transactions initialised; older producers with this id are fenced");
        self.producer = Some(producer);
        self.txn =
            Some(Transactional { group: txn_id, consumer: Arc::new(consumer), rerun, checked: false, open: None });
        Ok(())
    }

    async fn add_batch(&mut self, batch_id: u64, _: &SchemaRef, data: Vec<RecordBatch>, _: OutputMode) -> Result<()> {
        let producer = self.producer.clone().ok_or_else(|| Error::Internal("kafka sink used before start".into()))?;
        let topic = self.topic.clone();
        let timeout = self.timeout;
        if data.iter().all(|b| b.num_rows() == 0) {
            return Ok(());
        }
        let Some(txn) = &mut self.txn else {
            let n = blocking(move || produce_all(&producer, topic.as_deref(), &data, timeout))
                .await?
                .map_err(|e| sink_error(format!("batch {batch_id}: {e}")))?;
            tracing::debug!(sink = C, batch_id, records = n, "batch written");
            return Ok(());
        };
        let anchor = anchor_topic(topic.as_deref(), &data)?
            .ok_or_else(|| sink_error(format!("batch {batch_id}: no topic for any row")))?;
        let consumer = txn.consumer.clone();
        let check = !txn.checked;
        txn.checked = true;
        let rerun = txn.rerun == Some(batch_id);
        let group = txn.group.clone();
        let pause = self.pause;
        blocking(move || -> std::result::Result<(), String> {
            if check && marker_says_committed(&consumer, &group, &anchor, batch_id, rerun, timeout)? {
                return Ok(());
            }
            producer.begin_transaction().map_err(|e| txn_error("begin transaction", &e))?;
            produce_all(&producer, topic.as_deref(), &data, timeout)
                .and_then(|_| commit_txn(&producer, &consumer, &anchor, batch_id, pause, timeout))
                .map_err(|e| abort_after(&producer, batch_id, timeout, e))
        })
        .await?
        .map_err(|e| sink_error(format!("batch {batch_id}: {e}")))
    }

    fn streams_chunks(&self) -> bool {
        true
    }

    /// At-least-once: the chunk is produced and acknowledged now. Exactly-once: the epoch's
    /// transaction begins at its first chunk with rows and takes every chunk until
    /// `commit_epoch`.
    async fn write_chunk(&mut self, meta: &super::BatchMeta, data: crate::source::Partitioned) -> Result<bool> {
        let producer = self.producer.clone().ok_or_else(|| Error::Internal("kafka sink used before start".into()))?;
        let topic = self.topic.clone();
        let timeout = self.timeout;
        let batch_id = meta.batch_id;
        let data: Vec<RecordBatch> = data.into_iter().map(|(_, b)| b).filter(|b| b.num_rows() > 0).collect();
        let Some(txn) = &mut self.txn else {
            if !data.is_empty() {
                blocking(move || produce_all(&producer, topic.as_deref(), &data, timeout))
                    .await?
                    .map_err(|e| sink_error(format!("epoch {batch_id}: {e}")))?;
            }
            return Ok(true);
        };
        if data.is_empty() {
            return Ok(txn.open.is_none());
        }
        let begin = match &txn.open {
            Some((open, _)) if *open == batch_id => None,
            Some((open, _)) => {
                return Err(Error::Internal(format!("kafka sink: epoch {open} still open at epoch {batch_id}")));
            }
            None => Some(
                anchor_topic(topic.as_deref(), &data)?
                    .ok_or_else(|| sink_error(format!("epoch {batch_id}: no topic for any row")))?,
            ),
        };
        if let Some(anchor) = &begin {
            txn.open = Some((batch_id, anchor.clone()));
        }
        let consumer = txn.consumer.clone();
        let check = !txn.checked;
        txn.checked = true;
        let group = txn.group.clone();
        blocking(move || -> std::result::Result<(), String> {
            if let Some(anchor) = &begin {
                if check {
                    marker_says_committed(&consumer, &group, anchor, batch_id, false, timeout)?;
                }
                producer.begin_transaction().map_err(|e| txn_error("begin transaction", &e))?;
            }
            produce(&producer, topic.as_deref(), &data)
                .map(|_| ())
                .map_err(|e| abort_after(&producer, batch_id, timeout, e))
        })
        .await?
        .map_err(|e| {
            if let Some(t) = &mut self.txn {
                t.open = None;
            }
            sink_error(format!("epoch {batch_id}: {e}"))
        })?;
        Ok(false)
    }

    async fn commit_epoch(&mut self, meta: &super::BatchMeta) -> Result<()> {
        let Some(txn) = &mut self.txn else { return Ok(()) };
        let Some((open, anchor)) = txn.open.take() else { return Ok(()) };
        let batch_id = meta.batch_id;
        if open != batch_id {
            return Err(Error::Internal(format!("kafka sink: epoch {open} open at the commit of epoch {batch_id}")));
        }
        let producer = self.producer.clone().ok_or_else(|| Error::Internal("kafka sink used before start".into()))?;
        let consumer = txn.consumer.clone();
        let (pause, timeout) = (self.pause, self.timeout);
        blocking(move || {
            // Acknowledgements first, by our own wait: rust-rdkafka's commit_transaction flushes
            // with its 100 ms polling steps otherwise.
            await_acks(&producer, timeout)
                .and_then(|_| commit_txn(&producer, &consumer, &anchor, batch_id, pause, timeout))
                .map_err(|e| abort_after(&producer, batch_id, timeout, e))
        })
        .await?
        .map_err(|e| sink_error(format!("epoch {batch_id}: {e}")))
    }
}
