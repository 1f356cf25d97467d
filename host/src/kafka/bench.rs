//! `sluice bench --kafka HOST:PORT`: Kafka → plugin → Kafka throughput beside librdkafka's own
//! consume + produce on the same broker, the baseline the Kafka connector is measured against.
//!
//! The input topic (3 partitions, `records` JSON records of about 100 bytes) is written once and
//! reused. The baseline reads every record with one `BaseConsumer` and writes it unchanged with
//! one `BaseProducer`, nothing else. The Sluice runs are whole queries (`available_now`, start to
//! finish, including plugin load and topic metadata), at-least-once and exactly-once.

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::{PipelineSpec, Session};

/// A record's key and value.
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

fn err(what: &str) -> impl Fn(KafkaError) -> Error + '_ {
    move |e| Error::Internal(format!("kafka bench: {what}: {e}"))
}

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

fn send_all<'a>(p: &BaseProducer, mut rec: BaseRecord<'a, [u8], [u8]>) -> Result<()> {
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(err("produce")(e)),
        }
    }
}

fn payload(i: usize) -> String {
    let kinds = ["buy", "sell", "refund"];
    format!(
        "{{\"ts\":\"2026-11-25T10:{:02}:{:02}Z\",\"user\":\"user-{:05}\",\"amount\":{},\"kind\":\"{}\",\"note\":\"{:08x}\"}}",
        (i / 60) % 60,
        i % 60,
        (i * 7919) % 10_000,
        i % 1000,
        kinds[i % 3],
        i.wrapping_mul(2_654_435_761) as u32
    )
}

/// Creates and fills the input topic unless it already holds `records` records.
async fn prepare(bootstrap: &str, topic: &str, records: usize) -> Result<u64> {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap).create().map_err(err("admin client"))?;
    let created = admin
        .create_topics(&[NewTopic::new(topic, 3, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .map_err(err("create topic"))?;
    let fresh = created.iter().all(|r| r.is_ok());
    let bytes: u64 = (0..records).map(|i| payload(i).len() as u64).sum();
    if fresh {
        let bs = bootstrap.to_string();
        let t = topic.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let p: BaseProducer =
                config(&bs).set("linger.ms", "20").set("batch.size", "1000000").create().map_err(err("producer"))?;
            for i in 0..records {
                let v = payload(i);
                let k = format!("user-{:05}", (i * 7919) % 10_000);
                send_all(&p, BaseRecord::to(&t).key(k.as_bytes()).payload(v.as_bytes()))?;
            }
            p.flush(Duration::from_secs(120)).map_err(err("flush"))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    }
    Ok(bytes)
}

/// librdkafka alone: consume every record of `input`, produce it to `output`; record by record
/// (`staged = false`) or, like a micro-batch, in chunks of `maxOffsetsPerTrigger` records read
/// into memory and then written (`staged = true`).
fn raw_copy(bootstrap: &str, input: &str, output: &str, records: usize, staged: bool) -> Result<Duration> {
    let c: BaseConsumer = config(bootstrap)
        .set("group.id", "sluice-bench-raw")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(err("consumer"))?;
    let p: BaseProducer = config(bootstrap).set("enable.idempotence", "true").create().map_err(err("producer"))?;
    let mut tpl = TopicPartitionList::new();
    for part in 0..3 {
        tpl.add_partition_offset(input, part, Offset::Beginning).map_err(err("assign"))?;
    }
    let started = Instant::now();
    c.assign(&tpl).map_err(err("assign"))?;
    let mut n = 0;
    let mut staged_records: Vec<KeyValue> = Vec::new();
    let write = |key: Option<&[u8]>, value: Option<&[u8]>| -> Result<()> {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        send_all(&p, rec)?;
        p.poll(Duration::ZERO);
        Ok(())
    };
    while n < records {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) if staged => {
                staged_records.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
                n += 1;
                if staged_records.len() == CHUNK || n == records {
                    for (k, v) in staged_records.drain(..) {
                        write(k.as_deref(), v.as_deref())?;
                    }
                }
            }
            Some(Ok(m)) => {
                write(m.key(), m.payload())?;
                n += 1;
            }
            Some(Err(e)) => return Err(err("consume")(e)),
            None => return Err(Error::Internal(format!("kafka bench: only {n} of {records} records arrived"))),
        }
    }
    p.flush(Duration::from_secs(120)).map_err(err("flush"))?;
    Ok(started.elapsed())
}

/// Records per micro-batch (`maxOffsetsPerTrigger`) and per staged raw chunk.
const CHUNK: usize = 300_000;

async fn sluice_copy(
    session: &Session,
    bootstrap: &str,
    input: &str,
    steps: &str,
    sink: &str,
    dir: &Path,
) -> Result<Duration> {
    let ckpt = dir.join(format!("ckpt-{}", uuid::Uuid::new_v4()));
    let text = format!(
        r#"
name = "kafka-bench"
checkpoint_location = "{ckpt}"
[source]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "{bootstrap}", subscribe = "{input}", startingOffsets = "earliest", maxOffsetsPerTrigger = "{CHUNK}" }}
{steps}
[sink]
format = "kafka"
output_mode = "append"
options = {{ "kafka.bootstrap.servers" = "{bootstrap}", topic = "bench-out-{id}" {sink} }}
[trigger]
available_now = true
"#,
        ckpt = ckpt.display(),
        id = uuid::Uuid::new_v4()
    );
    let spec = PipelineSpec::from_toml(&text, "kafka-bench.toml", dir)?;
    let started = Instant::now();
    let q = session.start(&spec).await?;
    q.await_termination().await?;
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&ckpt);
    Ok(took)
}

/// Runs the Kafka benchmark against `bootstrap` and prints a Markdown table.
pub async fn run(bootstrap: &str, records: usize, plugins: &Path, dir: &Path) -> Result<()> {
    let plugins = std::path::absolute(plugins).map_err(|source| Error::Io { path: plugins.to_path_buf(), source })?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let input = format!("bench-in-{records}");
    println!("preparing topic {input} ({records} records, 3 partitions) on {bootstrap} ...");
    let bytes = prepare(bootstrap, &input, records).await?;
    let mb = bytes as f64 / 1e6;
    let session = Session::with_cache_dir(&crate::default_cache_dir())?;
    // Spark's habit: keep only key and value, so the output topic's partitioner decides.
    let identity = format!(
        "[[transform]]\nsql = \"SELECT key, value FROM input\"\n[[transform]]\nplugin = \"{}\"\n",
        plugins.join("identity.wasm").display()
    );
    let reshape = format!(
        "[[transform]]\nplugin = \"{}\"\nconfig = {{ schema = \"user STRING, amount BIGINT, kind STRING\" }}\n[[transform]]\nsql = \"SELECT user AS key, to_json(named_struct('user', user, 'cents', amount * 100, 'kind', kind)) AS value FROM input\"\n",
        plugins.join("json_parse.wasm").display()
    );
    println!("\n## Kafka → plugin → Kafka ({records} records, {mb:.1} MB, 3 partitions, local broker, 2 cores)\n");
    println!("| pipeline | time | records/s | MB/s | vs raw librdkafka |");
    println!("|---|---|---|---|---|");
    let mut raws = Vec::new();
    for staged in [false, true] {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let bs = bootstrap.to_string();
            let (i, o) = (input.clone(), format!("bench-raw-{}", uuid::Uuid::new_v4()));
            let d = tokio::task::spawn_blocking(move || raw_copy(&bs, &i, &o, records, staged))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            best = best.min(d);
        }
        raws.push(best);
    }
    // Compare against the faster of the two baselines.
    let raw_best = raws.iter().copied().min().unwrap_or(Duration::MAX);
    let row = |name: &str, d: Duration| {
        let s = d.as_secs_f64();
        println!(
            "| {name} | {s:.2} s | {:.0} k | {:.1} | {:.0}% |",
            records as f64 / s / 1e3,
            mb / s,
            100.0 * raw_best.as_secs_f64() / s
        );
    };
    row("librdkafka: consume + produce record by record (best of 3)", raws[0]);
    row(&format!("librdkafka: consume {CHUNK} into memory, then produce them (best of 3)"), raws[1]);
    let runs: [(&str, &str, &str); 3] = [
        ("Sluice: identity plugin, at-least-once", &identity, ""),
        ("Sluice: json_parse plugin + SQL reshape, at-least-once", &reshape, ""),
        ("Sluice: identity plugin, exactly-once (transactions)", &identity, ", deliveryGuarantee = \"exactly_once\""),
    ];
    for (name, steps, sink) in runs {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            best = best.min(sluice_copy(&session, bootstrap, &input, steps, sink, dir).await?);
        }
        row(&format!("{name} (best of 3)"), best);
    }
    Ok(())
}
