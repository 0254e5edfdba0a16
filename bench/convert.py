"""Conversion speed and memory: records/s for ShareGPT tool records (LLaMA-Factory style), and peak RSS.

Writes synthetic records -- human turn, `function_call`, `observation`, final `gpt` turn, `tools` as a JSON
string drawn from a few tool sets -- then converts them with `--from sharegpt` in a fresh child process per
size, so each peak RSS (ru_maxrss) belongs to that size alone. Streaming means the peak stays flat as the input
grows: compare the sizes. Prints one line per size and the ratio of the largest peak to the smallest.

    python bench/convert.py                                   # 200k for speed, peak RSS at 100k and 1M
    python bench/convert.py --records 20000 --rss-sizes 10000,50000   # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

CITIES = ["Paris", "Beijing", "São Paulo", "Nairobi", "Oslo", "Lima", "Hanoi", "Cairo", "Perth", "Quito"]


def tool_set(k: int) -> str:
    """One of a few tool lists (as LLaMA-Factory stores them: a JSON string)."""
    tools = [
        {"name": f"get_weather_{k}", "description": "Current weather for a city.", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}},
        {"name": f"get_time_{k}", "description": "Local time at a location.", "parameters": {
            "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
    ]  # fmt: skip
    return json.dumps(tools)


def write_records(path: str, n: int, seed: int = 0) -> None:
    """n synthetic LLaMA-Factory ShareGPT tool records, one per line, streamed to `path`."""
    rng = random.Random(seed)
    sets = [tool_set(k) for k in range(8)]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            k, city = rng.randrange(8), rng.choice(CITIES)
            temp = rng.randint(-20, 40)
            call = {"name": f"get_weather_{k}", "arguments": {"city": city, "unit": "celsius"}}
            record = {
                "conversations": [
                    {"from": "human", "value": f"What's the weather in {city} right now? (request {i})"},
                    {"from": "function_call", "value": json.dumps(call, ensure_ascii=False)},
                    {"from": "observation", "value": json.dumps({"temp_c": temp, "sky": "clear"})},
                    {"from": "gpt", "value": f"It is {temp} °C and clear in {city}."},
                ],
                "tools": sets[k],
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def child(path: str, out_path: str) -> None:
    """Convert `path`, print {records, seconds, peak_rss_mb, rss_before_mb} as JSON."""
    from trajtune.data_builders.converters import convert_file
    from trajtune.data_builders.trajectory import Ledger, dumps

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ledger = Ledger()
    start = time.perf_counter()
    with open(out_path, "w", encoding="utf-8") as out:
        convert_file(path, "sharegpt", ledger, lambda r: out.write(dumps(r) + "\n"))
    seconds = time.perf_counter() - start
    summary = ledger.summary()
    assert summary["quarantined"] == 0, summary
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"records": summary["kept"], "seconds": seconds, "peak_rss_mb": peak, "rss_before_mb": before}))


def measure(n: int, workdir: str) -> dict:
    path, out = os.path.join(workdir, f"in_{n}.jsonl"), os.path.join(workdir, f"out_{n}.jsonl")
    write_records(path, n)
    size_mb = os.path.getsize(path) / 2**20
    proc = subprocess.run([sys.executable, __file__, "--child", path, out], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["input_mb"] = size_mb
    for p in (path, out):
        os.remove(p)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="records for the speed figure")
    parser.add_argument("--rss-sizes", default="100000,1000000", help="comma-separated record counts for peak RSS")
    parser.add_argument("--workdir", default=None, help="where the synthetic files go (default: a temp dir)")
    parser.add_argument("--child", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = sorted({args.records, *(int(s) for s in args.rss_sizes.split(",") if s)})
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        results = {n: measure(n, workdir) for n in sizes}
    for n, r in results.items():
        print(
            f"{n:>9,} records ({r['input_mb']:7.1f} MB): {r['records'] / r['seconds']:9,.0f} records/s, "
            f"{r['seconds']:7.1f} s, peak RSS {r['peak_rss_mb']:6.1f} MB (after imports {r['rss_before_mb']:.1f} MB)"
        )
    peaks = [r["peak_rss_mb"] for r in results.values()]
    print(
        f"speed at {args.records:,}: {args.records / results[args.records]['seconds']:,.0f} records/s; "
        f"peak RSS largest/smallest size: {max(peaks) / min(peaks):.2f}x "
        f"({sizes[-1] // sizes[0]}x more records)"
    )


if __name__ == "__main__":
    main()
