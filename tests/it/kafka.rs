//! The Kafka source and sink against a real Apache Kafka broker (`scripts/kafka.sh start`, which
//! `scripts/test.sh` runs; the address comes from `SLUICE_KAFKA_BOOTSTRAP`). Output is read
//! back with a `read_committed` consumer.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::recovery::run_with_kills;
use crate::*;

pub(crate) fn bootstrap() -> String {
    std::env::var("SLUICE_KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!(
            "SLUICE_KAFKA_BOOTSTRAP is not set: the Kafka tests need a real broker. Run scripts/test.sh, or start one with `eval \"$(scripts/kafka.sh start)\"`"
        )
    })
}

pub(crate) fn topic(tag: &str) -> String {
    format!("it-{tag}-{}", uuid_like())
}

pub(crate) fn config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap());
    c
}

pub(crate) async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = config().create().expect("admin client");
    let r = admin
        .create_topics(&[NewTopic::new(name, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("create topic");
    for t in r {
        t.expect("topic created");
    }
}

async fn add_partitions(name: &str, total: usize) {
    let admin: AdminClient<DefaultClientContext> = config().create().expect("admin client");
    for t in
        admin.create_partitions(&[NewPartitions::new(name, total)], &AdminOptions::new()).await.expect("partitions")
    {
        t.expect("partitions added");
    }
}

async fn delete_records(name: &str, partition: i32, before: i64) {
    let admin: AdminClient<DefaultClientContext> = config().create().expect("admin client");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(name, partition, Offset::Offset(before)).expect("tpl");
    admin.delete_records(&tpl, &AdminOptions::new()).await.expect("delete records");
}

/// A record to produce: key, value, partition, headers.
struct Rec {
    key: Option<String>,
    value: String,
    partition: Option<i32>,
    headers: Vec<(String, String)>,
}

fn rec(key: &str, value: &str) -> Rec {
    Rec { key: Some(key.to_string()), value: value.to_string(), partition: None, headers: Vec::new() }
}

fn produce(topic: &str, records: &[Rec]) {
    let p: BaseProducer = config().set("linger.ms", "5").create().expect("producer");
    for r in records {
        let mut br: BaseRecord<'_, str, str> = BaseRecord::to(topic).payload(&r.value);
        if let Some(k) = &r.key {
            br = br.key(k);
        }
        if let Some(part) = r.partition {
            br = br.partition(part);
        }
        if !r.headers.is_empty() {
            let mut h = OwnedHeaders::new();
            for (k, v) in &r.headers {
                h = h.insert(Header { key: k, value: Some(v) });
            }
            br = br.headers(h);
        }
        let mut br = br;
        loop {
            match p.send(br) {
                Ok(()) => break,
                Err((_, b)) => {
                    br = b;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    partition: i32,
    offset: i64,
    key: Option<String>,
    value: Option<String>,
    headers: Vec<(String, String)>,
}

/// Every record of `topic`, read with `read_committed`, in partition then offset order.
fn consume_all(topic: &str) -> Vec<Got> {
    let c: BaseConsumer = config()
        .set("group.id", format!("it-reader-{}", uuid_like()))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let parts: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    assert!(!parts.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut pending: std::collections::BTreeSet<i32> = parts.iter().copied().collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(Got {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|g| (g.partition, g.offset));
    out
}

fn spec(text: &str) -> sluice::PipelineSpec {
    sluice::PipelineSpec::from_toml(text, "kafka-test.toml", &repo().join("examples")).expect("pipeline parses")
}

async fn run_to_end(text: &str) -> sluice::Result<Vec<sluice::StreamingQueryProgress>> {
    let q = session().start(&spec(text)).await?;
    let done = q.await_termination_timeout(Duration::from_secs(120)).await;
    assert!(matches!(done, Ok(true) | Err(_)), "query did not finish in 120 s: {:?}", q.status());
    done?;
    Ok(q.recent_progress())
}

/// Events with known per-user totals, keyed by user.
fn events(n: usize) -> (Vec<Rec>, BTreeMap<String, (i64, i64)>) {
    let mut recs = Vec::new();
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for i in 0..n {
        let user = format!("u{}", (i * 7919) % 13);
        let amount = (i % 100) as i64;
        recs.push(rec(&user, &format!("{{\"user\":\"{user}\",\"amount\":{amount}}}")));
        let e = expected.entry(user).or_default();
        e.0 += 1;
        e.1 += amount;
    }
    (recs, expected)
}

fn events_pipeline(input: &str, output: &str, ckpt: &Path, extra_source: &str) -> String {
    format!(
        r#"
name = "kafka-events"
checkpoint_location = "{ckpt}"

[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", subscribe = "{input}", startingOffsets = "earliest", maxOffsetsPerTrigger = "400" {extra_source} }}

[[transform]]
plugin = "plugins/json_parse.wasm"
config = {{ schema = "user STRING, amount BIGINT", mode = "FAILFAST" }}

[[transform]]
sql = "SELECT user AS key, to_json(named_struct('user', user, 'n', count(*), 'total', sum(amount))) AS value FROM input GROUP BY user"

[sink]
format = "kafka"
output_mode = "update"
options = {{ "kafka.bootstrap.servers" = "{bs}", topic = "{output}", deliveryGuarantee = "exactly_once" }}

[trigger]
available_now = true
"#,
        ckpt = ckpt.display(),
        bs = bootstrap(),
    )
}

/// The last value per key of an output topic, parsed as `{"user", "n", "total"}`.
fn last_totals(got: &[Got]) -> BTreeMap<String, (i64, i64)> {
    let mut m = BTreeMap::new();
    for g in got {
        let v: serde_json::Value = serde_json::from_str(g.value.as_deref().unwrap_or("null")).expect("json value");
        let user = v["user"].as_str().expect("user").to_string();
        assert_eq!(g.key.as_deref(), Some(user.as_str()), "key is the user");
        m.insert(user, (v["n"].as_i64().expect("n"), v["total"].as_i64().expect("total")));
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_plugin_to_aggregate_to_kafka_is_exact() {
    let (input, output) = (topic("events"), topic("totals"));
    create_topic(&input, 3).await;
    let (recs, expected) = events(3000);
    produce(&input, &recs);
    let dir = tempdir("kafka-e2e");
    let progress = run_to_end(&events_pipeline(&input, &output, &dir.join("ckpt"), "")).await.expect("query runs");
    // 3000 records at maxOffsetsPerTrigger 400: at least 8 batches.
    assert!(progress.len() >= 8, "{} batches", progress.len());
    assert_eq!(progress.iter().map(|p| p.num_input_rows).sum::<u64>(), 3000);
    // Lag metrics: behind while rate-limited, zero at the end.
    let first = &progress[0].sources[0];
    assert!(first.metrics["maxOffsetsBehindLatest"].parse::<i64>().expect("number") > 0, "{:?}", first.metrics);
    let last = &progress[progress.len() - 1].sources[0];
    assert_eq!(last.metrics["maxOffsetsBehindLatest"], "0");
    assert_eq!(last.end_offset.as_ref().map(|o| o[&input].as_object().map(|m| m.len())), Some(Some(3)));
    let got = consume_all(&output);
    assert_eq!(last_totals(&got), expected, "final totals per user");
    // Each batch updates each user at most once: no duplicates.
    assert!(got.len() <= 13 * progress.len(), "{} output records for {} batches", got.len(), progress.len());

    // A restart with the same checkpoint reads nothing again and writes nothing.
    let again = run_to_end(&events_pipeline(&input, &output, &dir.join("ckpt"), "")).await.expect("rerun");
    assert!(again.is_empty(), "{} batches after restart", again.len());
    // A crash after the Kafka transaction committed but before the checkpoint's commit: the
    // rerun of that batch finds the marker in Kafka and writes nothing twice.
    let last_batch = progress[progress.len() - 1].batch_id;
    std::fs::remove_file(dir.join("ckpt").join("commits").join(last_batch.to_string())).expect("drop the commit");
    let rerun = run_to_end(&events_pipeline(&input, &output, &dir.join("ckpt"), "")).await.expect("rerun");
    assert_eq!(rerun.iter().map(|p| p.batch_id).collect::<Vec<_>>(), vec![last_batch], "the last batch ran again");
    assert_eq!(consume_all(&output), got, "the rerun batch was not written twice");
    // New data continues from the checkpoint.
    produce(&input, &[rec("u1", r#"{"user":"u1","amount":1000}"#)]);
    let more = run_to_end(&events_pipeline(&input, &output, &dir.join("ckpt"), "")).await.expect("continue");
    assert_eq!(more.iter().map(|p| p.num_input_rows).sum::<u64>(), 1);
    let totals = last_totals(&consume_all(&output));
    let u1 = expected["u1"];
    assert_eq!(totals["u1"], (u1.0 + 1, u1.1 + 1000));
}

#[test]
fn exactly_once_kafka_sink_survives_sigkill() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let input = topic("crash-in");
    rt.block_on(create_topic(&input, 3));
    let (recs, expected) = events(2400);
    produce(&input, &recs);
    let dir = tempdir("kafka-crash");
    let run = |name: &str, seed: u64, kills: usize| -> (String, usize) {
        let output = topic(name);
        let text = events_pipeline(&input, &output, &dir.join(format!("ckpt-{name}")), "")
            .replace("plugins/json_parse.wasm", &plugin("json_parse").display().to_string());
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, text).expect("pipeline");
        (output, run_with_kills(&file, seed, kills))
    };
    let (clean, _) = run("clean", 1, 0);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7);
    let (crashy, kills) = run("crashy", seed, 12);
    assert!(kills >= 6, "only {kills} kills happened (seed {seed})");
    let per_key = |got: Vec<Got>| -> HashMap<String, Vec<String>> {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for g in got {
            m.entry(g.key.clone().unwrap_or_default()).or_default().push(g.value.unwrap_or_default());
        }
        m
    };
    let a = consume_all(&clean);
    let b = consume_all(&crashy);
    assert_eq!(last_totals(&a), expected);
    assert_eq!(a.len(), b.len(), "record count after {kills} kills (seed {seed})");
    assert_eq!(per_key(a), per_key(b), "per-key update sequence after {kills} kills (seed {seed})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_id_shared_by_two_checkpoints_is_an_error_not_a_skip() {
    let (input, output) = (topic("shared-in"), topic("shared-out"));
    create_topic(&input, 1).await;
    produce(&input, &(0..5).map(|i| rec("k", &i.to_string())).collect::<Vec<_>>());
    let dir = tempdir("kafka-shared");
    let bs = bootstrap();
    let txn = format!("it-shared-{}", uuid_like());
    let pipeline = |ckpt: &str| {
        format!(
            r#"
name = "shared"
checkpoint_location = "{ckpt}"
[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", subscribe = "{input}", startingOffsets = "earliest" }}
[[transform]]
sql = "SELECT key, value FROM input"
[sink]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", topic = "{output}", deliveryGuarantee = "exactly_once", "kafka.transactional.id" = "{txn}" }}
[trigger]
available_now = true
"#,
            ckpt = dir.join(ckpt).display()
        )
    };
    run_to_end(&pipeline("a")).await.expect("first query");
    let msg = run_to_end(&pipeline("b")).await.expect_err("same transactional id, new checkpoint").to_string();
    assert!(msg.contains("transactional id is shared") && msg.contains(&txn), "{msg}");
    assert_eq!(consume_all(&output).len(), 5, "written once, neither skipped nor duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_options_assign_offsets_headers_pattern_and_group_commit() {
    let t = topic("opts");
    create_topic(&t, 2).await;
    let mut recs = Vec::new();
    for p in 0..2 {
        for i in 0..10 {
            recs.push(Rec {
                key: Some(format!("k{i}")),
                value: format!("p{p}-v{i}"),
                partition: Some(p),
                headers: vec![("trace".into(), format!("id-{p}-{i}"))],
            });
        }
    }
    produce(&t, &recs);
    let bs = bootstrap();
    // assign + startingOffsets/endingOffsets JSON + headers; endingOffsets ends the query.
    let text = format!(
        r#"
name = "assigned"
[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", assign = '{{"{t}":[1]}}', startingOffsets = '{{"{t}":{{"1":3}}}}', endingOffsets = '{{"{t}":{{"1":8}}}}', includeHeaders = "true" }}
[[transform]]
sql = "SELECT CAST(key AS STRING) AS k, CAST(value AS STRING) AS v, topic, partition, offset, timestampType, CAST(headers[1]['value'] AS STRING) AS h FROM input"
[sink]
format = "memory"
"#
    );
    let s = session();
    let q = s.start(&spec(&text)).await.expect("start");
    assert!(q.await_termination_timeout(Duration::from_secs(60)).await.expect("runs"), "endingOffsets ends the query");
    let (_, rows) = s.memory_table("assigned").expect("table");
    // Rows of a batch may come out of a SQL step in any order (as in Spark): sort by offset.
    let mut got: Vec<(i64, Option<String>, Option<String>)> = Vec::new();
    for b in &rows {
        let (o, v, h) = (column_strings(b, "offset"), column_strings(b, "v"), column_strings(b, "h"));
        for i in 0..b.num_rows() {
            got.push((o[i].as_deref().and_then(|x| x.parse().ok()).unwrap_or(-1), v[i].clone(), h[i].clone()));
        }
    }
    got.sort();
    let expect: Vec<(i64, Option<String>, Option<String>)> =
        (3..8).map(|i| (i, Some(format!("p1-v{i}")), Some(format!("id-1-{i}")))).collect();
    assert_eq!(got, expect, "offsets 3..8 of partition 1 with their headers");
    assert!(rows.iter().flat_map(|b| column_strings(b, "timestampType")).all(|x| x.as_deref() == Some("0")));

    // subscribePattern + earliest + commitOffsets to a consumer group.
    let group = format!("it-group-{}", uuid_like());
    let text = format!(
        r#"
name = "pattern"
[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", subscribePattern = "{t}|no-such-topic-.*", startingOffsets = "earliest", commitOffsets = "true", "kafka.group.id" = "{group}" }}
[sink]
format = "memory"
[trigger]
available_now = true
"#
    );
    let s = session();
    let q = s.start(&spec(&text)).await.expect("start");
    assert!(q.await_termination_timeout(Duration::from_secs(60)).await.expect("runs"));
    let (_, rows) = s.memory_table("pattern").expect("table");
    assert_eq!(total_rows(&rows), 20);
    let c: BaseConsumer = config().set("group.id", &group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&t, 0);
    tpl.add_partition(&t, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let committed = c.committed_offsets(tpl.clone(), Duration::from_secs(10)).expect("committed");
        let offs: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
        if offs == vec![Offset::Offset(10), Offset::Offset(10)] {
            break;
        }
        assert!(Instant::now() < deadline, "group {group} committed {offs:?}, expected 10 and 10");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_partitions_are_picked_up_from_their_start() {
    let t = topic("grow");
    create_topic(&t, 1).await;
    produce(&t, &(0..10).map(|i| rec("a", &format!("first-{i}"))).collect::<Vec<_>>());
    let bs = bootstrap();
    let text = format!(
        r#"
name = "grow"
[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", subscribe = "{t}", startingOffsets = "earliest" }}
[[transform]]
sql = "SELECT CAST(value AS STRING) AS v, partition FROM input"
[sink]
format = "memory"
[trigger]
processing_time = "100ms"
"#
    );
    let s = session();
    let q = s.start(&spec(&text)).await.expect("start");
    let wait_rows = |n: usize| {
        let s = &s;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let have = s.memory_table("grow").map(|(_, r)| total_rows(&r)).unwrap_or(0);
                if have >= n {
                    return have;
                }
                assert!(Instant::now() < deadline, "only {have} of {n} rows arrived");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(wait_rows(10).await, 10);
    add_partitions(&t, 3).await;
    let mut recs = Vec::new();
    for p in 1..3 {
        for i in 0..5 {
            recs.push(Rec { key: None, value: format!("new-{p}-{i}"), partition: Some(p), headers: vec![] });
        }
    }
    produce(&t, &recs);
    assert_eq!(wait_rows(20).await, 20, "rows from the new partitions, none twice");
    q.stop().await;
    let (_, rows) = s.memory_table("grow").expect("table");
    let mut vs: Vec<String> = rows.iter().flat_map(|b| column_strings(b, "v")).flatten().collect();
    vs.sort();
    vs.dedup();
    assert_eq!(vs.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_on_data_loss_behaves_as_in_spark_when_records_are_deleted() {
    let t = topic("loss");
    create_topic(&t, 1).await;
    produce(&t, &(0..100).map(|i| rec("k", &i.to_string())).collect::<Vec<_>>());
    let dir = tempdir("kafka-loss");
    let bs = bootstrap();
    let out = dir.join("out");
    let pipeline = |extra: &str| {
        format!(
            r#"
name = "loss"
checkpoint_location = "{ckpt}"
[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", subscribe = "{t}", startingOffsets = "earliest", maxOffsetsPerTrigger = "50" {extra} }}
[[transform]]
sql = "SELECT CAST(value AS STRING) AS v, offset FROM input"
[sink]
format = "json"
path = "{out}"
[trigger]
once = true
"#,
            ckpt = dir.join("ckpt").display(),
            out = out.display()
        )
    };
    // trigger once reads everything available: use endingOffsets to stop at 50 instead.
    run_to_end(&pipeline(&format!(", endingOffsets = '{{\"{t}\":{{\"0\":50}}}}'"))).await.expect("first 50");
    // Retention (here: deleteRecords) removes offsets 0..80, 30 of them never read.
    delete_records(&t, 0, 80).await;
    let err = run_to_end(&pipeline("")).await.expect_err("data loss is an error by default");
    let msg = err.to_string();
    assert!(msg.contains("failOnDataLoss") && msg.contains("80"), "{msg}");
    // With failOnDataLoss = false the query skips what is gone and carries on.
    run_to_end(&pipeline(", failOnDataLoss = \"false\"")).await.expect("skips the lost records");
    let mut offsets: Vec<i64> = Vec::new();
    for e in std::fs::read_dir(&out).expect("out dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "json") {
            for l in std::fs::read_to_string(&p).expect("read").lines() {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                offsets.push(v["offset"].as_i64().expect("offset"));
            }
        }
    }
    offsets.sort_unstable();
    let expect: Vec<i64> = (0..50).chain(80..100).collect();
    assert_eq!(offsets, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_on_data_loss_when_retention_ages_out_unread_records() {
    let t = topic("retention");
    let admin: AdminClient<DefaultClientContext> = config().create().expect("admin client");
    let nt = NewTopic::new(&t, 1, TopicReplication::Fixed(1)).set("retention.ms", "1500").set("segment.ms", "300");
    for r in admin.create_topics(&[nt], &AdminOptions::new()).await.expect("create topic") {
        r.expect("topic created");
    }
    produce(&t, &(0..100).map(|i| rec("k", &i.to_string())).collect::<Vec<_>>());
    let dir = tempdir("kafka-retention");
    let bs = bootstrap();
    let pipeline = |extra: &str| {
        format!(
            r#"
name = "retention"
checkpoint_location = "{ckpt}"
[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", subscribe = "{t}", startingOffsets = "earliest" {extra} }}
[sink]
format = "noop"
[trigger]
once = true
"#,
            ckpt = dir.join("ckpt").display()
        )
    };
    run_to_end(&pipeline(&format!(", endingOffsets = '{{\"{t}\":{{\"0\":50}}}}'"))).await.expect("first 50");
    // Let time-based retention delete the old segments: new records roll the segment, the
    // broker (log.retention.check.interval.ms = 1 s) then deletes what is older than 1.5 s.
    let c: BaseConsumer = config().set("group.id", "it-retention").create().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (low, _) = c.fetch_watermarks(&t, 0, Duration::from_secs(10)).expect("watermarks");
        if low > 50 {
            break;
        }
        assert!(Instant::now() < deadline, "retention did not delete offsets 50.. (earliest is {low})");
        tokio::time::sleep(Duration::from_millis(500)).await;
        produce(&t, &[rec("k", "later")]);
    }
    let msg = run_to_end(&pipeline("")).await.expect_err("data loss is an error by default").to_string();
    assert!(msg.contains("failOnDataLoss") && msg.contains("from offset 50"), "{msg}");
    let progress = run_to_end(&pipeline(", failOnDataLoss = \"false\"")).await.expect("skips what retention deleted");
    assert_eq!(progress.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_writes_topic_partition_and_headers_columns() {
    let (input, a, b) = (topic("sink-in"), topic("sink-a"), topic("sink-b"));
    create_topic(&input, 1).await;
    create_topic(&a, 2).await;
    create_topic(&b, 1).await;
    produce(
        &input,
        &(0..6)
            .map(|i| Rec {
                key: Some(format!("k{i}")),
                value: format!("v{i}"),
                partition: None,
                headers: vec![("h".into(), format!("x{i}"))],
            })
            .collect::<Vec<_>>(),
    );
    let bs = bootstrap();
    let text = format!(
        r#"
name = "router"
[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", subscribe = "{input}", startingOffsets = "earliest", includeHeaders = "true" }}
[[transform]]
sql = "SELECT key, value, headers, CASE WHEN offset % 2 = 0 THEN '{a}' ELSE '{b}' END AS topic, CASE WHEN offset % 2 = 0 THEN CAST(offset % 4 / 2 AS INT) END AS partition FROM input"
[sink]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}" }}
[trigger]
available_now = true
"#
    );
    run_to_end(&text).await.expect("runs");
    let got_a = consume_all(&a);
    let got_b = consume_all(&b);
    let summary = |g: &[Got]| -> Vec<(i32, String, String, String)> {
        let mut v: Vec<_> = g
            .iter()
            .map(|x| {
                (
                    x.partition,
                    x.key.clone().unwrap_or_default(),
                    x.value.clone().unwrap_or_default(),
                    x.headers.first().map(|h| h.1.clone()).unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        summary(&got_a),
        vec![
            (0, "k0".into(), "v0".into(), "x0".into()),
            (0, "k4".into(), "v4".into(), "x4".into()),
            (1, "k2".into(), "v2".into(), "x2".into()),
        ]
    );
    assert_eq!(summary(&got_b).iter().map(|x| x.1.clone()).collect::<Vec<_>>(), vec!["k1", "k3", "k5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_the_query_with_a_clear_error() {
    // Source: nothing listens on port 1.
    let text = r#"
name = "down"
[source]
format = "kafka"
options = { "kafka.bootstrap.servers" = "127.0.0.1:1", subscribe = "x", "fetchOffset.numRetries" = "1", "fetchOffset.retryIntervalMs" = "100", "fetchOffset.timeoutMs" = "1500" }
[sink]
format = "console"
"#;
    let started = Instant::now();
    let err = run_to_end(text).await.expect_err("no broker");
    let msg = err.to_string();
    assert!(msg.contains("127.0.0.1:1") && msg.contains("is the broker up") && msg.contains("2 attempt"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());

    // Sink: records that cannot be delivered fail the batch once message.timeout.ms passes.
    let input = topic("down-in");
    create_topic(&input, 1).await;
    produce(&input, &[rec("k", "v")]);
    let bs = bootstrap();
    let text = format!(
        r#"
name = "sinkdown"
[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", subscribe = "{input}", startingOffsets = "earliest" }}
[sink]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "127.0.0.1:1", topic = "nowhere", "kafka.message.timeout.ms" = "2000" }}
[trigger]
available_now = true
"#
    );
    let err = run_to_end(&text).await.expect_err("sink cannot deliver");
    let msg = err.to_string();
    assert!(msg.contains("kafka sink") && msg.contains("batch 0"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_dies_mid_run_fails_the_query_and_loses_nothing() {
    let port = 19092 + (std::process::id() % 500) as u16 * 2;
    let script = repo().join("scripts/kafka.sh");
    let kafka = |cmd: &str| {
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(cmd)
            .env("SLUICE_KAFKA_PORT", port.to_string())
            .output()
            .expect("run scripts/kafka.sh");
        assert!(out.status.success(), "scripts/kafka.sh {cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    /// Stops the second broker however the test ends.
    struct Stop(std::path::PathBuf, u16);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("bash")
                .arg(&self.0)
                .arg("stop")
                .env("SLUICE_KAFKA_PORT", self.1.to_string())
                .output();
        }
    }
    let _stop = Stop(script.clone(), port);
    kafka("start");
    let bs = format!("127.0.0.1:{port}");
    let t = "dying";
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &bs);
    let admin: AdminClient<DefaultClientContext> = c.create().expect("admin");
    admin
        .create_topics(&[NewTopic::new(t, 1, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("create")
        .into_iter()
        .for_each(|r| {
            r.expect("created");
        });
    let p: BaseProducer = c.create().expect("producer");
    for i in 0..5 {
        p.send(BaseRecord::<str, str>::to(t).payload(&i.to_string())).expect("send");
    }
    p.flush(Duration::from_secs(10)).expect("flush");
    let dir = tempdir("kafka-dying");
    let text = format!(
        r#"
name = "dying"
checkpoint_location = "{ckpt}"
[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bs}", subscribe = "{t}", startingOffsets = "earliest", "fetchOffset.numRetries" = "2", "fetchOffset.retryIntervalMs" = "200", "fetchOffset.timeoutMs" = "2000", "kafkaConsumer.pollTimeoutMs" = "5000" }}
[sink]
format = "memory"
[trigger]
processing_time = "200ms"
"#,
        ckpt = dir.join("ckpt").display()
    );
    let s = session();
    let q = s.start(&spec(&text)).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.memory_table("dying").map(|(_, r)| total_rows(&r)).unwrap_or(0) < 5 {
        assert!(Instant::now() < deadline, "the first records never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = Instant::now();
    kafka("kill");
    let finished = q.await_termination_timeout(Duration::from_secs(60)).await;
    let msg = match finished {
        Err(e) => e.to_string(),
        Ok(done) => panic!("query still running {:?} after the broker died (done = {done})", killed.elapsed()),
    };
    assert!(msg.contains(&bs) && msg.contains("is the broker up"), "{msg}");
    // Committed progress stays in the checkpoint: batch 0 (the 5 records) committed, nothing after.
    let info = sluice::inspect_checkpoint(&dir.join("ckpt")).await.expect("inspect");
    assert_eq!(info.batches.iter().filter(|b| b.committed).count(), 1, "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_option_mistakes_are_reported_by_name() {
    let bs = bootstrap();
    let cases: Vec<(String, &str, &str)> = vec![
        (r#"{ subscribe = "t" }"#.to_string(), "console", "kafka.bootstrap.servers"),
        (
            format!(r#"{{ "kafka.bootstrap.servers" = "{bs}", subscribe = "t", assign = '{{"t":[0]}}' }}"#),
            "console",
            "exclusive",
        ),
        (
            format!(
                r#"{{ "kafka.bootstrap.servers" = "{bs}", subscribe = "t", "kafka.enable.auto.commit" = "true" }}"#
            ),
            "console",
            "kafka.enable.auto.commit",
        ),
        (
            format!(r#"{{ "kafka.bootstrap.servers" = "{bs}", subscribe = "t", "kafka.no.such.property" = "1" }}"#),
            "console",
            "kafka.no.such.property",
        ),
        (
            format!(r#"{{ "kafka.bootstrap.servers" = "{bs}", subscribe = "t", startingOffsets = "{{bad" }}"#),
            "console",
            "startingOffsets",
        ),
        (
            format!(r#"{{ "kafka.bootstrap.servers" = "{bs}", subscribe = "t", maxOffsetsPerTrigger = "0" }}"#),
            "console",
            "maxOffsetsPerTrigger",
        ),
        (
            format!(r#"{{ "kafka.bootstrap.servers" = "{bs}", subscribe = "t", minPartitions = "3000000000" }}"#),
            "console",
            "minPartitions",
        ),
        (format!(r#"{{ "kafka.bootstrap.servers" = "{bs}", subscribe = "t" }}"#), "kafka", "value"),
    ];
    for (opts, sink, needle) in cases {
        let sink_opts = if sink == "kafka" {
            format!(r#"options = {{ "kafka.bootstrap.servers" = "{bs}", topic = "o" }}"#)
        } else {
            String::new()
        };
        let text = format!(
            "[source]\nformat = \"kafka\"\noptions = {opts}\n[[transform]]\nsql = \"SELECT key AS k FROM input\"\n[sink]\nformat = \"{sink}\"\n{sink_opts}\n"
        );
        let err = match sluice::PipelineSpec::from_toml(&text, "bad.toml", &repo()) {
            Err(e) => e,
            Ok(spec) => session().validate(&spec).await.expect_err(needle),
        };
        let msg = err.to_string();
        assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
    }
    // exactly_once needs a checkpoint.
    let text = format!(
        "[source]\nformat = \"rate\"\n[[transform]]\nsql = \"SELECT CAST(value AS STRING) AS value FROM input\"\n[sink]\nformat = \"kafka\"\noptions = {{ \"kafka.bootstrap.servers\" = \"{bs}\", topic = \"o\", deliveryGuarantee = \"exactly_once\" }}\n"
    );
    let spec = sluice::PipelineSpec::from_toml(&text, "eos.toml", &repo()).expect("parses");
    let msg = session().validate(&spec).await.expect_err("needs checkpoint").to_string();
    assert!(msg.contains("checkpoint_location"), "{msg}");
    // The sink knows a batch is written from every record's delivery report.
    let text = format!(
        "[source]\nformat = \"rate\"\n[[transform]]\nsql = \"SELECT CAST(value AS STRING) AS value FROM input\"\n[sink]\nformat = \"kafka\"\noptions = {{ \"kafka.bootstrap.servers\" = \"{bs}\", topic = \"o\", \"kafka.delivery.report.only.error\" = \"true\" }}\n"
    );
    let spec = sluice::PipelineSpec::from_toml(&text, "reports.toml", &repo()).expect("parses");
    let msg = session().validate(&spec).await.expect_err("only-error reports").to_string();
    assert!(msg.contains("kafka.delivery.report.only.error"), "{msg}");
}

/// Per (epoch, logical partition): the Kafka offsets a foreach writer received, in order.
type Layout = Arc<Mutex<BTreeMap<(u64, u32), Vec<i64>>>>;

#[derive(Clone)]
struct Offsets(Layout, u64, u32, Vec<i64>);

impl sluice::ForeachWriter for Offsets {
    fn open(&mut self, partition: u32, epoch: u64) -> sluice::Result<bool> {
        (self.1, self.2) = (epoch, partition);
        Ok(true)
    }
    fn process(&mut self, batch: &arrow_array::RecordBatch) -> sluice::Result<()> {
        let col = batch.column_by_name("offset").and_then(|c| c.as_any().downcast_ref::<arrow_array::Int64Array>());
        self.3.extend(col.expect("an offset column").values().iter());
        Ok(())
    }
    fn close(&mut self, error: Option<&sluice::Error>) -> sluice::Result<()> {
        assert!(error.is_none(), "partition {} of batch {} failed: {error:?}", self.2, self.1);
        self.0.lock().expect("lock").insert((self.1, self.2), std::mem::take(&mut self.3));
        Ok(())
    }
}

/// kafka (one partition) -> identity plugin -> foreach writer logging each logical partition.
async fn min_partitions_query(
    t: &str,
    ckpt: &Path,
    min_partitions: Option<u32>,
    trigger: sluice::Trigger,
) -> (sluice::StreamingQuery, Layout) {
    let layout: Layout = Arc::default();
    let mut reader = session()
        .read_stream()
        .format("kafka")
        .option("kafka.bootstrap.servers", bootstrap())
        .option("subscribe", t)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", 400);
    if let Some(m) = min_partitions {
        reader = reader.option("minPartitions", m);
    }
    let q = reader
        .load()
        .transform(sluice::PluginSpec::new(plugin("identity")))
        .write_stream()
        .option("checkpointLocation", ckpt.display())
        .foreach(Offsets(layout.clone(), 0, 0, Vec::new()))
        .trigger(trigger)
        .start()
        .await
        .expect("query starts");
    (q, layout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_partitions_spreads_one_kafka_partition_over_plugin_instances() {
    let t = topic("minparts");
    create_topic(&t, 1).await;
    produce(&t, &(0..1000).map(|i| rec("k", &format!("v{i}"))).collect::<Vec<_>>());
    let dir = tempdir("kafka-minparts");

    // Spark's default: one logical partition per topic-partition, so one plugin instance works.
    let (q, layout) = min_partitions_query(&t, &dir.join("one"), None, sluice::Trigger::AvailableNow).await;
    q.await_termination().await.expect("runs");
    let one = layout.lock().expect("lock").clone();
    let want: BTreeMap<(u64, u32), Vec<i64>> =
        [(0, 0..400), (1, 400..800), (2, 800..1000)].into_iter().map(|(b, r)| ((b, 0), r.collect())).collect();
    assert_eq!(one, want, "without minPartitions every batch is one partition");

    // minPartitions = 4, read by the prefetching reader (an unbounded query): every batch's
    // range is cut into 4 contiguous pieces, logical partitions 0..3, in offset order.
    let ckpt = dir.join("four");
    let (q, layout) =
        min_partitions_query(&t, &ckpt, Some(4), sluice::Trigger::ProcessingTime(Duration::from_millis(50))).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while layout.lock().expect("lock").values().map(Vec::len).sum::<usize>() < 1000 {
        assert!(Instant::now() < deadline, "not all 1000 records arrived: {:?}", q.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    q.stop().await;
    let four = layout.lock().expect("lock").clone();
    let mut all: Vec<i64> = Vec::new();
    let epochs: std::collections::BTreeSet<u64> = four.keys().map(|(e, _)| *e).collect();
    for e in &epochs {
        let parts: Vec<(&u32, &Vec<i64>)> = four.range((*e, 0)..(*e + 1, 0)).map(|((_, p), o)| (p, o)).collect();
        let size: usize = parts.iter().map(|(_, o)| o.len()).sum();
        assert_eq!(parts.len(), size.min(4), "batch {e} of {size} records: {parts:?}");
        for (i, (p, offs)) in parts.iter().enumerate() {
            assert_eq!(**p as usize, i, "logical partitions are numbered 0.. in batch {e}");
            assert!(offs.len().abs_diff(size / parts.len()) <= 1, "batch {e}: piece sizes differ by at most one");
        }
        all.extend(parts.iter().flat_map(|(_, o)| o.iter().copied()));
    }
    assert_eq!(all, (0..1000).collect::<Vec<_>>(), "every record once, in order");

    // The last batch run again after a crash (its commit lost) is read by the exact reader
    // from Kafka: it is cut the same way, record for record.
    let last = *epochs.last().expect("a batch");
    std::fs::remove_file(ckpt.join("commits").join(last.to_string())).expect("drop the last commit");
    let (q, layout) = min_partitions_query(&t, &ckpt, Some(4), sluice::Trigger::AvailableNow).await;
    q.await_termination().await.expect("rerun");
    let rerun = layout.lock().expect("lock").clone();
    let before: BTreeMap<(u64, u32), Vec<i64>> = four.into_iter().filter(|((e, _), _)| *e == last).collect();
    assert_eq!(rerun, before, "the re-run batch has the same pieces");
}
