"""`trajtune build` end to end on the Qwen2.5 template with a small BPE: every drop reason counted and written,
counts reconcile, packs hold every sampled token exactly once, determinism, caching, mixture, validation split."""

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from conftest import SHARED, TEMPLATES
from datasets import load_from_disk

from trajtune.data_builders.build import BuildConfig, RecordJob, build, process_record, truncation_point
from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.pack import IGNORE_INDEX
from trajtune.data_builders.render import render_with_mask
from trajtune.data_builders.tokenizer import load_tokenizer, train_bpe_tokenizer
from trajtune.data_builders.trajectory import line_chunks, validate_record
from trajtune.launcher.cli import main

QWEN = TEMPLATES / "qwen2.5-instruct.jinja"
WORDS = "alpha beta gamma delta file table query result weather city order user count rows value error".split()


def general_records(n, seed, prefix="g"):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        msgs = []
        for _ in range(rng.randint(1, 3)):
            msgs.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(5, 30)))})
            msgs.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(10, 80)))})
        out.append({"id": f"{prefix}{i}", "messages": msgs})
    return out


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("build")
    agent = d / "agent.jsonl"
    subprocess.run([sys.executable, str(SHARED / "bench" / "make_corpus.py"), "60", str(agent), "1"], check=True)
    general = write_jsonl(d / "general.jsonl", general_records(150, 0))
    texts = [json.dumps(json.loads(line)) for line in agent.read_text().splitlines()] + WORDS
    tok = train_bpe_tokenizer(texts, vocab_size=600, template=QWEN.read_text())
    tok.save_pretrained(str(d / "tok"))
    return {"dir": d, "agent": agent, "general": general, "tok": d / "tok"}


def config(fx, out, **kw):
    base = {"data": [f"{fx['agent']}:x1"], "out": str(out), "tokenizer": str(fx["tok"]), "seq_len": 2048,
            "cache_dir": str(fx["dir"] / "cache")}
    return BuildConfig(**{**base, **kw})


def split_packs(ds):
    """Every sample of every pack as (input_ids, labels), checking the row invariants on the way."""
    out = []
    for row in ds:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == sum(row["seq_lens"])
        start = 0
        for n in row["seq_lens"]:
            assert row["position_ids"][start:start + n] == list(range(n))  # restart at 0 per sample
            out.append((tuple(row["input_ids"][start:start + n]), tuple(row["labels"][start:start + n])))
            start += n
    return out


def expected_sample(record, tok, seq_len):
    r = render_with_mask(validate_record(record), tok)
    ids, mask = r.input_ids, r.loss_mask
    if len(ids) > seq_len:
        cut = truncation_point(mask, seq_len)
        ids, mask = ids[:cut], mask[:cut]
    labels = [IGNORE_INDEX] + [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]
    return tuple(ids), tuple(labels)


def test_packs_hold_every_sample_exactly_once_and_never_split(data, tmp_path):
    manifest = build(config(data, tmp_path / "out"))
    ds = load_from_disk(str(tmp_path / "out" / "train"))
    assert {n: str(f.feature.dtype) for n, f in ds.features.items()} == {
        "input_ids": "int32", "labels": "int32", "position_ids": "int32", "seq_lens": "int32"}
    got = split_packs(ds)
    assert all(len(row) <= 2048 for row in ds["input_ids"])
    tok = load_tokenizer(data["tok"])
    want = [expected_sample(json.loads(line), tok, 2048) for line in data["agent"].read_text().splitlines()]
    assert Counter(got) == Counter(want)  # no token lost, duplicated or moved between samples
    train = manifest["train"]
    assert train["packs"] == len(ds) and train["samples"] == len(got) == manifest["kept"] == 60
    assert train["total_tokens"] == sum(len(ids) for ids, _ in got)
    assert train["trained_tokens"] == sum(sum(lab != IGNORE_INDEX for lab in labels) for _, labels in got)
    assert train["packing_efficiency"] == pytest.approx(train["total_tokens"] / (len(ds) * 2048))
    assert train["packing_efficiency"] <= train["efficiency_upper_bound"] <= 1
    assert manifest["truncated"] == sum(len(ids) < len(render_with_mask(validate_record(json.loads(line)), tok).input_ids)
                                        for (ids, _), line in zip(want, data["agent"].read_text().splitlines()))
    assert manifest["truncated"] > 0  # the corpus has a tail past 2048 tokens


def test_truncation_cuts_after_a_trained_message_end(data):
    tok = load_tokenizer(data["tok"])
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    record = max((json.loads(line) for line in data["agent"].read_text().splitlines()), key=lambda r: len(r["messages"]))
    full = render_with_mask(validate_record(record), tok)
    first_end = truncation_point(full.loss_mask, len(full.loss_mask) - 1)
    while truncation_point(full.loss_mask, first_end - 1):  # walk back to the end of the first trained message
        first_end = truncation_point(full.loss_mask, first_end - 1)
    seq_len = first_end + 40  # room for the first trained message, not the second
    row = process_record(json.dumps(record).encode(), RecordJob(tok, None, seq_len, "truncate", "none", None))
    ids = row["input_ids"]
    assert row["truncated"] and row["reason"] == "" and len(ids) == first_end <= seq_len
    assert ids == full.input_ids[:first_end] and ids[-1] == eot and row["loss_mask"][-1] == 1
    dropped = process_record(json.dumps(record).encode(), RecordJob(tok, None, seq_len, "drop", "none", None))
    assert dropped["reason"] == "overlong" and "--overlong drop" in dropped["detail"]
    too_short = process_record(json.dumps(record).encode(), RecordJob(tok, None, first_end - 1, "truncate", "none", None))
    assert too_short["reason"] == "overlong" and too_short["input_ids"] == []


def test_every_drop_reason_is_counted_and_reported(data, tmp_path):
    good = general_records(30, 1, prefix="ok")
    eval_item = {"id": "eval_42", "messages": [{"role": "user", "content": " ".join(WORDS) + " zebra quokka"}]}
    planted = {"id": "leak", "messages": [{"role": "user", "content": "please: " + " ".join(WORDS[2:16])},
                                          {"role": "assistant", "content": "ok"}]}
    near = dict(good[0], id="near")
    near["messages"] = [dict(m) for m in good[0]["messages"]]
    near["messages"][-1]["content"] += " delta"  # one word more than good[0]
    long_msg = {"id": "long", "messages": [{"role": "user", "content": "alpha " * 3000}, {"role": "assistant", "content": "ok"}]}
    lines = good + [
        "{not json", {"id": "nomsg"}, {"id": "untrained", "messages": [{"role": "user", "content": "hi"}]},
        dict(good[1], id="dup"), near, planted, long_msg,
        {"id": "orphan", "messages": [{"role": "tool", "tool_call_id": "x", "content": "1"},
                                      {"role": "assistant", "content": "a"}]}]
    src = write_jsonl(tmp_path / "mixed.jsonl", lines)
    evals = write_jsonl(tmp_path / "eval.jsonl", [eval_item])
    manifest = build(config(data, tmp_path / "out", data=[str(src)], dedup="near", decontam=[str(evals)],
                            decontam_n=8, seq_len=1024))
    expected = {"bad_json": 1, "no_messages": 1, "no_trained_token": 1, "duplicate": 1, "near_duplicate": 1,
                "contaminated": 1, "overlong": 1, "orphan_tool_result": 1}
    assert manifest["dropped_by_reason"] == expected
    (source,) = manifest["sources"]
    assert source["records_in"] == len(lines) == manifest["kept"] + manifest["dropped"] == 30 + 8
    dropped = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert Counter(d["reason"] for d in dropped) == expected
    by_reason = {d["reason"]: d for d in dropped}
    assert by_reason["contaminated"]["id"] == "leak" and "eval_42" in by_reason["contaminated"]["detail"]
    assert manifest["decontamination"]["records"] == [{"file": str(src), "line": 36, "id": "leak", "overlaps": "eval_42"}]
    assert by_reason["bad_json"]["line"] == 31 and by_reason["bad_json"]["file"] == str(src)
    assert by_reason["duplicate"]["detail"] == f"same as {src}:2"
    assert by_reason["near_duplicate"]["id"] == "near" and by_reason["near_duplicate"]["detail"] == f"same as {src}:1"


def test_line_numbers_survive_blank_lines_crlf_and_a_missing_final_newline(data, tmp_path):
    # Two processes, runs of ~1 KB of lines, rendered 7 at a time: the map reads each run straight from the file.
    good = [json.dumps(r) for r in general_records(40, 9, prefix="g")]
    body = [good[0], "", "  \t", *good[1:20], "{broken", "", *good[20:]]
    src = tmp_path / "crlf.jsonl"
    src.write_bytes(("\r\n".join(body)).encode())  # CRLF line ends, none after the last line
    with mock.patch.multiple("trajtune.data_builders.build", BATCH=7, CHUNK_BYTES=1000, MIN_CHUNK_BYTES=1):
        manifest = build(config(data, tmp_path / "out", data=[str(src)], num_proc=2, dedup="none"))
    runs = list(line_chunks(src, 1000))
    assert len(runs) > 4 and runs[-1][1] == src.stat().st_size
    assert manifest["records_in"] == 41 and manifest["kept"] == 40
    (bad,) = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert (bad["line"], bad["reason"]) == (23, "bad_json")
    # Tokens come back from 2 cache files x several record batches by byte offset: every sample exactly as rendered.
    tok = load_tokenizer(data["tok"])
    want = [expected_sample(json.loads(line), tok, 2048) for line in good]
    assert Counter(split_packs(load_from_disk(str(tmp_path / "out" / "train")))) == Counter(want)


def test_runs_of_only_blank_lines_give_no_rows_and_keep_line_numbers(data, tmp_path):
    records = general_records(3, 4, prefix="b")
    src = tmp_path / "gaps.jsonl"
    src.write_text(json.dumps(records[0]) + "\n" + "\n" * 3000 + json.dumps(records[1]) + "\n" + " \n" * 2000
                   + "{bad\n" + json.dumps(records[2]))
    with mock.patch.multiple("trajtune.data_builders.build", CHUNK_BYTES=500, MIN_CHUNK_BYTES=1):
        manifest = build(config(data, tmp_path / "out", data=[str(src)], num_proc=2))
    assert sum(1 for start, end, _ in line_chunks(src, 500) if not src.read_bytes()[start:end].strip()) >= 8
    assert (manifest["records_in"], manifest["kept"]) == (4, 3)
    (bad,) = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert (bad["line"], bad["reason"]) == (1 + 3000 + 1 + 2000 + 1, "bad_json")


def test_many_drops_across_sources_and_record_batches_are_written_in_file_order(data, tmp_path):
    # Source b repeats every third record of a (exact duplicates, kept in a) and has bad lines; runs of ~1 KB make
    # many record batches, so drops and the records they repeat are read back from many batches of two files.
    a_records = general_records(60, 21, prefix="a")
    b_lines = []
    for i in range(60):
        b_lines.append(dict(a_records[i], id=f"copy{i}") if i % 3 == 0 else "{bad" if i % 7 == 0 else
                       general_records(1, 1000 + i, prefix=f"b{i}-")[0])
    src_a, src_b = write_jsonl(tmp_path / "a.jsonl", a_records), write_jsonl(tmp_path / "b.jsonl", b_lines)
    with mock.patch.multiple("trajtune.data_builders.build", CHUNK_BYTES=1000, MIN_CHUNK_BYTES=1):
        manifest = build(config(data, tmp_path / "out", data=[str(src_a), str(src_b)]))
    dropped = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    want = [{"file": str(src_b), "line": i + 1, "id": f"copy{i}", "reason": "duplicate",
             "detail": f"same as {src_a}:{i + 1}"} if i % 3 == 0 else
            {"file": str(src_b), "line": i + 1, "id": "", "reason": "bad_json"}
            for i in range(60) if i % 3 == 0 or i % 7 == 0]
    assert [{k: v for k, v in d.items() if not (k == "detail" and d["reason"] == "bad_json")} for d in dropped] == want
    a, b = manifest["sources"]
    assert (a["kept"], a["dropped"]) == (60, 0)
    assert b["dropped_by_reason"] == {"duplicate": 20, "bad_json": 6} and b["kept"] == 60 - 26
    assert manifest["kept"] + manifest["dropped"] == manifest["records_in"] == 120


def test_render_errors_are_dropped_under_the_renderers_reason(data, tmp_path):
    # Llama-2's template has no way to show tools: every agent record is dropped, counted, nothing else kept.
    src = write_jsonl(tmp_path / "two.jsonl", [json.loads(data["agent"].read_text().splitlines()[0]),
                                                general_records(1, 5)[0]])
    manifest = build(config(data, tmp_path / "out", data=[str(src)], tokenizer=None, prompt_format="none",
                            template=str(TEMPLATES / "llama-2-chat.jinja")))
    assert manifest["dropped_by_reason"] == {"template_cannot_express": 1} and manifest["kept"] == 1


def test_a_build_with_nothing_to_train_fails_with_the_reasons_and_the_fix(data, tmp_path):
    only_bad = write_jsonl(tmp_path / "bad.jsonl", ["{oops"])
    with pytest.raises(TrajtuneError, match=r"1 records in, 0 kept for training \(dropped: bad_json 1\).*trajtune convert"):
        build(config(data, tmp_path / "empty", data=[str(only_bad)]))
    assert not (tmp_path / "empty").exists()  # nothing half-built where the trainer would look
    listing = tmp_path / "empty.partial" / "dropped.jsonl"
    assert json.loads(listing.read_text())["reason"] == "bad_json"
    # Every record longer than --seq-len: the message names both fixes.
    with pytest.raises(TrajtuneError, match=r"overlong \d+\). Fix: raise --seq-len \(now 16\), or .*--overlong truncate"):
        build(config(data, tmp_path / "short", seq_len=16, overlong="drop"))


def test_same_seed_same_dataset_and_rerun_is_cached(data, tmp_path):
    cfg = config(data, tmp_path / "a", data=[f"{data['agent']}:0.3", f"{data['general']}:0.7"], seed=3)
    first = build(cfg)
    again = build(config(data, tmp_path / "b", data=cfg.data, seed=3, num_proc=2))
    assert again["build_key"] == first["build_key"]  # out dir and process count are not part of what is built
    a, b = load_from_disk(str(tmp_path / "a" / "train")), load_from_disk(str(tmp_path / "b" / "train"))
    assert a.to_dict() == b.to_dict()  # one process or two, same bytes
    other = load_from_disk(str(build(config(data, tmp_path / "c", data=cfg.data, seed=4))["config"]["out"]) + "/train")
    assert other.to_dict() != a.to_dict()
    logs = []
    assert build(cfg, log=logs.append)["build_key"] == first["build_key"]
    assert logs == [f"build: {tmp_path / 'a'} is up to date (same inputs, config, tokenizer and code)"]


def test_mixture_hits_target_share_of_trained_tokens(data, tmp_path):
    manifest = build(config(data, tmp_path / "out", data=[f"{data['agent']}:0.2", f"{data['general']}:0.8"]))
    agent, general = manifest["sources"]
    assert abs(agent["effective_mixture"] - 0.2) <= 0.02 * 0.2
    assert abs(general["effective_mixture"] - 0.8) <= 0.02 * 0.8
    assert manifest["train"]["trained_tokens"] == agent["sampled_trained_tokens"] + general["sampled_trained_tokens"]
    assert agent["effective_epochs"] == pytest.approx(1.0) or general["effective_epochs"] == pytest.approx(1.0)


def test_validation_split_holds_out_whole_records(data, tmp_path):
    manifest = build(config(data, tmp_path / "out", data=[str(data["general"])], val_fraction=0.2))
    train = split_packs(load_from_disk(str(tmp_path / "out" / "train")))
    val = split_packs(load_from_disk(str(tmp_path / "out" / "validation")))
    assert len(val) == manifest["validation"]["samples"] == 30 and len(train) == 120
    assert not set(train) & set(val)


def test_cli_builds_and_reports_bad_specs(data, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["build", "--data", f"{data['general']}:x2", "--tokenizer", str(data["tok"]), "--seq-len", "1024",
            "--out", str(out), "--cache-dir", str(data["dir"] / "cache")]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["train"]["samples"] == 300 and manifest["sources"][0]["effective_epochs"] == pytest.approx(2.0)
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert "efficiency" in capsys.readouterr().out
    assert main(["build", "--data", f"{data['general']}:-1", "--tokenizer", str(data["tok"]), "--out", str(out)]) == 2
    assert "no such file; the syntax is PATH, PATH:WEIGHT (WEIGHT > 0)" in capsys.readouterr().err
    assert main(["build", "--data", str(tmp_path / "missing.jsonl"), "--tokenizer", str(data["tok"]), "--out", str(out)]) == 2
    (tmp_path / "blank.jsonl").write_text("\n\n")
    assert main(["build", "--data", str(tmp_path / "blank.jsonl"), "--tokenizer", str(data["tok"]), "--out", str(out)]) == 2
    assert "has no records" in capsys.readouterr().err


def test_cli_config_file_with_flags_winning(data, tmp_path):
    yaml_file = tmp_path / "build.yaml"
    yaml_file.write_text(f"data: ['{data['general']}']\ntokenizer: {data['tok']}\nseq_len: 512\nseed: 1\n"
                         f"out: {tmp_path / 'ignored'}\ncache_dir: {data['dir'] / 'cache'}\n")
    assert main(["build", "--config", str(yaml_file), "--seq-len", "1024", "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["seq_len"] == 1024 and manifest["seed"] == 1 and not (tmp_path / "ignored").exists()
    yaml_file.write_text("dat: []\n")
    assert main(["build", "--config", str(yaml_file)]) == 2  # unknown key: a clear error, not ignored


def test_seq_lens_are_all_positive_and_packs_shuffled_deterministically(data, tmp_path):
    build(config(data, tmp_path / "out", data=[str(data["general"])], seq_len=1024))
    ds = load_from_disk(str(tmp_path / "out" / "train"))
    lens = np.array([sum(s) for s in ds["seq_lens"]])
    assert (lens > 0).all() and (lens <= 1024).all()


def test_example_config_has_only_known_keys():
    from conftest import ROOT

    from trajtune.launcher.config import load_config

    cfg = load_config(BuildConfig, ROOT / "configs" / "build.yaml")
    assert cfg.data == ["data/agent.jsonl:0.2", "data/general.jsonl:0.8"] and cfg.seq_len == 4096


def test_data_identity_is_what_training_reads_not_when_it_was_built(data, tmp_path):
    # A second build of the same inputs into a fresh directory: new timestamps, same data_sha256 (resume keys on
    # it); another seed orders the packs differently, so the identity changes.
    first = build(config(data, tmp_path / "a", val_fraction=0.1))
    again = build(config(data, tmp_path / "b", val_fraction=0.1, cache_dir=str(tmp_path / "fresh-cache")))
    assert (tmp_path / "a" / "manifest.json").read_bytes() != (tmp_path / "b" / "manifest.json").read_bytes()
    assert again["data_sha256"] == first["data_sha256"] and len(first["data_sha256"]) == 64
    assert build(config(data, tmp_path / "c", val_fraction=0.1, seed=1))["data_sha256"] != first["data_sha256"]
    assert build(config(data, tmp_path / "d", val_fraction=0.1, seq_len=1024))["data_sha256"] != first["data_sha256"]
    assert "sha256" not in first["train"]


def test_out_is_refused_unless_it_is_a_build_and_replaced_whole(data, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(TrajtuneError, match="is not a trajtune build directory"):
        build(config(data, precious))
    assert (precious / "notes.txt").read_text() == "keep me"
    (tmp_path / "afile").write_text("")
    with pytest.raises(TrajtuneError, match="is a file"):
        build(config(data, tmp_path / "afile"))
    out = tmp_path / "out"
    build(config(data, out, val_fraction=0.1))
    assert (out / "validation").is_dir()
    # A rebuild with other settings replaces the whole directory: no stale validation split, nothing beside it.
    build(config(data, out, seq_len=1024))
    assert not (out / "validation").exists() and json.loads((out / "manifest.json").read_text())["seq_len"] == 1024
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "out", "precious"]
    # An interrupted rebuild leaves the previous dataset whole.
    with mock.patch("trajtune.data_builders.build._pack_and_write", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            build(config(data, out, seq_len=1536))
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 1024 and len(load_from_disk(str(out / "train")))


def test_render_progress_counts_records(data, tmp_path, capsys):
    src = write_jsonl(tmp_path / "g.jsonl", general_records(29, 7) + [""] * 3)  # 29 records, 32 lines
    build(config(data, tmp_path / "out", data=[str(src)]))
    err = capsys.readouterr().err
    assert "render g.jsonl: 100%" in err and "29/29 [" in err and "examples" not in err


def test_code_hash_covers_files_in_subfolders(tmp_path):
    import shutil

    from trajtune.data_builders import build as build_module

    copy = tmp_path / "data_builders"
    shutil.copytree(Path(build_module.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = build_module._code_hash(copy)
    with open(copy / "converters" / "__init__.py", "a") as f:
        f.write("# an edit inside a wing\n")
    assert build_module._code_hash(copy) != before
