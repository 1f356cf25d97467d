"""Generate the input of bench/spark/windowed.py.

    python bench/spark/gen_events.py DIR [--events 2000000] [--per-file 100000]

writes DIR/events-00.json ... DIR/events-19.json (JSON lines, 100,000 events
each by default). Event i (0-based, across all files):

    ts    = 2026-01-01T00:00:00Z + i*50 ms - ((i*7919) % 60000) ms
    key   = "k" + str((i*31) % 1000)
    value = i % 100

so event time moves forward 50 ms per event with up to a minute of disorder.
File f gets modification time 2026-01-01T00:00Z + f minutes, so a file
source that reads oldest first reads them in name order. ts is printed with
millisecond precision and a Z, e.g.
{"ts":"2026-01-01T00:00:00.000Z","key":"k0","value":0}.
Plain Python 3, no dependencies; deterministic output.
"""

import argparse
import datetime
import os

BASE_MS = int(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp() * 1000)
EPOCH = datetime.datetime(1970, 1, 1)


def fmt_ms(ms):
    secs, milli = divmod(ms, 1000)
    t = EPOCH + datetime.timedelta(seconds=secs)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{milli:03d}Z"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--per-file", type=int, default=100_000)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    nfiles = (args.events + args.per_file - 1) // args.per_file
    width = max(2, len(str(nfiles - 1)))
    i = 0
    for f in range(nfiles):
        path = os.path.join(args.dir, f"events-{f:0{width}d}.json")
        end = min(args.events, i + args.per_file)
        lines = []
        while i < end:
            ms = BASE_MS + i * 50 - (i * 7919) % 60000
            lines.append(f'{{"ts":"{fmt_ms(ms)}","key":"k{(i * 31) % 1000}","value":{i % 100}}}\n')
            i += 1
        with open(path, "w", encoding="utf-8") as out:
            out.writelines(lines)
        # Spark's file source takes files oldest first: pin the order.
        mtime = 1767225600 + 60 * f
        os.utime(path, (mtime, mtime))
    print(f"wrote {args.events} events in {nfiles} files to {args.dir}")


if __name__ == "__main__":
    main()
