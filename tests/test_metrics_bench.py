"""bench/train_throughput.py in its tiny CPU mode: both sides run on the same packs and report figures."""

import json
import subprocess
import sys

from conftest import ROOT


def test_throughput_bench_cpu_mode_reports_both_sides_on_the_same_packs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--preset", "tiny",
                           "--steps", "2", "--warmup", "1", "--seq-len", "128", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trajtune / TRL" in proc.stdout
    figures = json.loads(out.read_text())
    ours, trl = figures["trajtune"], figures["trl"]
    assert ours["attention"] == "sdpa" and ours["steps_timed"] == trl["steps_timed"] == 2
    assert ours["trained_tokens"] == trl["trained_tokens"] > 0  # same packs, same trained positions
    assert ours["trained_tokens_per_s"] > 0 and trl["trained_tokens_per_s"] > 0
    assert ours["mfu"] is None  # no known peak on CPU
