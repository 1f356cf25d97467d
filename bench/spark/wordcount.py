"""Apache Spark reference timing for Sluice's word-count benchmark.

    ~/.cache/sluice/pyspark-venv/bin/python bench/spark/wordcount.py DIR [--runs 5] [--json OUT]

DIR holds part-0000.txt ... part-0019.txt, the input `sluice bench --only wordcount` writes
(target/bench-data by default: 2,000,000 lines). Each run is Sluice's pure-SQL word count,
with a fresh checkpoint dir:

    spark.readStream.option("maxFilesPerTrigger", 4).text(DIR)
         .select(explode(split("value", " ")).alias("word"))
         .groupBy("word").count()
         .writeStream.outputMode("complete").format("noop")
         .trigger(availableNow=True).start()

and the time measured is the query's wall time from start() until awaitTermination()
returns. Run 1 is the first query of a fresh Spark session ("fresh": includes the JVM's
warm-up for this plan); runs 2.. reuse that session ("warm"). Session start-up itself is
reported separately. Spark runs in the fixtures' session (tests/fixtures/spark/spark_session.py:
local[2], spark.sql.shuffle.partitions=2, UTC); everything else at Spark's defaults (PyPI
pyspark, OpenJDK 17). Without pyspark, it re-runs itself
with the venv's python.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "spark"))
from spark_session import ensure_pyspark, report_warm, session, timed_noop_run, timed_runs  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    ensure_pyspark()

    in_dir = os.path.abspath(args.dir)
    files = sorted(n for n in os.listdir(in_dir) if n.startswith("part-") and n.endswith(".txt"))
    if not files:
        raise SystemExit(f"no part-*.txt in {in_dir} (run `sluice bench --only wordcount` once to make them)")
    lines = 0
    for name in files:
        with open(os.path.join(in_dir, name), "rb") as f:
            lines += sum(1 for _ in f)

    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    spark = session("sluice-bench-wordcount")
    session_s = time.perf_counter() - t0
    version = spark.version
    print(f"pyspark {version}, {len(files)} files, {lines} lines; session start-up {session_s:.2f} s", flush=True)

    def one_run(run, kind, checkpoint):
        counts = (
            spark.readStream.option("maxFilesPerTrigger", 4)
            .text(in_dir)
            .select(F.explode(F.split("value", " ")).alias("word"))
            .groupBy("word")
            .count()
        )
        wall, progress = timed_noop_run(counts, "complete", checkpoint)
        rows_in = sum(p.get("numInputRows", 0) for p in progress)
        groups = max((op.get("numRowsTotal", 0) for p in progress for op in p.get("stateOperators", [])), default=0)
        print(f"run {run} ({kind}): {wall:.2f} s, {lines / wall:,.0f} lines/s, {rows_in} lines in, "
              f"{groups} distinct words", flush=True)
        return {"wall_s": round(wall, 3), "lines_per_s": round(lines / wall), "input_rows": rows_in, "groups": groups}

    results = timed_runs(spark, args.runs, "sluice-spark-wordcount-", one_run)
    report_warm(results, lines, "lines", args.json, {"spark_version": version, "lines": lines, "files": len(files),
                                                     "session_startup_s": round(session_s, 3)})


if __name__ == "__main__":
    main()
