//! The `kafka` source (Spark's `format("kafka")`): Spark's options, schema and offset JSON, on
//! librdkafka.
//!
//! Offsets are `{"topic": {"0": 42, "1": 17}}`, the next offset to read per partition, exactly
//! Spark's format; they live in Sluice's checkpoint, never in Kafka, so a batch can be read
//! again byte for byte after a crash. A batch is the records of each partition's range
//! `[start, end)` by offset number (transaction markers and compaction leave gaps: that is fine).
//!
//! Two readers serve those ranges.
//!
//! * **Prefetching** (an unbounded query: no `available_now`, `once` or `endingOffsets`): a
//!   `Prefetch` thread (`sluice-kafka-prefetch`) with its own consumer, assigned by hand at the
//!   offsets the query goes on from, polls all the time and keeps each record in a per-partition
//!   buffer that holds every record with offset in `[base, next)`, then wakes the engine
//!   (`Source::waker`). `latest_offset` is the buffer's `next` per partition (no ListOffsets;
//!   topic metadata at most once a second, to find new and deleted partitions, which restart the
//!   prefetcher), `get_batch` builds the range from the buffer without any broker call, and
//!   `commit` drops what is below the committed end. The buffer is bounded (records and bytes):
//!   when full, the prefetcher stops polling until a commit frees space. Data loss (offsets gone
//!   under `failOnDataLoss`) and fatal consumer errors it meets are reported by the next
//!   `latest_offset`; with `failOnDataLoss = false` librdkafka skips lost offsets itself.
//! * **Exact reads** (bounded queries, and any range the buffer does not hold, e.g. a batch
//!   re-run after a restart): ListOffsets plan the batch, and the source's consumer, assigned by
//!   hand (no group rebalancing), reads exactly `[start, end)`: a partition is finished when a
//!   record at `end - 1` or beyond arrives, or librdkafka reports the end of the partition
//!   (ranges never pass the latest offset, so the end of the partition is at or after `end` even
//!   when transaction markers or compaction leave gaps). Partitions are read one topic at a time,
//!   because librdkafka's end-of-partition event names only the partition number.
//!
//! Both readers return the same rows for a range, with the same logical partition (slot) per
//! topic-partition, so a batch read from the buffer and re-run from Kafka after a crash agree.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message, Timestamp};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset as KOffset, TopicPartitionList};
use tokio::sync::Notify;

use super::{Offset, Partitioned, ReadLimit, Source, SourceTimes, push_time};
use crate::error::{Error, ErrorKind, Result};
use crate::kafka::{Retry, blocking, blocking_retry, client_config, create};
use crate::options::Options;

const C: &str = "kafka source";

/// Next offset to read, per topic and partition (Spark's `KafkaSourceOffset` JSON).
pub(crate) type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Rows per Arrow batch handed to the steps.
const CHUNK_ROWS: usize = 64 * 1024;

/// The prefetcher stops polling while its buffer holds this many records...
const BUFFER_RECORDS: usize = 256 * 1024;
/// ... or this many bytes (payloads, headers and per-record overhead).
const BUFFER_BYTES: usize = 64 << 20;
/// How long one poll of the prefetcher waits for a record; it bounds how long stopping takes.
const PREFETCH_POLL: Duration = Duration::from_millis(50);
/// How long a prefetcher with a full buffer sleeps before it looks again.
const FULL_PAUSE: Duration = Duration::from_millis(5);
/// Most records the prefetcher moves into the buffer under one lock.
const PREFETCH_DRAIN: usize = 1024;
/// How often the prefetching path reads topic metadata (to find new and deleted partitions).
const METADATA_EVERY: Duration = Duration::from_secs(1);
/// A buffered range of at most this many offsets is built on the calling task; a larger one on
/// the blocking pool.
const INLINE_OFFSETS: i64 = 4096;
/// How often the prefetcher repeats a warning about the same consumer error.
const WARN_EVERY: Duration = Duration::from_secs(10);

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
    "minPartitions",
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
    /// Spark's `minPartitions`: cut the batch's ranges into about this many pieces.
    min_partitions: Option<u64>,
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
    /// The consumer's configuration, for the prefetcher's own consumer.
    config: ClientConfig,
    /// Woken by the prefetcher when records arrive; shared by every prefetcher of the source.
    notify: Arc<Notify>,
    /// The reader of an unbounded query, started by the first `latest_offset`.
    prefetch: Option<Prefetch>,
    /// The subscription's partitions and when they were read (prefetching path only).
    parts_cache: Option<(Instant, Vec<(String, i32)>)>,
    /// Source times of the rows the last `get_batch` returned.
    times: SourceTimes,
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
        // Spark's option is an Int.
        let min_partitions = positive("minPartitions")?;
        if min_partitions.is_some_and(|m| m > i32::MAX as u64) {
            return Err(options.invalid(C, "minPartitions", "must be at most 2147483647"));
        }
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
            min_partitions,
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
            config,
            notify: Arc::new(Notify::new()),
            prefetch: None,
            parts_cache: None,
            times: SourceTimes::new(),
        })
    }

    /// Whether rows carry a `headers` column (`includeHeaders`).
    fn include_headers(&self) -> bool {
        self.schema.field_with_name("headers").is_ok()
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

    /// [`Self::partitions`], read at most once per [`METADATA_EVERY`] (the prefetching path asks
    /// for the latest offsets every few milliseconds; partitions change rarely).
    async fn cached_partitions(&mut self) -> Result<Vec<(String, i32)>> {
        if let Some((at, parts)) = &self.parts_cache
            && at.elapsed() < METADATA_EVERY
        {
            return Ok(parts.clone());
        }
        let parts = self.partitions().await?;
        self.parts_cache = Some((Instant::now(), parts.clone()));
        Ok(parts)
    }

    /// Reports what the prefetcher failed on: data loss as [`Self::data_loss`] does, anything
    /// else as an error.
    fn report(&self, failure: Failure) -> Result<()> {
        match failure {
            Failure::DataLoss(what) => self.data_loss(what),
            Failure::Fatal(what) => Err(Error::Source {
                source_name: C.into(),
                message: format!("{what} (bootstrap servers {})", self.servers),
                kind: ErrorKind::External,
            }),
        }
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

    /// The end of the next batch from `from`, given each partition's `latest` offset: data loss
    /// checks (deleted partitions, offsets that went back), the bound, `minOffsetsPerTrigger` /
    /// `maxTriggerDelay` (skipped when the prefetch buffer is `full`: more cannot come before a
    /// batch frees it) and `maxOffsetsPerTrigger`; `None` when there is nothing new.
    fn plan(&mut self, from: Offsets, latest: Offsets, limit: ReadLimit, full: bool) -> Result<Option<Offset>> {
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
                && !full
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

    /// `latest_offset` of an unbounded query: the prefetch buffer's ends, no ListOffsets.
    async fn latest_prefetched(&mut self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>> {
        let parts = self.cached_partitions().await?;
        let from = match start {
            Some(o) => offsets_of(o)?,
            None => self.initial_offsets(&parts).await?,
        };
        self.ensure_prefetch(&parts, &from)?;
        let (latest, failure, full) = match &self.prefetch {
            Some(p) => {
                let mut b = p.lock();
                (b.next_offsets(), b.failure.take(), b.full())
            }
            None => (Offsets::new(), None, false),
        };
        if let Some(failure) = failure {
            // Its consumer stopped at the failure; the next call starts a fresh one.
            self.prefetch = None;
            self.report(failure)?;
        }
        self.plan(from, latest, limit, full)
    }

    /// Makes sure a prefetcher reads exactly `parts`, with its buffer able to serve ranges that
    /// start at `from` (a partition missing from `from` starts at 0, as in [`Self::plan`]);
    /// otherwise (first call, partitions added or deleted, the query went back or jumped ahead)
    /// starts a new one at `from`.
    fn ensure_prefetch(&mut self, parts: &[(String, i32)], from: &Offsets) -> Result<()> {
        if parts.is_empty() {
            self.prefetch = None;
            return Ok(());
        }
        if let Some(p) = &self.prefetch
            && p.parts == parts
            && p.lock().serves(from)
        {
            return Ok(());
        }
        let mut starts = Offsets::new();
        for (t, p) in parts {
            set(&mut starts, t, *p, get(from, t, *p).unwrap_or(0));
        }
        tracing::info!(
            source = C,
            offsets = %serde_json::to_string(&starts).unwrap_or_default(),
            restart = self.prefetch.is_some(),
            "starting the kafka prefetcher"
        );
        // The old one stops (its thread ends within a poll) before the new one starts.
        self.prefetch = None;
        let p = Prefetch::start(&self.config, &starts, self.include_headers(), self.notify.clone()).map_err(|e| {
            Error::Source {
                source_name: C.into(),
                message: format!("starting the prefetching consumer: {e} (bootstrap servers {})", self.servers),
                kind: ErrorKind::External,
            }
        })?;
        self.prefetch = Some(p);
        Ok(())
    }

    /// `get_batch` from the prefetch buffer, which holds the whole range: no broker call. Small
    /// ranges are built on the calling task (the latency path), large ones on the blocking pool.
    async fn read_buffered(&mut self, from: &Offsets, until: &Offsets) -> Result<Partitioned> {
        let Some(p) = &self.prefetch else {
            return Err(Error::Internal("kafka source: reading a buffered range without a prefetcher".into()));
        };
        let shared = p.shared.clone();
        let slices = slices(from, until, self.min_partitions);
        let schema = self.schema.clone();
        let offsets: i64 = slices.iter().map(|s| s.until - s.from).sum();
        let build = move || build_batches(&lock(&shared.buffer), &slices, &schema);
        let built = if offsets <= INLINE_OFFSETS { build() } else { blocking(build).await? };
        let (out, times) = built.map_err(|e| Error::Internal(format!("kafka source: building a batch: {e}")))?;
        self.times = times;
        Ok(out)
    }

    /// Reads the pieces `[from, until)` of each partition of one topic (contiguous, in offset
    /// order), each as its logical partition, adding the rows' source times to `times`.
    fn read_topic(
        consumer: &BaseConsumer,
        topic: &str,
        ranges: &BTreeMap<i32, Vec<Piece>>,
        schema: &SchemaRef,
        poll_timeout: Duration,
        fail_on_data_loss: bool,
        times: &mut SourceTimes,
    ) -> std::result::Result<Vec<(u32, RecordBatch)>, String> {
        let include_headers = schema.field_with_name("headers").is_ok();
        let mut tpl = TopicPartitionList::new();
        for (p, pieces) in ranges {
            tpl.add_partition_offset(topic, *p, KOffset::Offset(span(pieces).0)).map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| format!("assigning {topic}: {e}"))?;
        // Per partition: the rows of the piece being read, and that piece's index.
        let mut builders: BTreeMap<i32, (Rows, usize)> =
            ranges.keys().map(|p| (*p, (Rows::new(include_headers), 0))).collect();
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
                                let (from, until) = span(&ranges[p]);
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
                    let (Some(pieces), Some((rows, at))) = (ranges.get(&p), builders.get_mut(&p)) else {
                        continue;
                    };
                    let (from, until) = span(pieces);
                    let off = m.offset();
                    if off < from || !pending.contains(&p) {
                        continue;
                    }
                    last_progress = Instant::now();
                    // Past the current piece: its rows are complete.
                    while *at + 1 < pieces.len() && off >= pieces[*at].1 {
                        if rows.len() > 0 {
                            out.push((pieces[*at].2, rows.finish(schema).map_err(|e| e.to_string())?));
                        }
                        *at += 1;
                    }
                    if off < until {
                        push_time(times, rows.push(&m, topic), 1);
                        if rows.len() >= CHUNK_ROWS {
                            out.push((pieces[*at].2, rows.finish(schema).map_err(|e| e.to_string())?));
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
        for (p, (mut rows, at)) in builders {
            if rows.len() > 0 {
                out.push((ranges[&p][at].2, rows.finish(schema).map_err(|e| e.to_string())?));
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

    /// Appends a record read by a consumer; returns its source time in ms (Kafka's timestamp, or
    /// now when it has none).
    fn push<M: Message>(&mut self, m: &M, topic: &str) -> i64 {
        let (ts, kind) = timestamp_of(m.timestamp());
        self.push_fields(m.key(), m.payload(), topic, m.partition(), m.offset(), (ts, kind));
        if let Some(h) = &mut self.headers {
            append_headers(h, m.headers().map(|hs| hs.iter().map(|x| (x.key, x.value))));
        }
        self.len += 1;
        if kind < 0 { now_ms() } else { ts }
    }

    /// Appends a buffered record of `topic`-`partition`.
    fn push_record(&mut self, r: &Record, topic: &str, partition: i32) {
        let ts = if r.kind < 0 { 0 } else { r.ms };
        self.push_fields(r.key.as_deref(), r.value.as_deref(), topic, partition, r.offset, (ts, r.kind));
        if let Some(h) = &mut self.headers {
            append_headers(h, r.headers.as_ref().map(|hs| hs.iter().map(|(k, v)| (k.as_str(), v.as_deref()))));
        }
        self.len += 1;
    }

    /// The columns every record has; `time` is Spark's `timestamp` (ms) and `timestampType`.
    fn push_fields(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        topic: &str,
        partition: i32,
        offset: i64,
        time: (i64, i32),
    ) {
        self.key.append_option(key);
        self.value.append_option(value);
        self.topic.append_value(topic);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.timestamp.append_value(time.0.saturating_mul(1000));
        self.timestamp_type.append_value(time.1);
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

/// Appends one row's headers as `(key, value)` pairs; `None` (the record has none) is null.
fn append_headers<'a>(
    h: &mut ListBuilder<StructBuilder>,
    headers: Option<impl Iterator<Item = (&'a str, Option<&'a [u8]>)>>,
) {
    let Some(headers) = headers else {
        h.append(false);
        return;
    };
    for (key, value) in headers {
        let s = h.values();
        if let Some(k) = s.field_builder::<StringBuilder>(0) {
            k.append_value(key);
        }
        if let Some(v) = s.field_builder::<BinaryBuilder>(1) {
            v.append_option(value);
        }
        s.append(true);
    }
    h.append(true);
}

/// Spark's `timestamp` (ms) and `timestampType` of a Kafka timestamp: 0 = create time, 1 = log
/// append time, -1 = none (timestamp 0).
fn timestamp_of(t: Timestamp) -> (i64, i32) {
    match t {
        Timestamp::CreateTime(t) => (t, 0),
        Timestamp::LogAppendTime(t) => (t, 1),
        Timestamp::NotAvailable => (0, -1),
    }
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
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

/// One record the prefetcher received, owned.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// Kafka's timestamp (ms), or when the prefetcher received the record if it has none: the
    /// row's source time.
    ms: i64,
    /// Spark's `timestampType`; -1: Kafka has no timestamp (the `timestamp` column is then 0).
    kind: i32,
    /// `(key, value)` pairs; `None` when the record has none or `includeHeaders` is off.
    headers: Option<Vec<(String, Option<Vec<u8>>)>>,
}

impl Record {
    fn from_message<M: Message>(m: &M, include_headers: bool) -> Self {
        let (ts, kind) = timestamp_of(m.timestamp());
        let headers = if include_headers {
            m.headers().map(|hs| hs.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
        } else {
            None
        };
        Record {
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            ms: if kind < 0 { now_ms() } else { ts },
            kind,
            headers,
        }
    }

    /// What the record costs the buffer, in bytes.
    fn size(&self) -> usize {
        let len = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len);
        let headers: usize = self.headers.iter().flatten().map(|(k, v)| k.len() + len(v) + 48).sum();
        std::mem::size_of::<Record>() + len(&self.key) + len(&self.value) + headers
    }
}

/// Whether a buffer holding every record with offset in `[base, next)` can serve the range
/// `[from, end)` (an empty range needs nothing).
fn covers(base: i64, next: i64, from: i64, end: i64) -> bool {
    from >= end || (base <= from && end <= next)
}

/// One partition's buffered records: every record with offset in `[base, next)`, by offset.
#[derive(Debug, Default)]
struct Part {
    /// The first offset held: where the prefetcher started, then the last commit.
    base: i64,
    /// The last record's offset + 1 (or `base` before any record): the latest offset the
    /// prefetching path reports.
    next: i64,
    records: VecDeque<Record>,
}

impl Part {
    fn new(start: i64) -> Self {
        Part { base: start, next: start, records: VecDeque::new() }
    }

    /// Appends a record that arrived; returns its size, or `None` when it is not new (below
    /// `next`: already held, or committed).
    fn push(&mut self, r: Record) -> Option<usize> {
        if r.offset < self.next {
            return None;
        }
        self.next = r.offset + 1;
        let size = r.size();
        self.records.push_back(r);
        Some(size)
    }

    /// Forgets the records below `end` (committed); returns how many records and bytes that
    /// freed. Records in `[next, end)` that arrive later are not kept either.
    fn trim(&mut self, end: i64) -> (usize, usize) {
        self.base = self.base.max(end);
        self.next = self.next.max(self.base);
        let (mut records, mut bytes) = (0, 0);
        while self.records.front().is_some_and(|r| r.offset < self.base) {
            let Some(r) = self.records.pop_front() else { break };
            records += 1;
            bytes += r.size();
        }
        (records, bytes)
    }

    /// The records with offset in `[from, end)`.
    fn range(&self, from: i64, end: i64) -> impl Iterator<Item = &Record> {
        let first = self.records.partition_point(|r| r.offset < from);
        self.records.range(first..).take_while(move |r| r.offset < end)
    }
}

/// What stopped the prefetcher, for the next `latest_offset` to report.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    /// Offsets it was to read are gone (retention, topic recreation): data loss.
    DataLoss(String),
    /// The consumer cannot go on.
    Fatal(String),
}

/// The prefetcher's records, per topic and partition, shared with the source.
#[derive(Debug, Default)]
struct Buffer {
    parts: BTreeMap<String, BTreeMap<i32, Part>>,
    /// Records held, all partitions.
    records: usize,
    /// Their [`Record::size`]s.
    bytes: usize,
    failure: Option<Failure>,
}

impl Buffer {
    /// An empty buffer for partitions starting at `starts`.
    fn new(starts: &Offsets) -> Self {
        let mut b = Buffer::default();
        for (t, p, v) in tps(starts) {
            b.parts.entry(t.to_string()).or_default().insert(p, Part::new(v));
        }
        b
    }

    fn part(&self, topic: &str, partition: i32) -> Option<&Part> {
        self.parts.get(topic).and_then(|m| m.get(&partition))
    }

    /// Adds a record of `topic`-`partition`; returns whether it was new.
    fn append(&mut self, topic: &str, partition: i32, r: Record) -> bool {
        let Some(part) = self.parts.get_mut(topic).and_then(|m| m.get_mut(&partition)) else { return false };
        match part.push(r) {
            Some(size) => {
                self.records += 1;
                self.bytes += size;
                true
            }
            None => false,
        }
    }

    /// Whether the prefetcher must wait for a commit before it reads more.
    fn full(&self) -> bool {
        self.records >= BUFFER_RECORDS || self.bytes >= BUFFER_BYTES
    }

    /// Each partition's `next`: the latest offsets of the prefetching path.
    fn next_offsets(&self) -> Offsets {
        let mut o = Offsets::new();
        for (t, parts) in &self.parts {
            for (p, part) in parts {
                set(&mut o, t, *p, part.next);
            }
        }
        o
    }

    /// Whether batches starting at `from` can be served: every partition's start (0 when `from`
    /// does not have it, a new partition) lies within `[base, next]`.
    fn serves(&self, from: &Offsets) -> bool {
        self.parts.iter().all(|(t, parts)| {
            parts.iter().all(|(p, part)| {
                let f = get(from, t, *p).unwrap_or(0);
                part.base <= f && f <= part.next
            })
        })
    }

    /// Whether the buffer holds every record of the batch `from` → `until`.
    fn covers(&self, from: &Offsets, until: &Offsets) -> bool {
        slices(from, until, None)
            .iter()
            .all(|s| self.part(&s.topic, s.partition).is_some_and(|p| covers(p.base, p.next, s.from, s.until)))
    }

    /// Forgets what is below the committed offsets `end`.
    fn trim(&mut self, end: &Offsets) {
        for (t, p, v) in tps(end) {
            if let Some(part) = self.parts.get_mut(t).and_then(|m| m.get_mut(&p)) {
                let (records, bytes) = part.trim(v);
                self.records = self.records.saturating_sub(records);
                self.bytes = self.bytes.saturating_sub(bytes);
            }
        }
    }
}

/// A piece of a partition's range for the exact read: `[from, until)` as logical partition
/// `slot`.
type Piece = (i64, i64, u32);

/// Where a partition's pieces start and end (they are contiguous and never empty).
fn span(pieces: &[Piece]) -> (i64, i64) {
    (pieces.first().map_or(0, |p| p.0), pieces.last().map_or(0, |p| p.1))
}

/// One partition's share of a batch: offsets `[from, until)`, as logical partition `slot`.
#[derive(Debug, Clone, PartialEq)]
struct Slice {
    topic: String,
    partition: i32,
    from: i64,
    until: i64,
    slot: u32,
}

/// The non-empty ranges of the batch `from` → `until` (a partition `from` lacks starts at 0),
/// in `tps(until)` order; both readers use them, so they put a record in the same logical
/// partition.
///
/// By default a topic-partition is always the same logical partition: its index in `until`
/// (Spark's 1-1 mapping). With `min_partitions` (Spark's `minPartitions`) above the number of
/// non-empty ranges, each range is cut by offset into pieces in proportion to its size (at least
/// one; Spark's `KafkaOffsetRangeCalculator`), numbered from 0 in order: the cut depends only on
/// `from` and `until`, so a batch read again after a crash is cut the same way.
fn slices(from: &Offsets, until: &Offsets, min_partitions: Option<u64>) -> Vec<Slice> {
    let whole: Vec<Slice> = tps(until)
        .enumerate()
        .filter_map(|(slot, (t, p, u))| {
            let f = get(from, t, p).unwrap_or(0);
            (f < u).then(|| Slice { topic: t.to_string(), partition: p, from: f, until: u, slot: slot as u32 })
        })
        .collect();
    let min = match min_partitions {
        Some(m) if m > whole.len() as u64 => m as f64,
        _ => return whole,
    };
    let total = whole.iter().map(|s| s.until - s.from).sum::<i64>() as f64;
    let mut out: Vec<Slice> = Vec::new();
    for s in whole {
        let size = s.until - s.from;
        // At least one piece, at most one per offset.
        let parts = ((size as f64 / total * min).round() as i64).clamp(1, size);
        let (mut start, mut remaining) = (s.from, size);
        for part in 0..parts {
            // The last pieces take the rounding: sizes differ by at most one.
            let this = remaining / (parts - part);
            remaining -= this;
            if this > 0 {
                let slot = out.len() as u32;
                out.push(Slice { from: start, until: start + this, slot, ..s.clone() });
            }
            start += this;
        }
    }
    out
}

/// The Arrow batches (at most [`CHUNK_ROWS`] rows each) of `slices` from the buffer, and the
/// rows' source times.
fn build_batches(
    buf: &Buffer,
    slices: &[Slice],
    schema: &SchemaRef,
) -> std::result::Result<(Partitioned, SourceTimes), ArrowError> {
    let include_headers = schema.field_with_name("headers").is_ok();
    let mut out = Vec::new();
    let mut times = SourceTimes::new();
    for s in slices {
        let Some(part) = buf.part(&s.topic, s.partition) else { continue };
        let mut rows = Rows::new(include_headers);
        for r in part.range(s.from, s.until) {
            rows.push_record(r, &s.topic, s.partition);
            push_time(&mut times, r.ms, 1);
            if rows.len() >= CHUNK_ROWS {
                out.push((s.slot, rows.finish(schema)?));
            }
        }
        if rows.len() > 0 {
            out.push((s.slot, rows.finish(schema)?));
        }
    }
    Ok((out, times))
}

/// What the source and its prefetch thread share.
#[derive(Debug, Default)]
struct Shared {
    buffer: Mutex<Buffer>,
    /// Set when the prefetcher is dropped: the thread ends after its current poll.
    stop: AtomicBool,
}

/// Locks the buffer; a panic of the other side cannot leave it half-updated in a way that
/// matters (every update is a push or a trim), so a poisoned lock is used as is.
fn lock(m: &Mutex<Buffer>) -> MutexGuard<'_, Buffer> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The reader of an unbounded query: a thread with its own consumer, assigned by hand, that
/// keeps what it polls in a [`Buffer`] and wakes the engine. Dropping it stops the thread
/// (within one poll; the thread is not waited for, and closes its consumer itself).
struct Prefetch {
    shared: Arc<Shared>,
    /// The partitions it reads, sorted as [`KafkaSource::partitions`] returns them.
    parts: Vec<(String, i32)>,
}

impl Prefetch {
    /// Starts reading each partition of `starts` at its offset.
    fn start(
        config: &ClientConfig,
        starts: &Offsets,
        include_headers: bool,
        notify: Arc<Notify>,
    ) -> std::result::Result<Self, String> {
        let mut config = config.clone();
        // Ranges are served from the buffer: the end of a partition means nothing here.
        config.set("enable.partition.eof", "false");
        let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for (t, p, v) in tps(starts) {
            tpl.add_partition_offset(t, p, KOffset::Offset(v)).map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| format!("assigning partitions: {e}"))?;
        let shared = Arc::new(Shared { buffer: Mutex::new(Buffer::new(starts)), stop: AtomicBool::new(false) });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("sluice-kafka-prefetch".into())
            .spawn(move || prefetch_loop(&consumer, &thread_shared, &notify, include_headers))
            .map_err(|e| format!("starting the prefetch thread: {e}"))?;
        let parts = tps(starts).map(|(t, p, _)| (t.to_string(), p)).collect();
        Ok(Prefetch { shared, parts })
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        lock(&self.shared.buffer)
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The prefetch thread: polls until stopped, moving what arrives into the buffer (up to
/// [`PREFETCH_DRAIN`] records under one lock) and waking the engine after each poll that added
/// something. With a full buffer it does not poll (librdkafka's own queue then fills and its
/// fetching stops) until a commit frees space.
fn prefetch_loop(consumer: &BaseConsumer, shared: &Shared, notify: &Notify, include_headers: bool) {
    let mut warnings = Warnings::default();
    while !shared.stop.load(Ordering::Relaxed) {
        if lock(&shared.buffer).full() {
            std::thread::sleep(FULL_PAUSE);
            continue;
        }
        let Some(first) = consumer.poll(PREFETCH_POLL) else { continue };
        let mut buf = lock(&shared.buffer);
        let mut woke = handle(&mut buf, first, include_headers, &mut warnings);
        for _ in 0..PREFETCH_DRAIN {
            if buf.full() {
                break;
            }
            match consumer.poll(Duration::ZERO) {
                Some(event) => woke |= handle(&mut buf, event, include_headers, &mut warnings),
                None => break,
            }
        }
        drop(buf);
        if woke {
            notify.notify_one();
        }
    }
    tracing::debug!(source = C, "kafka prefetcher stopped");
}

/// Takes one poll result into the buffer; returns whether the engine should look (a new
/// record, or a failure to report).
fn handle(
    buf: &mut Buffer,
    event: KafkaResult<BorrowedMessage<'_>>,
    include_headers: bool,
    warnings: &mut Warnings,
) -> bool {
    let e = match event {
        Ok(m) => {
            let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
            // librdkafka never delivers below its fetch position, unless the log went back (the
            // topic was recreated or truncated) and it started over from the earliest offset
            // (failOnDataLoss = false): what is behind is skipped until the log catches up.
            if let Some(part) = buf.part(topic, partition)
                && offset < part.next
            {
                warnings.warn(format!(
                    "{topic}-{partition} went back (recreated or truncated): skipping its records below offset {}",
                    part.next
                ));
                return false;
            }
            return buf.append(topic, partition, Record::from_message(&m, include_headers));
        }
        Err(KafkaError::PartitionEOF(_)) => return false,
        Err(e) => e,
    };
    let lost =
        matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset));
    let failure = if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
        Failure::Fatal(format!("prefetching from kafka: {e}"))
    } else if lost {
        // librdkafka does not say which partition: name where each one was.
        let at: Vec<String> = tps(&buf.next_offsets()).map(|(t, p, v)| format!("{t}-{p} at offset {v}")).collect();
        Failure::DataLoss(format!(
            "cannot read on from {}: {e}: the requested offsets are gone (retention or topic recreation)",
            at.join(", ")
        ))
    } else {
        warnings.warn(format!("kafka consumer error while prefetching (librdkafka retries): {e}"));
        return false;
    };
    if buf.failure.is_none() {
        buf.failure = Some(failure);
    }
    true
}

/// Throttles the prefetcher's warnings (transient consumer errors, which librdkafka retries,
/// and skipped records): a broker that is down reports the same error again and again.
#[derive(Debug, Default)]
struct Warnings {
    /// The last warning logged, and when.
    last: Option<(String, Instant)>,
    /// How many times it came again since.
    repeated: u64,
}

impl Warnings {
    /// Logs `text`, unless it is the last warning again within [`WARN_EVERY`].
    fn warn(&mut self, text: String) {
        if let Some((last, at)) = &self.last
            && *last == text
            && at.elapsed() < WARN_EVERY
        {
            self.repeated += 1;
            return;
        }
        tracing::warn!(source = C, repeated = self.repeated, "{text}");
        self.last = Some((text, Instant::now()));
        self.repeated = 0;
    }
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
        // A bounded query reads exact ranges, never from a prefetch buffer.
        self.prefetch = None;
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
        if self.bound.is_none() {
            return self.latest_prefetched(start, limit).await;
        }
        let parts = self.partitions().await?;
        let latest = self.list_offsets(parts.clone(), &Offsets::new(), -1).await?;
        let from = match start {
            Some(o) => offsets_of(o)?,
            None => self.initial_offsets(&parts).await?,
        };
        self.plan(from, latest, limit, false)
    }

    async fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Partitioned> {
        self.times.clear();
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
        if self.bound.is_none() && self.prefetch.as_ref().is_some_and(|p| p.lock().covers(&from, &until)) {
            return self.read_buffered(&from, &until).await;
        }
        // Not prefetched (a bounded query, or a range from before the prefetcher started):
        // read the exact range from Kafka.
        let parts: Vec<(String, i32)> = tps(&until).map(|(t, p, _)| (t.to_string(), p)).collect();
        let earliest = self.list_offsets(parts.clone(), &Offsets::new(), -2).await?;
        let latest = self.list_offsets(parts, &Offsets::new(), -1).await?;
        // What can still be read of each partition's range.
        let mut readable: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
        for (t, p, u) in tps(&until) {
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
            readable.insert((t, p), (f, u));
        }
        // topic -> partition -> its pieces (from, until, slot), in offset order
        let mut plan: BTreeMap<String, BTreeMap<i32, Vec<Piece>>> = BTreeMap::new();
        for s in slices(&from, &until, self.min_partitions) {
            let (lo, hi) = readable.get(&(s.topic.as_str(), s.partition)).copied().unwrap_or((s.from, s.until));
            let (f, u) = (s.from.max(lo), s.until.min(hi));
            if f < u {
                plan.entry(s.topic).or_default().entry(s.partition).or_default().push((f, u, s.slot));
            }
        }
        let consumer = self.consumer.clone();
        let schema = self.schema.clone();
        let poll_timeout = self.poll_timeout;
        let fail = self.fail_on_data_loss;
        let servers = self.servers.clone();
        let (out, times) = blocking(move || {
            let mut out = Vec::new();
            let mut times = SourceTimes::new();
            for (topic, ranges) in &plan {
                out.extend(Self::read_topic(&consumer, topic, ranges, &schema, poll_timeout, fail, &mut times)?);
            }
            Ok::<_, String>((out, times))
        })
        .await?
        .map_err(|message| Error::Source {
            source_name: C.into(),
            message: format!("{message} (bootstrap servers {servers})"),
            kind: ErrorKind::External,
        })?;
        self.times = times;
        Ok(out)
    }

    async fn commit(&mut self, end: &Offset) -> Result<()> {
        // The prefetch buffer forgets what the batch consumed: no re-run will ask for it.
        if let Some(p) = &self.prefetch {
            let end = offsets_of(end)?;
            p.lock().trim(&end);
        }
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

    fn waker(&self) -> Option<Arc<Notify>> {
        // Only the prefetcher wakes the loop; a bounded query has no prefetcher.
        self.bound.is_none().then(|| self.notify.clone())
    }

    fn take_source_times(&mut self) -> SourceTimes {
        std::mem::take(&mut self.times)
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

    fn rec(offset: i64) -> Record {
        Record { offset, key: None, value: Some(vec![1, 2, 3]), ms: 1000 + offset, kind: 0, headers: None }
    }

    fn offsets(list: &[(&str, i32, i64)]) -> Offsets {
        let mut o = Offsets::new();
        for (t, p, v) in list {
            set(&mut o, t, *p, *v);
        }
        o
    }

    #[test]
    fn a_buffer_covers_ranges_inside_base_and_next() {
        assert!(covers(10, 20, 10, 20));
        assert!(covers(10, 20, 12, 15));
        assert!(!covers(10, 20, 9, 15), "starts below what is held");
        assert!(!covers(10, 20, 12, 21), "ends past what arrived");
        assert!(covers(10, 20, 25, 25), "an empty range needs nothing");
        assert!(covers(10, 10, 10, 10));
    }

    #[test]
    fn a_part_keeps_new_records_in_offset_order_and_trims_on_commit() {
        let mut p = Part::new(5);
        assert_eq!((p.base, p.next), (5, 5));
        assert!(p.push(rec(5)).is_some());
        assert!(p.push(rec(6)).is_some());
        // A gap (a transaction marker at 7) is fine: ranges are by offset number.
        assert!(p.push(rec(8)).is_some());
        assert_eq!(p.next, 9);
        assert!(p.push(rec(6)).is_none(), "already held");
        let got: Vec<i64> = p.range(6, 9).map(|r| r.offset).collect();
        assert_eq!(got, vec![6, 8]);
        let got: Vec<i64> = p.range(0, 7).map(|r| r.offset).collect();
        assert_eq!(got, vec![5, 6]);
        let (n, bytes) = p.trim(7);
        assert_eq!((n, bytes), (2, 2 * rec(0).size()));
        assert_eq!((p.base, p.next, p.records.len()), (7, 9, 1));
        // An older commit changes nothing.
        assert_eq!(p.trim(3), (0, 0));
        assert_eq!(p.base, 7);
        // A commit past what arrived: the buffer is empty at the commit, later records below it
        // are not kept.
        p.trim(12);
        assert_eq!((p.base, p.next, p.records.len()), (12, 12, 0));
        assert!(p.push(rec(11)).is_none());
        assert!(p.push(rec(12)).is_some());
        assert!(covers(p.base, p.next, 12, 13));
    }

    #[test]
    fn the_buffer_tracks_coverage_size_and_starts() {
        let mut b = Buffer::new(&offsets(&[("t", 0, 0), ("t", 1, 10)]));
        for o in 0..3 {
            assert!(b.append("t", 0, rec(o)));
        }
        assert!(b.append("t", 1, rec(10)));
        assert!(!b.append("t", 2, rec(0)), "not assigned");
        assert!(!b.append("u", 0, rec(0)), "not assigned");
        assert_eq!(b.records, 4);
        assert_eq!(b.bytes, 4 * rec(0).size());
        assert_eq!(b.next_offsets(), offsets(&[("t", 0, 3), ("t", 1, 11)]));
        assert!(!b.full());

        let from = offsets(&[("t", 0, 1), ("t", 1, 10)]);
        assert!(b.covers(&from, &offsets(&[("t", 0, 3), ("t", 1, 11)])));
        assert!(!b.covers(&from, &offsets(&[("t", 0, 4), ("t", 1, 11)])), "offset 3 has not arrived");
        assert!(!b.covers(&from, &offsets(&[("t", 0, 3), ("t", 1, 11), ("t", 2, 1)])), "t-2 is not prefetched");
        // A partition without records in the batch needs nothing from the buffer.
        assert!(b.covers(&offsets(&[("t", 0, 1), ("t", 2, 4)]), &offsets(&[("t", 0, 2), ("t", 2, 4)])));
        // A partition missing from `from` is new: it starts at 0.
        assert!(b.covers(&offsets(&[("t", 1, 10)]), &offsets(&[("t", 0, 2), ("t", 1, 10)])));

        assert!(b.serves(&offsets(&[("t", 0, 0), ("t", 1, 11)])));
        assert!(b.serves(&offsets(&[("t", 1, 10)])), "t-0 starts at 0");
        assert!(!b.serves(&offsets(&[("t", 0, 4), ("t", 1, 10)])), "past what arrived");

        b.trim(&offsets(&[("t", 0, 2), ("t", 1, 10), ("gone", 0, 5)]));
        assert_eq!(b.records, 2);
        assert_eq!(b.bytes, 2 * rec(0).size());
        assert!(!b.serves(&offsets(&[("t", 0, 1), ("t", 1, 10)])), "below the commit");
        assert!(!b.covers(&offsets(&[("t", 0, 1)]), &offsets(&[("t", 0, 3)])));
        assert!(b.covers(&offsets(&[("t", 0, 2)]), &offsets(&[("t", 0, 3)])));

        b.records = BUFFER_RECORDS;
        assert!(b.full());
    }

    #[test]
    fn slices_are_numbered_like_the_exact_read() {
        let until = offsets(&[("a", 0, 5), ("a", 1, 3), ("b", 0, 2)]);
        let from = offsets(&[("a", 0, 5), ("a", 1, 0)]);
        let got = |min: Option<u64>| -> Vec<(String, i32, i64, i64, u32)> {
            slices(&from, &until, min).into_iter().map(|s| (s.topic, s.partition, s.from, s.until, s.slot)).collect()
        };
        // a-0 has nothing new but keeps slot 0; b-0 is new and starts at 0.
        let one_to_one = vec![("a".into(), 1, 0, 3, 1), ("b".into(), 0, 0, 2, 2)];
        assert_eq!(got(None), one_to_one);
        // minPartitions at or below the non-empty ranges changes nothing (Spark's rule).
        assert_eq!(got(Some(2)), one_to_one);
        // Above: cut in proportion to size (3 of 5 offsets -> 2 pieces, 2 -> 1), numbered in order.
        assert_eq!(got(Some(3)), vec![("a".into(), 1, 0, 1, 0), ("a".into(), 1, 1, 3, 1), ("b".into(), 0, 0, 2, 2)]);
    }

    #[test]
    fn min_partitions_cuts_a_partition_into_contiguous_pieces() {
        let pieces = |from: i64, until: i64, min: u64| -> Vec<(i64, i64, u32)> {
            slices(&offsets(&[("t", 0, from)]), &offsets(&[("t", 0, until)]), Some(min))
                .into_iter()
                .map(|s| (s.from, s.until, s.slot))
                .collect()
        };
        assert_eq!(pieces(100, 1100, 4), vec![(100, 350, 0), (350, 600, 1), (600, 850, 2), (850, 1100, 3)]);
        // Sizes differ by at most one; the last pieces take the remainder.
        assert_eq!(pieces(0, 10, 3), vec![(0, 3, 0), (3, 6, 1), (6, 10, 2)]);
        // Fewer offsets than pieces: one offset each, no empty pieces (and no loop over the
        // pieces that would be empty, however large minPartitions is).
        assert_eq!(pieces(0, 2, 5), vec![(0, 1, 0), (1, 2, 1)]);
        assert_eq!(pieces(0, 3, i32::MAX as u64).len(), 3);
        // Nothing new: nothing to read.
        assert_eq!(pieces(7, 7, 4), vec![]);
        // The buffered reader puts each piece's records in its logical partition, in order.
        let mut b = Buffer::new(&offsets(&[("t", 0, 0)]));
        for i in 0..10 {
            b.append("t", 0, rec(i));
        }
        let s = slices(&offsets(&[("t", 0, 0)]), &offsets(&[("t", 0, 10)]), Some(3));
        let (out, _) = build_batches(&b, &s, &kafka_schema(false)).expect("builds");
        let got: Vec<(u32, Vec<i64>)> = out
            .iter()
            .map(|(slot, batch)| {
                let offs =
                    batch.column(4).as_any().downcast_ref::<arrow_array::Int64Array>().map(|a| a.values().to_vec());
                (*slot, offs.unwrap_or_default())
            })
            .collect();
        assert_eq!(got, vec![(0, vec![0, 1, 2]), (1, vec![3, 4, 5]), (2, vec![6, 7, 8, 9])]);
    }

    #[test]
    fn buffered_records_become_sparks_rows_with_source_times() {
        use arrow_array::{Array, BinaryArray, Int32Array, Int64Array, ListArray, StringArray};
        let schema = kafka_schema(true);
        let mut b = Buffer::new(&offsets(&[("t", 0, 0), ("t", 1, 0)]));
        let mut first = rec(0);
        first.key = Some(b"k".to_vec());
        first.headers = Some(vec![("h".into(), Some(b"v".to_vec())), ("n".into(), None)]);
        b.append("t", 0, first);
        b.append("t", 0, rec(1));
        let mut untimed = rec(2);
        untimed.kind = -1;
        untimed.ms = 5000;
        b.append("t", 0, untimed);
        b.append("t", 1, rec(0));
        let from = offsets(&[("t", 0, 0), ("t", 1, 0)]);
        let until = offsets(&[("t", 0, 3), ("t", 1, 0)]);
        let (out, times) = build_batches(&b, &slices(&from, &until, None), &schema).expect("builds");
        assert_eq!(out.len(), 1);
        let (slot, batch) = &out[0];
        assert_eq!(*slot, 0);
        assert_eq!(batch.num_rows(), 3);
        let col = |i: usize| batch.column(i).clone();
        let keys = col(0);
        let keys = keys.as_any().downcast_ref::<BinaryArray>().expect("key");
        assert_eq!(keys.value(0), b"k".as_slice());
        assert!(keys.is_null(1));
        let topics = col(2);
        assert_eq!(topics.as_any().downcast_ref::<StringArray>().expect("topic").value(2), "t");
        let offs = col(4);
        let offs: Vec<i64> = offs.as_any().downcast_ref::<Int64Array>().expect("offset").values().to_vec();
        assert_eq!(offs, vec![0, 1, 2]);
        let kinds = col(6);
        let kinds: Vec<i32> = kinds.as_any().downcast_ref::<Int32Array>().expect("type").values().to_vec();
        assert_eq!(kinds, vec![0, 0, -1]);
        let ts = col(5);
        let ts = ts.as_any().downcast_ref::<arrow_array::TimestampMicrosecondArray>().expect("timestamp");
        assert_eq!((ts.value(0), ts.value(2)), (1_000_000, 0), "no Kafka timestamp: 0, as Spark");
        let headers = col(7);
        let headers = headers.as_any().downcast_ref::<ListArray>().expect("headers");
        assert_eq!(headers.value(0).len(), 2);
        assert!(headers.is_null(1));
        // Source times: Kafka's timestamp, or when the record arrived.
        assert_eq!(times, vec![(1000, 1), (1001, 1), (5000, 1)]);
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
