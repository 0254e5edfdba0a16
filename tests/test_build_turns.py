"""`trajtune build --turns`: per-turn records in the build (issue 12, item 2).

The converted public fixtures (tool calls, results, system prompts) built with QwQ's template, which renders
history differently from a generation: under `--turns auto` every record becomes one sample per trained turn.
A record stays the unit of the validation split (its turns never straddle train and validation), of the books
(kept / dropped) and of --overlong; the packs hold exactly the per-turn samples; the manifest counts them.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import ROOT, read_records
from datasets import load_from_disk

from trajtune.data_builders.pack import IGNORE_INDEX
from trajtune.data_builders.render.per_turn import render_turns
from trajtune.data_builders.tokenizer import load_tokenizer
from trajtune.launcher.cli import main

QWQ = ROOT / "tests" / "templates" / "qwq-32b.jinja"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, converted_fixtures):
    d = tmp_path_factory.mktemp("turns")
    records = read_records(converted_fixtures)
    tok = load_tokenizer(None, QWQ)
    samples = {}  # record id -> its per-turn samples as packed: (input_ids, labels)
    for r in records:
        try:
            turns = render_turns(r, tok)
        except Exception:  # noqa: BLE001  (declined records are the build's to count)
            continue
        samples[r["id"]] = [(tuple(s.input_ids), tuple([IGNORE_INDEX] + [t if m else IGNORE_INDEX for t, m in
                                                                         zip(s.input_ids[1:], s.loss_mask[1:])]))
                            for s in turns]
    longest = max(len(ids) for v in samples.values() for ids, _ in v)
    return {"dir": d, "data": converted_fixtures, "records": records, "samples": samples, "tok": tok,
            "seq_len": str(longest)}


def build(corpus, out, *flags: str) -> dict:
    assert main(["build", "--data", str(corpus["data"]), "--template", str(QWQ), "--out", str(out), "--cache-dir",
                 str(corpus["dir"] / "cache"), "--dedup", "none", *flags]) == 0
    return json.loads((out / "manifest.json").read_text())


def packed(directory) -> list[tuple[tuple, tuple]]:
    out = []
    for row in load_from_disk(str(directory)):
        start = 0
        for n in row["seq_lens"]:
            assert row["position_ids"][start:start + n] == list(range(n))
            out.append((tuple(row["input_ids"][start:start + n]), tuple(row["labels"][start:start + n])))
            start += n
    return out


def test_turns_of_a_record_never_straddle_train_and_validation(corpus, tmp_path, capsys):
    m = build(corpus, tmp_path / "out", "--val-fraction", "0.3", "--seq-len", corpus["seq_len"])
    assert "per-turn: " in capsys.readouterr().out
    owner = {s: rid for rid, samples in corpus["samples"].items() for s in samples}
    train, val = packed(tmp_path / "out" / "train"), packed(tmp_path / "out" / "validation")
    assert all(s in owner for s in train + val)  # every packed sample is exactly one of render_turns' samples
    in_train, in_val = Counter(owner[s] for s in train), Counter(owner[s] for s in val)
    assert in_train and in_val and not set(in_train) & set(in_val)
    for rid, n in (in_train + in_val).items():  # a record's every turn, once, in its one split
        assert n == len(corpus["samples"][rid])
    assert m["turns"]["template"] == "per-turn" and m["kept"] == len(in_train) + len(in_val)
    assert m["train"]["records"] == len(in_train) and m["train"]["samples"] == len(train)
    assert sum(src["validation_records"] for src in m["sources"]) == m["validation"]["records"] == len(in_val)


def test_manifest_counts_per_turn_records_samples_and_repeated_context(corpus, tmp_path):
    m = build(corpus, tmp_path / "out", "--seq-len", corpus["seq_len"])
    kept = corpus["samples"]
    turns = m["turns"]
    assert turns == {"mode": "auto", "template": "per-turn", "per_turn_records": len(kept),
                     "per_turn_samples": sum(map(len, kept.values())),
                     "extra_context_tokens": sum(len(ids) for s in kept.values() for ids, _ in s[:-1])}
    assert turns["per_turn_samples"] > turns["per_turn_records"] and turns["extra_context_tokens"] > 0
    assert m["kept"] == len(kept) and m["dropped"] == len(corpus["records"]) - len(kept)
    assert Counter(packed(tmp_path / "out" / "train")) == Counter(s for v in kept.values() for s in v)
    assert m["train"]["trained_tokens"] == sum(sum(t != IGNORE_INDEX for t in lab) for v in kept.values() for _, lab in v)


def test_joint_declines_what_per_turn_trains(corpus, tmp_path):
    # --turns joint is the old behaviour: QwQ's records are not prefix-stable, every one is dropped with that reason.
    assert main(["build", "--data", str(corpus["data"]), "--template", str(QWQ), "--out", str(tmp_path / "out"),
                 "--cache-dir", str(corpus["dir"] / "cache"), "--turns", "joint"]) == 2
    dropped = [json.loads(line) for line in (tmp_path / "out.partial" / "dropped.jsonl").read_text().splitlines()]
    assert Counter(d["reason"] for d in dropped)["not_prefix_stable"] >= len(corpus["samples"])


def test_overlong_per_turn_keeps_the_turns_that_fit_or_drops_the_record(corpus, tmp_path):
    many = max(corpus["samples"].values(), key=len)
    seq_len = max(len(ids) for ids, _ in many) - 1  # the longest record's last turn no longer fits
    m = build(corpus, tmp_path / "cut", "--seq-len", str(seq_len))
    got = Counter(packed(tmp_path / "cut" / "train"))
    want = Counter(s for v in corpus["samples"].values() for s in v if len(s[0]) <= seq_len)
    assert got == want and m["truncated"] >= 1
    assert m["kept"] == sum(any(len(s[0]) <= seq_len for s in v) for v in corpus["samples"].values())
    dropped = build(corpus, tmp_path / "drop", "--seq-len", str(seq_len), "--overlong", "drop")
    too_long = sum(any(len(s[0]) > seq_len for s in v) for v in corpus["samples"].values())
    assert dropped["dropped_by_reason"].get("overlong") == too_long and dropped["truncated"] == 0
