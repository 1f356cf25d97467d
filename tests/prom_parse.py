"""Parse OpenMetrics text with the official Python client and print its samples as JSON.

    curl -s http://127.0.0.1:9464/metrics | python tests/prom_parse.py

reads OpenMetrics text (as Sluice's /metrics serves it, ending with "# EOF") on
stdin, parses it with prometheus_client.openmetrics.parser, and prints one JSON
object mapping every sample to its value:

    {"sluice_query_input_rows_total{query=q}": 300.0,
     "sluice_query_batch_duration_seconds_bucket{le=0.001,query=q}": 0.0,
     "sluice_process_threads{}": 12.0, ...}

Keys are the sample name (with its suffix: _total, _bucket, _count, _sum, ...)
followed by its labels sorted by name as k=v, comma-separated, in braces (empty
braces when it has none). Values are numbers; an infinite or NaN value is
printed as the string "+Inf", "-Inf" or "NaN" so that the output stays JSON.
Exits 1, printing the parser's error on stderr, when the text does not parse.
Needs the prometheus_client package.
"""

import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def key(sample):
    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}"


def number(value):
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def parse(text):
    """Every sample of `text` as {key: value}; raises the parser's error if it does not parse."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[key(sample)] = number(float(sample.value))
    return samples


def main():
    text = sys.stdin.read()
    try:
        samples = parse(text)
    except Exception as e:  # the parser raises ValueError mostly, but also others on odd input
        print(f"not valid OpenMetrics: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(samples, sys.stdout, sort_keys=True, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
