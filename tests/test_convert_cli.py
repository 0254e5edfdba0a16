"""`trajtune convert` end to end: a corpus with one record of each invalid kind and valid edge cases splits
exactly into kept / quarantined with the right lines and reasons, the summary reconciles, `--strict` exits 1,
and bad data or bad usage never produces a traceback."""

import json
import subprocess
import sys

from conftest import FIXTURES

from trajtune.launcher.cli import main

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
        },
        "required": ["city"],
    }}},
]  # fmt: skip
USER = {"role": "user", "content": "weather?"}


def calling(args, name="get_weather", **extra):
    call = {"type": "function", "function": {"name": name, "arguments": args}}
    return {
        "id": extra.pop("id", None),
        "tools": TOOLS,
        "messages": [USER, {"role": "assistant", "tool_calls": [call]}],
    }


def line(obj) -> bytes:
    return json.dumps({k: v for k, v in obj.items() if v is not None}, ensure_ascii=False).encode()


# (raw line, expected reason or None for kept); line numbers are positions in this list, blank lines included
CORPUS = [
    (line({"id": "unicode", "messages": [USER, {"role": "assistant", "content": "北京 26 °C 🌤️ — ça va"}]}), None),
    (b"", "blank"),
    (b'{"id": "latin1", "messages": [{"role": "user", "content": "caf\xe9"}]}', "bad_utf8"),
    (b'{"id": "cut", "messages": [', "bad_json"),
    (b'["not", "an", "object"]', "not_object"),
    (b'{"id": "empty"}', "no_messages"),
    (line({"messages": [USER, {"role": "robot", "content": "beep"}]}), "bad_role"),
    (line({"messages": [USER, {"role": "tool", "tool_call_id": "x", "content": "26"}]}), "orphan_tool_result"),
    (line(calling({"location": "Paris"}, name="get_time")), "undefined_tool"),
    (line(calling(["Paris"])), "args_not_object"),
    (line(calling({"unit": "c"})), "args_schema"),  # required
    (line(calling({"city": 42})), "args_schema"),  # type
    (line(calling({"city": "Paris", "unit": "kelvin"})), "args_schema"),  # enum
    (line(calling({"city": "Paris", "where": {"lat": "north"}})), "args_schema"),  # nested
    (b"   ", "blank"),
    (
        line(
            {
                "id": "big",
                "messages": [{"role": "user", "content": "x" * 100_000}, {"role": "assistant", "content": "ok"}],
            }
        ),
        None,
    ),
    (line(calling('{"city": "Paris", "unit": "c"}', id="string_args")), None),
    (line(calling({"city": "Oslo", "where": {"lat": 59.9}}, id="nested")), None),
    (
        line(
            {
                "id": "loss",
                "messages": [
                    USER,
                    {"role": "assistant", "content": "a", "loss": False},
                    {"role": "user", "content": "b", "loss": True},
                ],
            }
        ),
        None,
    ),  # fmt: skip
]


def run_cli(tmp_path, *args):
    out, bad = tmp_path / "out.jsonl", tmp_path / "bad.jsonl"
    code = main(["convert", *map(str, args), "--out", str(out), "--quarantine", str(bad)])
    kept = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    rows = [json.loads(x) for x in bad.read_text(encoding="utf-8").splitlines()]
    return code, kept, rows


def test_corpus_splits_exactly_with_lines_and_reasons(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"\n".join(raw for raw, _ in CORPUS) + b"\n")
    code, kept, rows = run_cli(tmp_path, corpus, "--from", "auto", "--strict")
    assert code == 1  # --strict and something was quarantined
    assert [r["id"] for r in kept] == ["unicode", "big", "string_args", "nested", "loss"]
    expected = [(n, reason) for n, (_, reason) in enumerate(CORPUS, 1) if reason not in (None, "blank")]
    assert [(r["line"], r["reason"]) for r in rows] == expected
    assert all(r["file"] == str(corpus) and r["detail"] and isinstance(r["raw"], str) for r in rows)
    assert rows[0]["raw"].startswith('{"id": "latin1"')  # undecodable bytes replaced, the rest kept readable
    by_id = {r["id"]: r for r in kept}
    assert by_id["unicode"]["messages"][1]["content"] == "北京 26 °C 🌤️ — ça va"
    assert len(by_id["big"]["messages"][0]["content"]) == 100_000
    assert by_id["string_args"]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {
        "city": "Paris",
        "unit": "c",
    }
    assert [m.get("loss") for m in by_id["loss"]["messages"]] == [None, False, True]
    out = capsys.readouterr()
    assert "corpus.jsonl: openai (" in out.err
    assert "read 17 = kept 5 + quarantined 12 (args_not_object 1, args_schema 4, bad_json 1, bad_role 1, " in out.out
    assert code == 1 and main(["convert", str(corpus), "--out", str(tmp_path / "o2.jsonl")]) == 0  # not strict


def test_all_dataset_fixtures_in_one_run_reconcile(tmp_path, capsys):
    files = sorted(p for p in (FIXTURES / "datasets").iterdir() if p.suffix in (".json", ".jsonl"))
    code, kept, rows = run_cli(tmp_path, *files)
    assert code == 0
    assert (len(kept), len(rows)) == (29, 3)
    assert "read 32 = kept 29 + quarantined 3 (args_schema 1, bad_tools 1, unsupported 1)" in capsys.readouterr().out
    assert len({(r["source"], r["id"]) for r in kept}) == 29  # ids are the sources' own: unique per source


def test_json_document_errors_are_quarantined_not_raised(tmp_path, capsys):
    bad_utf8 = tmp_path / "latin1.json"
    bad_utf8.write_bytes(b'[{"messages": [{"role": "user", "content": "caf\xe9"}]}]')
    cut = tmp_path / "cut.json"
    cut.write_text('[\n{"messages": [{"role": "user", "content": "a"}]},\n{"messages": [\n')
    code, kept, rows = run_cli(tmp_path, bad_utf8, cut, "--from", "openai")
    assert code == 0 and len(kept) == 1
    assert [(r["file"].rsplit("/", 1)[-1], r["line"], r["reason"]) for r in rows] == [
        ("latin1.json", 1, "bad_utf8"),
        ("cut.json", 3, "bad_json"),
    ]


def test_usage_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["convert", str(FIXTURES / "seal_tools" / "field.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "cannot detect the format" in capsys.readouterr().err
    not_tools = tmp_path / "tools.json"
    not_tools.write_text('{"name": 3}')
    assert main(["convert", str(FIXTURES / "datasets" / "openai_chat_tools.jsonl"), "--tools", str(not_tools),
                 "--out", str(tmp_path / "o.jsonl")]) == 2  # fmt: skip
    assert "--tools" in capsys.readouterr().err


def test_console_script_never_prints_a_traceback_for_bad_data(tmp_path):
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(
        b'{"messages": [{"role": "user", "content": "ok"}]}\n\x00\xff\xfe garbage\n{"messages": 5}\n[]\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trajtune.launcher.cli", "convert", str(garbage), "--out", str(tmp_path / "o.jsonl")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "read 4 = kept 1 + quarantined 3 (bad_utf8 1, no_messages 1, not_object 1)" in proc.stdout


def test_convert_that_keeps_nothing_exits_2_with_the_reasons_and_the_fix(tmp_path, capsys):
    questions = FIXTURES / "bfcl" / "BFCL_v3_simple.json"  # read with the wrong format: every record quarantined
    bad = tmp_path / "bad.jsonl"
    code = main(["convert", str(questions), "--from", "sharegpt", "--out", str(tmp_path / "o.jsonl"), "--quarantine", str(bad)])
    out = capsys.readouterr()
    assert code == 2
    assert "read 40 = kept 0 + quarantined 40 (no_messages 40)" in out.out  # the summary still comes first
    assert "no record was kept: all 40 quarantined (no_messages 40)" in out.err
    assert "read as sharegpt; pass --from FORMAT" in out.err and f"see {bad}" in out.err
    assert len(bad.read_text().splitlines()) == 40
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["convert", str(empty), "--from", "openai", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "no record was read" in capsys.readouterr().err


def test_convert_a_directory_reads_the_json_files_directly_inside_it(tmp_path, capsys):
    datasets = FIXTURES / "datasets"  # 14 data files beside README.md and a reference/ folder
    code, kept, rows = run_cli(tmp_path, datasets)
    out = capsys.readouterr()
    assert code == 0 and f"{datasets}: directory: 14 files (*.json, *.jsonl)" in out.err
    assert "read 32 = kept 29 + quarantined 3" in out.out
    files = sorted(str(p) for p in datasets.iterdir() if p.suffix in (".json", ".jsonl"))
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows) and {r["file"] for r in rows} <= set(files)
    assert main(["convert", str(FIXTURES), "--out", str(tmp_path / "o.jsonl")]) == 2  # only subdirectories
    assert "is a directory with no *.json or *.jsonl files directly in it" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "missing: no such file or directory" in capsys.readouterr().err
