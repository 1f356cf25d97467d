//! The `kafka` source (Spark's `format("kafka")`): Spark's options, schema and offset JSON, on
//! librdkafka.
//!
//! Offsets are `{"topic": {"0": 42, "1": 17}}`, the next offset to read per partition, exactly
//! Spark's format; they live in Sluice's checkpoint, never in Kafka, so a batch can be read
//! again byte for byte after a crash. The consumer is assigned partitions by hand (no group
//! rebalancing) and reads each batch's exact range `[start, end)`: a partition is finished
//! when a record at `end - 1` or beyond arrives, or librdkafka reports the end of the partition
//! (ranges never pass the latest offset, so the end of the partition is at or after `end` even
//! when transaction markers or compaction leave gaps). Partitions are read one topic at a time,
//! because librdkafka's end-of-partition event names only the partition number.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset as KOffset, TopicPartitionList};

use super::{Offset, Partitioned, ReadLimit, Source};
use crate::error::{Error, ErrorKind, Result};
use crate::kafka::{Retry, blocking, blocking_retry, client_config, create};
use crate::options::Options;

const C: &str = "kafka source";

/// Next offset to read, per topic and partition (Spark's `KafkaSourceOffset` JSON).
pub(crate) type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Rows per Arrow batch handed to the steps.
const CHUNK_ROWS: usize = 64 * 1024;

const OPTIONS: &[&str] = &[
    "kafka.*",
    "subscribe",
    "subscribePattern",
    "assign",
    "startingOffsets",
    "startingOffsetsByTimestamp",
    "startingTimestamp",
    "startingOffsetsByTimestampStrategy",
    "endingOffsets",
    "maxOffsetsPerTrigger",
    "minOffsetsPerTrigger",
    "maxTriggerDelay",
    "failOnDataLoss",
    "includeHeaders",
    "groupIdPrefix",
    "commitOffsets",
    "kafkaConsumer.pollTimeoutMs",
    "fetchOffset.numRetries",
    "fetchOffset.retryIntervalMs",
    "fetchOffset.timeoutMs",
];

#[derive(Debug, Clone)]
enum Subscription {
    Topics(Vec<String>),
    Pattern(regex::Regex, String),
    Assign(Vec<(String, i32)>),
}

#[derive(Debug, Clone)]
enum Starting {
    Earliest,
    Latest,
    /// Per partition; -2 = earliest, -1 = latest.
    Offsets(Offsets),
    /// Per partition timestamps (ms), or one for all.
    Timestamps {
        per_partition: Option<Offsets>,
        global: Option<i64>,
        fall_back_to_latest: bool,
    },
}

#[derive(Debug, Clone)]
enum Ending {
    Latest,
    Offsets(Offsets),
}

pub(crate) struct KafkaSource {
    servers: String,
    subscription: Subscription,
    starting: Starting,
    ending: Option<Ending>,
    max_per_trigger: Option<u64>,
    min_per_trigger: Option<u64>,
    max_trigger_delay: Duration,
    fail_on_data_loss: bool,
    commit_offsets: bool,
    poll_timeout: Duration,
    retry: Retry,
    consumer: Arc<BaseConsumer>,
    schema: SchemaRef,
    /// The starting offsets, resolved once and logged with batch 0.
    initial: Option<Offsets>,
    /// The end of the data for `available_now` and `endingOffsets`.
    bound: Option<Offsets>,
    /// Whether `endingOffsets` was reached: the query is finished.
    finished: bool,
    /// The latest offsets seen by the last `latest_offset`, for lag metrics.
    latest: Offsets,
    /// When the last batch was planned, for `maxTriggerDelay`.
    last_batch: Instant,
}

fn parse_offsets_json(options: &Options, key: &str, text: &str) -> Result<Offsets> {
    serde_json::from_str::<BTreeMap<String, BTreeMap<String, i64>>>(text)
        .map_err(|e| e.to_string())
        .and_then(|m| {
            m.into_iter()
                .map(|(t, parts)| {
                    let parts = parts
                        .into_iter()
                        .map(|(p, o)| {
                            p.parse::<i32>().map(|p| (p, o)).map_err(|_| format!("partition `{p}` is not a number"))
                        })
                        .collect::<std::result::Result<BTreeMap<_, _>, String>>()?;
                    Ok((t, parts))
                })
                .collect()
        })
        .map_err(|e| options.invalid(C, key, &format!("expected JSON like {{\"topic\":{{\"0\":23,\"1\":-2}}}}: {e}")))
}

fn offsets_of(o: &Offset) -> Result<Offsets> {
    serde_json::from_value(o.0.clone()).map_err(|e| Error::Source {
        source_name: C.into(),
        message: format!("offset {} is not Kafka offset JSON: {e}", o.0),
        kind: ErrorKind::Internal,
    })
}

fn to_offset(o: &Offsets) -> Offset {
    Offset(serde_json::to_value(o).unwrap_or_default())
}

fn get(o: &Offsets, t: &str, p: i32) -> Option<i64> {
    o.get(t).and_then(|m| m.get(&p)).copied()
}

fn set(o: &mut Offsets, t: &str, p: i32, v: i64) {
    o.entry(t.to_string()).or_default().insert(p, v);
}

fn tps(o: &Offsets) -> impl Iterator<Item = (&str, i32, i64)> {
    o.iter().flat_map(|(t, m)| m.iter().map(move |(p, v)| (t.as_str(), *p, *v)))
}

/// Spark's schema of a Kafka record.
fn kafka_schema(include_headers: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("timestampType", DataType::Int32, false),
    ];
    if include_headers {
        fields.push(Field::new("headers", DataType::List(Arc::new(Field::new_list_field(header_type(), true))), true));
    }
    Arc::new(Schema::new(fields))
}

pub(crate) fn header_fields() -> Fields {
    Fields::from(vec![Field::new("key", DataType::Utf8, false), Field::new("value", DataType::Binary, true)])
}

fn header_type() -> DataType {
    DataType::Struct(header_fields())
}

impl KafkaSource {
    pub(crate) fn try_new(options: &Options) -> Result<Self> {
        options.check(C, OPTIONS)?;
        let subs: Vec<&str> =
            ["subscribe", "subscribePattern", "assign"].into_iter().filter(|k| options.get(k).is_some()).collect();
        let subscription = match subs.as_slice() {
            ["subscribe"] => {
                let topics: Vec<String> = options
                    .get("subscribe")
                    .unwrap_or_default()
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect();
                if topics.is_empty() {
                    return Err(options.invalid(C, "subscribe", "name at least one topic"));
                }
                Subscription::Topics(topics)
            }
            ["subscribePattern"] => {
                let p = options.get("subscribePattern").unwrap_or_default();
                let re = regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| options.invalid(C, "subscribePattern", &e.to_string()))?;
                Subscription::Pattern(re, p.to_string())
            }
            ["assign"] => {
                let text = options.get("assign").unwrap_or_default();
                let json: BTreeMap<String, Vec<i32>> = serde_json::from_str(text).map_err(|e| {
                    options.invalid(
                        C,
                        "assign",
                        &format!("expected JSON like {{\"topicA\":[0,1],\"topicB\":[2]}}: {e}"),
                    )
                })?;
                let list: Vec<(String, i32)> =
                    json.into_iter().flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p))).collect();
                if list.is_empty() {
                    return Err(options.invalid(C, "assign", "name at least one partition"));
                }
                Subscription::Assign(list)
            }
            [] => {
                return Err(options.missing(
                    C,
                    "subscribe",
                    Some("exactly one of subscribe, subscribePattern or assign"),
                ));
            }
            many => {
                return Err(Error::Config {
                    location: options.location(),
                    message: format!(
                        "kafka source: options {} are exclusive; use exactly one of subscribe, subscribePattern or assign",
                        many.join(", ")
                    ),
                });
            }
        };
        let fall_back_to_latest = match options.get("startingOffsetsByTimestampStrategy").map(str::to_ascii_lowercase) {
            None => false,
            Some(s) if s == "error" => false,
            Some(s) if s == "latest" => true,
            Some(_) => {
                return Err(options.invalid(C, "startingOffsetsByTimestampStrategy", "expected error or latest"));
            }
        };
        // Spark's precedence: startingTimestamp, then startingOffsetsByTimestamp, then startingOffsets.
        let starting = if let Some(ts) = options.parse::<i64>(C, "startingTimestamp")? {
            Starting::Timestamps { per_partition: None, global: Some(ts), fall_back_to_latest }
        } else if let Some(text) = options.get("startingOffsetsByTimestamp") {
            let per = parse_offsets_json(options, "startingOffsetsByTimestamp", text)?;
            Starting::Timestamps { per_partition: Some(per), global: None, fall_back_to_latest }
        } else {
            match options.get("startingOffsets").map(str::trim) {
                None => Starting::Latest,
                Some(s) if s.eq_ignore_ascii_case("latest") => Starting::Latest,
                Some(s) if s.eq_ignore_ascii_case("earliest") => Starting::Earliest,
                Some(s) => {
                    let o = parse_offsets_json(options, "startingOffsets", s)?;
                    if tps(&o).any(|(_, _, v)| v < -2) {
                        return Err(options.invalid(
                            C,
                            "startingOffsets",
                            "offsets must be >= 0, or -2 (earliest) or -1 (latest)",
                        ));
                    }
                    Starting::Offsets(o)
                }
            }
        };
        let ending = match options.get("endingOffsets").map(str::trim) {
            None => None,
            Some(s) if s.eq_ignore_ascii_case("latest") => Some(Ending::Latest),
            Some(s) if s.eq_ignore_ascii_case("earliest") => {
                return Err(options.invalid(C, "endingOffsets", "earliest is not allowed as an ending offset"));
            }
            Some(s) => {
                let o = parse_offsets_json(options, "endingOffsets", s)?;
                if tps(&o).any(|(_, _, v)| v < -1) {
                    return Err(options.invalid(C, "endingOffsets", "offsets must be >= 0, or -1 (latest)"));
                }
                Some(Ending::Offsets(o))
            }
        };
        let positive = |key: &str| -> Result<Option<u64>> {
            match options.parse::<u64>(C, key)? {
                Some(0) => Err(options.invalid(C, key, "must be at least 1")),
                v => Ok(v),
            }
        };
        let max_per_trigger = positive("maxOffsetsPerTrigger")?;
        let min_per_trigger = positive("minOffsetsPerTrigger")?;
        if let (Some(min), Some(max)) = (min_per_trigger, max_per_trigger)
            && min > max
        {
            return Err(options.invalid(C, "minOffsetsPerTrigger", "must not exceed maxOffsetsPerTrigger"));
        }
        let max_trigger_delay = match options.get("maxTriggerDelay") {
            Some(d) => crate::options::parse_duration(d).map_err(|e| options.invalid(C, "maxTriggerDelay", &e))?,
            None => Duration::from_secs(15 * 60),
        };
        let fail_on_data_loss = options.bool_or(C, "failOnDataLoss", true)?;
        let include_headers = options.bool_or(C, "includeHeaders", false)?;
        let commit_offsets = options.bool_or(C, "commitOffsets", false)?;
        if commit_offsets && options.get("kafka.group.id").is_none() {
            return Err(options.missing(
                C,
                "kafka.group.id",
                Some("commitOffsets publishes the query's progress under this consumer group"),
            ));
        }
        let poll_timeout = Duration::from_millis(options.parse_or(C, "kafkaConsumer.pollTimeoutMs", 120_000u64)?);
        let retry = Retry::from_options(C, options)?;
        let prefix = options.get("groupIdPrefix").unwrap_or("sluice-kafka-source");
        let group = format!("{prefix}-{}", uuid::Uuid::new_v4());
        let defaults = [
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "true"),
            // An offset that no longer exists is data loss; with failOnDataLoss=false, skip ahead.
            ("auto.offset.reset", if fail_on_data_loss { "error" } else { "earliest" }),
        ];
        let config = client_config(C, options, &defaults)?;
        let servers = config.get("bootstrap.servers").unwrap_or_default().to_string();
        let consumer: BaseConsumer = create(C, options, &config)?;
        Ok(KafkaSource {
            servers,
            subscription,
            starting,
            ending,
            max_per_trigger,
            min_per_trigger,
            max_trigger_delay,
            fail_on_data_loss,
            commit_offsets,
            poll_timeout,
            retry,
            consumer: Arc::new(consumer),
            schema: kafka_schema(include_headers),
            initial: None,
            bound: None,
            finished: false,
            latest: Offsets::new(),
            last_batch: Instant::now(),
        })
    }

    /// Reports data loss as Spark does: an error with `failOnDataLoss` (the default), else a
    /// warning and the caller skips what is gone.
    fn data_loss(&self, what: String) -> Result<()> {
        if self.fail_on_data_loss {
            Err(Error::Source {
                source_name: C.into(),
                message: format!(
                    "{what}. Some data may have been lost because it is not available in Kafka any more: either it was aged out by retention or the topic was deleted or recreated before the query processed it. If losing it is acceptable, set the source option failOnDataLoss = \"false\""
                ),
                kind: ErrorKind::External,
            })
        } else {
            tracing::warn!(source = C, "{what}; some data may have been lost (failOnDataLoss = false: skipping it)");
            Ok(())
        }
    }

    /// The partitions the subscription covers now.
    async fn partitions(&self) -> Result<Vec<(String, i32)>> {
        let consumer = self.consumer.clone();
        let sub = self.subscription.clone();
        blocking_retry(C, &self.servers, "reading topic metadata", self.retry, move |timeout| {
            let md = consumer.fetch_metadata(None, timeout).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for t in md.topics() {
                let wanted = match &sub {
                    Subscription::Topics(names) => names.iter().any(|n| n == t.name()),
                    Subscription::Pattern(re, _) => !t.name().starts_with("__") && re.is_match(t.name()),
                    Subscription::Assign(list) => list.iter().any(|(n, _)| n == t.name()),
                };
                if !wanted {
                    continue;
                }
                match t.error() {
                    None => {}
                    // Not created yet: no partitions, no data (Spark waits the same way).
                    Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => continue,
                    // Anything else (leader election, authorization) is retried, never read
                    // as "the topic was deleted".
                    Some(e) => return Err(format!("topic {}: {}", t.name(), RDKafkaErrorCode::from(e))),
                }
                for p in t.partitions() {
                    if let Subscription::Assign(list) = &sub
                        && !list.iter().any(|(n, q)| n == t.name() && *q == p.id())
                    {
                        continue;
                    }
                    out.push((t.name().to_string(), p.id()));
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Kafka's ListOffsets for each partition: `which` is -2 (earliest), -1 (latest; the last
    /// stable offset under `read_committed`) or a timestamp in ms. Timestamps with no record at
    /// or after them come back as -1.
    async fn list_offsets(&self, parts: Vec<(String, i32)>, which: &Offsets, default: i64) -> Result<Offsets> {
        if parts.is_empty() {
            return Ok(Offsets::new());
        }
        let consumer = self.consumer.clone();
        let which = which.clone();
        let what = match default {
            -2 => "looking up earliest offsets",
            -1 => "looking up latest offsets",
            _ => "looking up offsets by timestamp",
        };
        blocking_retry(C, &self.servers, what, self.retry, move |timeout| {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &parts {
                let q = match get(&which, t, *p).unwrap_or(default) {
                    -2 => KOffset::Beginning,
                    -1 => KOffset::End,
                    ts => KOffset::Offset(ts),
                };
                tpl.add_partition_offset(t, *p, q).map_err(|e| e.to_string())?;
            }
            let r = consumer.offsets_for_times(tpl, timeout).map_err(|e| e.to_string())?;
            let mut out = Offsets::new();
            for e in r.elements() {
                e.error().map_err(|err| format!("{}-{}: {err}", e.topic(), e.partition()))?;
                let v = match e.offset() {
                    KOffset::Offset(n) => n,
                    _ => -1,
                };
                set(&mut out, e.topic(), e.partition(), v);
            }
            Ok(out)
        })
        .await
    }

    /// Resolves `startingOffsets` (or the timestamp options) once; later calls return the same.
    async fn initial_offsets(&mut self, parts: &[(String, i32)]) -> Result<Offsets> {
        if let Some(i) = &self.initial {
            return Ok(i.clone());
        }
        let all = parts.to_vec();
        let resolved = match self.starting.clone() {
            Starting::Earliest => self.list_offsets(all, &Offsets::new(), -2).await?,
            Starting::Latest => self.list_offsets(all, &Offsets::new(), -1).await?,
            Starting::Offsets(given) => {
                let missing: Vec<String> = parts
                    .iter()
                    .filter(|(t, p)| get(&given, t, *p).is_none())
                    .map(|(t, p)| format!("{t}-{p}"))
                    .collect();
                if !missing.is_empty() {
                    return Err(Error::Config {
                        location: None,
                        message: format!(
                            "kafka source: startingOffsets must give an offset for every partition (-2 = earliest, -1 = latest); missing: {}",
                            missing.join(", ")
                        ),
                    });
                }
                let earliest = self.list_offsets(all.clone(), &Offsets::new(), -2).await?;
                let latest = self.list_offsets(all, &Offsets::new(), -1).await?;
                let mut out = Offsets::new();
                for (t, p, v) in tps(&given) {
                    let (lo, hi) = match (get(&earliest, t, p), get(&latest, t, p)) {
                        (Some(lo), Some(hi)) => (lo, hi),
                        _ => {
                            return Err(Error::Config {
                                location: None,
                                message: format!("kafka source: startingOffsets names {t}-{p}, which does not exist"),
                            });
                        }
                    };
                    let v = match v {
                        -2 => lo,
                        -1 => hi,
                        v => v,
                    };
                    set(&mut out, t, p, v);
                }
                out
            }
            Starting::Timestamps { per_partition, global, fall_back_to_latest } => {
                let mut which = Offsets::new();
                for (t, p) in parts {
                    let ts = match (&per_partition, global) {
                        (_, Some(g)) => g,
                        (Some(per), None) => get(per, t, *p).ok_or_else(|| Error::Config {
                            location: None,
                            message: format!(
                                "kafka source: startingOffsetsByTimestamp must give a timestamp for every partition; missing {t}-{p}"
                            ),
                        })?,
                        (None, None) => return Err(Error::Internal("no starting timestamp".into())),
                    };
                    set(&mut which, t, *p, ts);
                }
                let found = self.list_offsets(all.clone(), &which, 0).await?;
                let latest = self.list_offsets(all, &Offsets::new(), -1).await?;
                let mut out = Offsets::new();
                for (t, p, v) in tps(&found) {
                    let v = if v >= 0 {
                        v
                    } else if fall_back_to_latest {
                        get(&latest, t, p).unwrap_or(0)
                    } else {
                        return Err(Error::Source {
                            source_name: C.into(),
                            message: format!(
                                "no record in {t}-{p} at or after timestamp {}; set startingOffsetsByTimestampStrategy = \"latest\" to start at the latest offset instead",
                                get(&which, t, p).unwrap_or_default()
                            ),
                            kind: ErrorKind::User,
                        });
                    };
                    set(&mut out, t, p, v);
                }
                out
            }
        };
        tracing::info!(source = C, offsets = %serde_json::to_string(&resolved).unwrap_or_default(), "starting offsets resolved");
        self.initial = Some(resolved.clone());
        Ok(resolved)
    }

    /// Reads `[from, until)` of each partition of one topic.
    fn read_topic(
        consumer: &BaseConsumer,
        topic: &str,
        ranges: &BTreeMap<i32, (i64, i64, u32)>,
        schema: &SchemaRef,
        poll_timeout: Duration,
        fail_on_data_loss: bool,
    ) -> std::result::Result<Vec<(u32, RecordBatch)>, String> {
        let include_headers = schema.field_with_name("headers").is_ok();
        let mut tpl = TopicPartitionList::new();
        for (p, (from, _, _)) in ranges {
            tpl.add_partition_offset(topic, *p, KOffset::Offset(*from)).map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| format!("assigning {topic}: {e}"))?;
        let mut builders: BTreeMap<i32, Rows> = ranges.keys().map(|p| (*p, Rows::new(include_headers))).collect();
        let mut out = Vec::new();
        let mut pending: std::collections::BTreeSet<i32> = ranges.keys().copied().collect();
        let mut last_progress = Instant::now();
        let result = loop {
            if pending.is_empty() {
                break Ok(());
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {
                    if last_progress.elapsed() > poll_timeout {
                        let left: Vec<String> = pending
                            .iter()
                            .map(|p| {
                                let (from, until, _) = ranges[p];
                                format!("{topic}-{p} [{from}, {until})")
                            })
                            .collect();
                        break Err(format!(
                            "timed out after {} ms (kafkaConsumer.pollTimeoutMs) waiting for records of {}; is the broker up?",
                            poll_timeout.as_millis(),
                            left.join(", ")
                        ));
                    }
                }
                Some(Ok(m)) => {
                    if m.topic() != topic {
                        continue;
                    }
                    let p = m.partition();
                    let (Some(&(from, until, slot)), Some(rows)) = (ranges.get(&p), builders.get_mut(&p)) else {
                        continue;
                    };
                    let off = m.offset();
                    if off < from || !pending.contains(&p) {
                        continue;
                    }
                    last_progress = Instant::now();
                    if off < until {
                        rows.push(&m, topic);
                        if rows.len() >= CHUNK_ROWS {
                            out.push((slot, rows.finish(schema).map_err(|e| e.to_string())?));
                        }
                    }
                    if off >= until - 1 {
                        pending.remove(&p);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                Some(Err(e)) => {
                    let code = e.rdkafka_error_code();
                    if matches!(code, Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset))
                        && fail_on_data_loss
                    {
                        break Err(format!(
                            "reading {topic}: {e}: the requested offsets are gone (retention or topic recreation). Some data may have been lost; set failOnDataLoss = \"false\" to skip it"
                        ));
                    }
                    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                        break Err(format!("reading {topic}: {e}"));
                    }
                    tracing::warn!(source = C, topic, error = %e, "kafka consumer error; librdkafka retries");
                }
            }
        };
        let _ = consumer.unassign();
        result?;
        for (p, mut rows) in builders {
            if rows.len() > 0 {
                out.push((ranges[&p].2, rows.finish(schema).map_err(|e| e.to_string())?));
            }
        }
        Ok(out)
    }
}

/// Arrow builders for Kafka records.
struct Rows {
    key: BinaryBuilder,
    value: BinaryBuilder,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMicrosecondBuilder,
    timestamp_type: Int32Builder,
    headers: Option<ListBuilder<StructBuilder>>,
    len: usize,
}

impl Rows {
    fn new(include_headers: bool) -> Self {
        Rows {
            key: BinaryBuilder::new(),
            value: BinaryBuilder::new(),
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: TimestampMicrosecondBuilder::new(),
            timestamp_type: Int32Builder::new(),
            headers: include_headers.then(|| {
                ListBuilder::new(StructBuilder::from_fields(header_fields(), 0))
                    .with_field(Arc::new(Field::new_list_field(header_type(), true)))
            }),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push<M: Message>(&mut self, m: &M, topic: &str) {
        self.key.append_option(m.key());
        self.value.append_option(m.payload());
        self.topic.append_value(topic);
        self.partition.append_value(m.partition());
        self.offset.append_value(m.offset());
        let (ts, kind) = match m.timestamp() {
            Timestamp::CreateTime(t) => (t, 0),
            Timestamp::LogAppendTime(t) => (t, 1),
            Timestamp::NotAvailable => (0, -1),
        };
        self.timestamp.append_value(ts.saturating_mul(1000));
        self.timestamp_type.append_value(kind);
        if let Some(h) = &mut self.headers {
            if let Some(hs) = m.headers() {
                for header in hs.iter() {
                    let s = h.values();
                    if let Some(k) = s.field_builder::<StringBuilder>(0) {
                        k.append_value(header.key);
                    }
                    if let Some(v) = s.field_builder::<BinaryBuilder>(1) {
                        v.append_option(header.value);
                    }
                    s.append(true);
                }
                h.append(true);
            } else {
                h.append(false);
            }
        }
        self.len += 1;
    }

    fn finish(&mut self, schema: &SchemaRef) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish().with_timezone("UTC")),
            Arc::new(self.timestamp_type.finish()),
        ];
        if let Some(h) = &mut self.headers {
            cols.push(Arc::new(h.finish()));
        }
        self.len = 0;
        RecordBatch::try_new(schema.clone(), cols)
    }
}

/// Spark's `maxOffsetsPerTrigger` split: each partition gets a share of `limit` proportional to
/// what it has available (at least one offset when it has any).
fn rate_limit(from: &Offsets, until: &Offsets, limit: u64) -> Offsets {
    let sizes: Vec<(&str, i32, i64, i64)> = tps(until)
        .map(|(t, p, u)| {
            let f = get(from, t, p).unwrap_or(0);
            (t, p, f, u)
        })
        .collect();
    let total: i64 = sizes.iter().map(|(_, _, f, u)| (u - f).max(0)).sum();
    if total as u64 <= limit {
        return until.clone();
    }
    let mut out = Offsets::new();
    for (t, p, f, u) in sizes {
        let size = (u - f).max(0);
        let share = limit as f64 * (size as f64 / total as f64);
        let step = if share < 1.0 { share.ceil() } else { share.floor() } as i64;
        set(&mut out, t, p, (f + step).min(u).max(f));
    }
    out
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    fn description(&self) -> String {
        match &self.subscription {
            Subscription::Topics(t) => format!("KafkaV2[Subscribe[{}]]", t.join(",")),
            Subscription::Pattern(_, p) => format!("KafkaV2[SubscribePattern[{p}]]"),
            Subscription::Assign(l) => {
                format!("KafkaV2[Assign[{}]]", l.iter().map(|(t, p)| format!("{t}-{p}")).collect::<Vec<_>>().join(", "))
            }
        }
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn replayable(&self) -> bool {
        true
    }

    async fn start(&mut self) -> Result<()> {
        // Fail fast when the brokers cannot be reached at all.
        let parts = self.partitions().await?;
        tracing::info!(source = %self.description(), partitions = parts.len(), "connected to kafka");
        if let Some(ending) = self.ending.clone() {
            let latest = self.list_offsets(parts.clone(), &Offsets::new(), -1).await?;
            self.bound = Some(match ending {
                Ending::Latest => latest,
                Ending::Offsets(given) => {
                    let mut b = Offsets::new();
                    for (t, p, v) in tps(&given) {
                        let v = if v == -1 { get(&latest, t, p).unwrap_or(0) } else { v };
                        set(&mut b, t, p, v);
                    }
                    b
                }
            });
        }
        Ok(())
    }

    async fn prepare_available_now(&mut self) -> Result<()> {
        let parts = self.partitions().await?;
        let latest = self.list_offsets(parts, &Offsets::new(), -1).await?;
        self.bound = Some(match self.bound.take() {
            None => latest,
            Some(b) => {
                let mut out = Offsets::new();
                for (t, p, v) in tps(&b) {
                    set(&mut out, t, p, v.min(get(&latest, t, p).unwrap_or(v)));
                }
                out
            }
        });
        Ok(())
    }

    async fn latest_offset(&mut self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>> {
        let parts = self.partitions().await?;
        let latest = self.list_offsets(parts.clone(), &Offsets::new(), -1).await?;
        let from = match start {
            Some(o) => offsets_of(o)?,
            None => self.initial_offsets(&parts).await?,
        };
        // Partitions that went away.
        let mut base = Offsets::new();
        for (t, p, v) in tps(&from) {
            if get(&latest, t, p).is_none() {
                self.data_loss(format!("partition {t}-{p} was deleted (it was at offset {v})"))?;
            } else {
                set(&mut base, t, p, v);
            }
        }
        // Where each partition could go: its latest offset, within the bound.
        let mut target = Offsets::new();
        for (t, p, hi) in tps(&latest) {
            let f = get(&base, t, p).unwrap_or(0);
            let mut to = hi;
            if let Some(b) = &self.bound {
                to = to.min(get(b, t, p).unwrap_or(f));
            }
            if to < f {
                if hi < f {
                    self.data_loss(format!("partition {t}-{p}'s latest offset went back from {f} to {hi}"))?;
                } else {
                    to = f; // at the bound
                }
            }
            set(&mut target, t, p, to);
        }
        self.latest = latest;
        let total: i64 = tps(&target).map(|(t, p, u)| (u - get(&base, t, p).unwrap_or(0)).max(0)).sum();
        if limit == ReadLimit::Default {
            // minOffsetsPerTrigger waits for more data, which a bounded run (available_now,
            // endingOffsets) must not do: its bound is all the data there will be.
            if let (Some(min), None) = (self.min_per_trigger, &self.bound)
                && (total as u64) < min
                && self.last_batch.elapsed() < self.max_trigger_delay
                && total > 0
            {
                return Ok(None);
            }
            if let Some(max) = self.max_per_trigger {
                target = rate_limit(&base, &target, max);
            }
        }
        let changed = tps(&target).any(|(t, p, u)| u != get(&base, t, p).unwrap_or(0))
            || tps(&base).count() != tps(&from).count();
        if !changed {
            // endingOffsets: finished once every partition has reached its end (it may not
            // exist yet, or have fewer records so far: then keep waiting).
            if let (Some(_), Some(b)) = (&self.ending, &self.bound) {
                self.finished = tps(b).all(|(t, p, end)| get(&base, t, p).unwrap_or(0) >= end);
            }
            return Ok(None);
        }
        self.last_batch = Instant::now();
        Ok(Some(to_offset(&target)))
    }

    async fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Partitioned> {
        let from = match start {
            Some(o) => offsets_of(o)?,
            None => match &self.initial {
                Some(i) => i.clone(),
                None => {
                    return Err(Error::Internal(
                        "kafka source: first batch read before starting offsets resolved".into(),
                    ));
                }
            },
        };
        let until = offsets_of(end)?;
        let parts: Vec<(String, i32)> = tps(&until).map(|(t, p, _)| (t.to_string(), p)).collect();
        let earliest = self.list_offsets(parts.clone(), &Offsets::new(), -2).await?;
        let latest = self.list_offsets(parts, &Offsets::new(), -1).await?;
        // topic -> partition -> (from, until, slot)
        let mut plan: BTreeMap<String, BTreeMap<i32, (i64, i64, u32)>> = BTreeMap::new();
        for (slot, (t, p, u)) in tps(&until).enumerate() {
            let known = get(&from, t, p);
            let mut f = known.unwrap_or(0);
            let mut u = u;
            let lo = get(&earliest, t, p).unwrap_or(0);
            let hi = get(&latest, t, p).unwrap_or(0);
            if f < lo {
                match known {
                    None => self.data_loss(format!("added partition {t}-{p} starts from offset {lo} instead of 0"))?,
                    Some(_) => self.data_loss(format!(
                        "cannot read {t}-{p} from offset {f}: the earliest offset Kafka still has is {lo}"
                    ))?,
                }
                f = lo;
            }
            if u > hi {
                self.data_loss(format!("{t}-{p} should have offsets up to {u} but its latest offset is {hi}"))?;
                u = hi;
            }
            if f >= u {
                continue;
            }
            plan.entry(t.to_string()).or_default().insert(p, (f, u, slot as u32));
        }
        let consumer = self.consumer.clone();
        let schema = self.schema.clone();
        let poll_timeout = self.poll_timeout;
        let fail = self.fail_on_data_loss;
        let servers = self.servers.clone();
        blocking(move || {
            let mut out = Vec::new();
            for (topic, ranges) in &plan {
                out.extend(Self::read_topic(&consumer, topic, ranges, &schema, poll_timeout, fail)?);
            }
            Ok::<_, String>(out)
        })
        .await?
        .map_err(|message| Error::Source {
            source_name: C.into(),
            message: format!("{message} (bootstrap servers {servers})"),
            kind: ErrorKind::External,
        })
    }

    async fn commit(&mut self, end: &Offset) -> Result<()> {
        if !self.commit_offsets {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p, v) in tps(&offsets_of(end)?) {
            tpl.add_partition_offset(t, p, KOffset::Offset(v)).map_err(|e| Error::Internal(e.to_string()))?;
        }
        // Publishing progress to the group is informational (the checkpoint is the truth), so
        // a failure is logged, not fatal.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(source = C, error = %e, "could not commit offsets to the consumer group");
        }
        Ok(())
    }

    fn log_entry(&self, start: Option<&Offset>, _end: &Offset) -> Option<serde_json::Value> {
        // Batch 0 records the resolved starting offsets, so a rerun of it reads the same range.
        match (start, &self.initial) {
            (None, Some(i)) => Some(serde_json::json!({ "initialOffsets": i })),
            _ => None,
        }
    }

    async fn restore(&mut self, log: Vec<(u64, serde_json::Value)>, _last: Option<&Offset>) -> Result<()> {
        for (_, entry) in log {
            if let Some(i) = entry.get("initialOffsets") {
                self.initial = Some(serde_json::from_value(i.clone()).map_err(|e| Error::CorruptCheckpoint {
                    path: "sources/0/0".into(),
                    reason: format!("bad initialOffsets: {e}"),
                })?);
            }
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.finished
    }

    fn latest_available(&self) -> Option<Offset> {
        (!self.latest.is_empty()).then(|| to_offset(&self.latest))
    }

    fn metrics(&self, end: &Offset) -> BTreeMap<String, String> {
        let Ok(end) = offsets_of(end) else { return BTreeMap::new() };
        let behind: Vec<i64> = tps(&self.latest).map(|(t, p, hi)| (hi - get(&end, t, p).unwrap_or(0)).max(0)).collect();
        if behind.is_empty() {
            return BTreeMap::new();
        }
        let min = behind.iter().min().copied().unwrap_or(0);
        let max = behind.iter().max().copied().unwrap_or(0);
        let avg = behind.iter().sum::<i64>() as f64 / behind.len() as f64;
        BTreeMap::from([
            ("minOffsetsBehindLatest".to_string(), min.to_string()),
            ("maxOffsetsBehindLatest".to_string(), max.to_string()),
            ("avgOffsetsBehindLatest".to_string(), format!("{avg:.1}")),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_splits_like_spark() {
        let mut from = Offsets::new();
        set(&mut from, "t", 0, 0);
        set(&mut from, "t", 1, 100);
        let mut until = Offsets::new();
        set(&mut until, "t", 0, 300);
        set(&mut until, "t", 1, 200);
        set(&mut until, "t", 2, 1);
        let r = rate_limit(&from, &until, 40);
        // 401 available: partition 0 gets 300/401 of 40, partition 1 100/401, partition 2 at least 1.
        assert_eq!(get(&r, "t", 0), Some(29));
        assert_eq!(get(&r, "t", 1), Some(109));
        assert_eq!(get(&r, "t", 2), Some(1));
        assert_eq!(rate_limit(&from, &until, 1000), until);
    }

    #[test]
    fn offsets_json_round_trips_in_spark_format() {
        let mut o = Offsets::new();
        set(&mut o, "events", 10, 5);
        set(&mut o, "events", 2, 7);
        let json = serde_json::to_string(&to_offset(&o).0).unwrap_or_default();
        // Spark's shape: topic -> partition (as a string) -> next offset.
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(parsed, serde_json::json!({"events": {"2": 7, "10": 5}}));
        assert_eq!(offsets_of(&to_offset(&o)).ok(), Some(o));
        assert!(offsets_of(&Offset(serde_json::json!({"events": {"x": 1}}))).is_err());
    }
}
