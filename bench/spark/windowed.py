"""Apache Spark reference timing for Sluice's windowed-aggregation benchmark.

    ~/.cache/sluice/pyspark-venv/bin/python bench/spark/windowed.py DIR [--runs 3] [--json OUT]

DIR holds events-00.json ... events-19.json from bench/spark/gen_events.py
(2,000,000 events). Each run is this query, with a fresh checkpoint dir:

    spark.readStream.schema("ts TIMESTAMP, key STRING, value BIGINT")
         .option("maxFilesPerTrigger", 1).json(DIR)
         .withWatermark("ts", "10 minutes")
         .groupBy(window("ts", "5 minutes"), "key")
         .agg(count("*"), sum("value"))
         .writeStream.outputMode("append").format("noop")
         .trigger(availableNow=True).start()

and the time measured is the query's wall time from start() until
awaitTermination() returns. Run 1 is the first query of a fresh Spark
session ("fresh": includes the JVM's warm-up for this plan); runs 2.. reuse
that session ("warm"). Session start-up itself is reported separately.
Spark runs with local[2], spark.sql.shuffle.partitions=2, session time zone
UTC, JVM in UTC; everything else at Spark's defaults (PyPI pyspark 4.3.0 at
the time of writing, OpenJDK 17). Without pyspark, it re-runs itself with
the venv's python.
"""

import argparse
import os
import sys
import time

# The venv re-exec shared with the fixture scripts.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "spark"))
from spark_session import ensure_pyspark, report_warm, timed_noop_run, timed_runs  # noqa: E402


def count_events(directory):
    n = 0
    for name in sorted(os.listdir(directory)):
        if name.startswith("events-") and name.endswith(".json"):
            with open(os.path.join(directory, name), "rb") as f:
                n += sum(1 for _ in f)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--driver-memory", default=None, help="spark.driver.memory (Spark's default if unset)")
    args = ap.parse_args()
    ensure_pyspark()

    in_dir = os.path.abspath(args.dir)
    files = sorted(n for n in os.listdir(in_dir) if n.startswith("events-") and n.endswith(".json"))
    if not files:
        raise SystemExit(f"no events-*.json in {in_dir} (make them with bench/spark/gen_events.py)")
    events = count_events(in_dir)

    os.environ["TZ"] = "UTC"
    time.tzset()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("sluice-bench-windowed")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if args.driver_memory:
        builder = builder.config("spark.driver.memory", args.driver_memory)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    session_s = time.perf_counter() - t0
    version = spark.version
    print(f"pyspark {version}, {len(files)} files, {events} events; session start-up {session_s:.2f} s",
          flush=True)

    def one_run(run, kind, checkpoint):
        agg = (
            spark.readStream.schema("ts TIMESTAMP, key STRING, value BIGINT")
            .option("maxFilesPerTrigger", 1)
            .json(in_dir)
            .withWatermark("ts", "10 minutes")
            .groupBy(F.window("ts", "5 minutes"), "key")
            .agg(F.count("*"), F.sum("value"))
        )
        wall, progress = timed_noop_run(agg, "append", checkpoint)
        batches = len({p["batchId"] for p in progress})
        rows_in = sum(p.get("numInputRows", 0) for p in progress)
        rows_out = sum((p.get("sink") or {}).get("numOutputRows", 0) or 0 for p in progress)
        dropped = sum(
            sum(op.get("numRowsDroppedByWatermark", 0) for op in p.get("stateOperators", [])) for p in progress
        )
        print(f"run {run} ({kind}): {wall:.2f} s, {events / wall:,.0f} events/s, {batches} batches, "
              f"{rows_in} rows in, {rows_out} rows out, {dropped} dropped by watermark", flush=True)
        return {
            "wall_s": round(wall, 3),
            "events_per_s": round(events / wall),
            "batches": batches,
            "input_rows": rows_in,
            "output_rows": rows_out,
            "rows_dropped_by_watermark": dropped,
        }

    results = timed_runs(spark, args.runs, "sluice-spark-bench-", one_run)
    report_warm(results, events, "events", args.json, {"spark_version": version, "events": events,
                                                       "files": len(files), "session_startup_s": round(session_s, 3)})


if __name__ == "__main__":
    main()
