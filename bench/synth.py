"""Benchmark: oracle trajectories/s of `trajtune synth` per environment with 1 and 2 workers; the shell sandbox's
overhead per bash call against a plain subprocess; `hf:` episodes/s batched against one by one.

Runs whatever exists: each built-in environment that loads (sql, shell, apis, seal_tools) and any `--env
MODULE:CLASS`; a missing one is a line saying so. Times are
wall clock of the whole `synthesize` call (worker start-up included), best of --repeat.

    python bench/synth.py [--n 200] [--env synth_toy_env:ToyEnv] [--tasks sql=../shared/fixtures/agentbench_db/dev.jsonl]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT.parent / "shared" / "fixtures" / "templates" / "qwen2.5-instruct.jinja"


def load_env(name: str, tasks_file: str | None):
    """(env, None) or (None, why it cannot be benchmarked)."""
    from trajtune.data_builders.envs import make_env

    try:
        env = make_env(name, tasks_file=tasks_file)
        if not env.tasks(None, 1, 0):
            env.close()
            return None, "it has no tasks" + ("" if tasks_file else " without --tasks")
        return env, None
    except Exception as e:  # not built yet (ImportError), a sandbox that cannot start, ...
        return None, f"{type(e).__name__}: {e}"


def synth_rate(name: str, tasks_file: str | None, n: int, workers: int, work: Path, repeat: int) -> dict:
    """Best-of-`repeat` fresh synth runs of the first n tasks (both splits): tasks/s and what came out."""
    from trajtune.data_builders.synth import SynthConfig, synthesize

    best = None
    for r in range(repeat):
        out = work / f"{name.replace(':', '_')}.w{workers}.{r}.jsonl"
        t0 = time.perf_counter()
        s = synthesize(SynthConfig(env=name, out=str(out), tasks=tasks_file, n=n, split=None, workers=workers),
                       log=lambda *_: None, progress=False)
        seconds = time.perf_counter() - t0
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "tasks": s["tasks"], "trajectories": s["trajectories"], "solved": s["solved"],
                    "rejected": s["rejected"]}
    return best


def sandbox_overhead(calls: int) -> None:
    env, why = load_env("shell", None)
    if env is None:
        print(f"shell sandbox: skipped ({why})")
        return
    task = env.tasks(None, 1, 0)[0]
    env.reset(task, 0)
    call = {"id": "call_0", "type": "function", "function": {"name": "bash", "arguments": {"command": "true"}}}
    env.step(call)  # warm
    t0 = time.perf_counter()
    for _ in range(calls):
        env.step(call)
    sandboxed = (time.perf_counter() - t0) / calls * 1000
    t0 = time.perf_counter()
    for _ in range(calls):
        subprocess.run(["sh", "-c", "true"], check=True)
    plain = (time.perf_counter() - t0) / calls * 1000
    env.close()
    print(f"shell sandbox: {sandboxed:.1f} ms per bash call vs {plain:.1f} ms for a plain `sh -c true` subprocess "
          f"(overhead {sandboxed - plain:.1f} ms; target <= 20 ms per call), {calls} calls")


def hf_batched(episodes: int, work: Path) -> None:
    """Episodes/s of a tiny random hf: model on the apis env: one rollout at a time against agents.rollout_batch."""
    from trajtune.data_builders import agents

    env_name = "apis"
    env, why = load_env(env_name, None)
    if env is None:
        print(f"hf: skipped ({env_name}: {why})")
        return
    from trajtune.data_builders.envs import make_env
    from trajtune.data_builders.tokenizer import load_tokenizer
    from trajtune.trainer.modeling import make_tiny_llama

    tok = load_tokenizer(None, TEMPLATE)
    model_dir = work / "tiny-hf"
    make_tiny_llama(str(model_dir), len(tok), tok, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    policy = agents.make_policy(f"hf:{model_dir}")
    tasks = env.tasks(None, episodes, 0)
    t0 = time.perf_counter()
    for i, task in enumerate(tasks):
        agents.rollout(env, policy, task, i, max_turns=2)
    single = len(tasks) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    agents.rollout_batch(lambda: make_env(env_name), policy, tasks, seed=0, batch_size=len(tasks), max_turns=2)
    batched = len(tasks) / (time.perf_counter() - t0)
    print(f"hf: {batched:.2f} episodes/s batched ({len(tasks)} at once) vs {single:.2f} one by one: "
          f"{batched / single:.2f}x (tiny random Llama, {env_name}, 2 turns)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="tasks per environment (the first n of both splits)")
    p.add_argument("--env", action="append", default=[], help="also an environment MODULE:CLASS (on PYTHONPATH)")
    p.add_argument("--tasks", action="append", default=[], metavar="ENV=FILE", help="tasks file of an environment")
    p.add_argument("--repeat", type=int, default=2, help="runs per figure; the best time counts")
    p.add_argument("--calls", type=int, default=200, help="bash calls for the sandbox overhead")
    p.add_argument("--episodes", type=int, default=8, help="hf episodes, one by one and in one batch")
    a = p.parse_args()
    from trajtune.data_builders.envs import BUILTIN

    tasks_files = dict(spec.split("=", 1) for spec in a.tasks)
    work = Path(tempfile.mkdtemp(prefix="trajtune-bench-synth-"))
    try:
        print(f"oracle synth, first {a.n} tasks of each environment, best of {a.repeat} (wall clock, worker start-up "
              "included)")
        print(f"{'environment':<28}{'tasks':>7}{'solved':>8}{'rejected':>10}{'1 worker/s':>12}{'2 workers/s':>13}"
              f"{'speed-up':>10}")
        for name in [*BUILTIN, *a.env]:
            env, why = load_env(name, tasks_files.get(name))
            if env is None:
                print(f"{name:<28}skipped ({why})")
                continue
            env.close()
            one, two = (synth_rate(name, tasks_files.get(name), a.n, w, work, a.repeat) for w in (1, 2))
            r1, r2 = one["tasks"] / one["seconds"], two["tasks"] / two["seconds"]
            print(f"{name:<28}{one['tasks']:>7}{one['solved']:>8}{one['rejected']:>10}{r1:>12.1f}{r2:>13.1f}"
                  f"{r2 / r1:>9.2f}x")
            if (one["trajectories"], one["solved"]) != (two["trajectories"], two["solved"]):
                print(f"{'':<28}(!) 1 and 2 workers disagree: {one} vs {two}")
        sandbox_overhead(a.calls)
        hf_batched(a.episodes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
