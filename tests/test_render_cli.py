"""`trajtune render`: JSON output, highlighted text, --index, --check-template verdicts, and exit codes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import TEMPLATES

from trajtune.data_builders.render import BATTERY
from trajtune.launcher.cli import main
from trajtune.launcher.cmd_render import add_arguments

QWEN = str(TEMPLATES / "qwen2.5-instruct.jinja")
QWEN3 = str(TEMPLATES / "qwen3.jinja")


def _data(tmp_path, names=("single_call", "plain_chat")):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(BATTERY[n]) + "\n" for n in names))
    return str(path)


def test_json_lines_carry_spans_ids_and_mask(tmp_path, capsys):
    assert main(["render", "--data", _data(tmp_path), "--template", QWEN, "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["id"] for x in lines] == ["single_call", "plain_chat"]
    first = lines[0]
    assert set(first) == {"id", "text", "trained_spans", "input_ids", "loss_mask"}
    assert [first["text"][s:e] for s, e in first["trained_spans"]] == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>',
        "It is 26 °C in Beijing.<|im_end|>"]
    assert len(first["input_ids"]) == len(first["loss_mask"]) and 0 < sum(first["loss_mask"]) < len(first["loss_mask"])


def test_index_renders_one_record_with_trained_text_shown(tmp_path, capsys):
    assert main(["render", "--data", _data(tmp_path), "--template", QWEN, "--index", "1"]) == 0
    out = capsys.readouterr().out
    assert "plain_chat" in out and "Why did the chicken cross?<|im_end|>" in out and "single_call" not in out


def test_record_the_template_cannot_express_exits_nonzero_with_the_reason(tmp_path, capsys):
    llama2 = str(TEMPLATES / "llama-2-chat.jinja")
    assert main(["render", "--data", _data(tmp_path), "--template", llama2, "--prompt-format", "none", "--json"]) == 1
    captured = capsys.readouterr()
    assert "d.jsonl:1: cannot render: template_cannot_express: llama-2-chat.jinja" in captured.err
    assert "--prompt-format" in captured.err
    assert [json.loads(x)["id"] for x in captured.out.splitlines()] == ["plain_chat"]
    assert main(["render", "--data", _data(tmp_path), "--template", llama2, "--prompt-format", "react", "--json"]) == 0


def _verdicts(out: str) -> dict[str, str]:
    return {line.split()[1].rstrip(":"): line.split()[0] for line in out.splitlines()
            if line.startswith(("ok ", "per-turn ", "declined "))}


def test_check_template_prints_a_verdict_per_case(capsys):
    assert main(["render", "--check-template", str(TEMPLATES / "llama-3.1-instruct.jinja")]) == 1
    out = capsys.readouterr().out
    assert _verdicts(out) == {"plain_chat": "ok", "single_call": "ok", "parallel_calls": "ok",
                              "content_and_call": "declined", "two_rounds": "ok", "loss_false": "ok",
                              "reasoning": "ok"}
    assert "pass --call-content drop" in out  # each decline names its fix
    assert main(["render", "--check-template", QWEN]) == 0


def test_check_template_reports_rendering_stops_and_folds(capsys):
    """For a new template: joint or not (prefix stability), the stop token per kind of message, the folds."""
    corpus = Path(__file__).resolve().parent / "templates"
    main(["render", "--check-template", str(corpus / "gpt-oss-120b.jinja")])
    out = capsys.readouterr().out
    assert "rendering: per-turn" in out  # a final answer ends in <|return|> only when it is the last message
    assert ("stop tokens: a final answer (the last message): <|return|>; an answer followed by another turn: <|end|>; "
            "a tool-call message followed by its results: <|call|>") in out
    main(["render", "--check-template", str(corpus / "gemma-2-2b-it.jinja")])
    out = capsys.readouterr().out
    assert "folds: system text folded into the first user turn" in out and "prompt format: tool-prompt" in out
    assert main(["render", "--check-template", str(corpus / "qwq-32b.jinja")]) == 0
    out = capsys.readouterr().out
    assert "rendering: per-turn" in out and set(_verdicts(out).values()) == {"per-turn"}
    assert "per-turn reasoning: 'Two and two make four.\\n</think>\\n\\n4.<|im_end|> | " in out
    assert main(["render", "--check-template", QWEN3]) == 0  # history strips thoughts: that case alone, per turn
    out = capsys.readouterr().out
    assert "rendering: joint, but not prefix-stable on reasoning" in out and _verdicts(out)["reasoning"] == "per-turn"


def test_missing_inputs_are_user_errors(tmp_path, capsys):
    assert main(["render", "--template", QWEN]) == 2
    assert main(["render", "--data", _data(tmp_path), "--template", str(tmp_path / "nope.jinja")]) == 2
    assert main(["render", "--data", _data(tmp_path), "--template", QWEN, "--index", "5"]) == 2
    assert "has only 2 records" in capsys.readouterr().err


def test_cli_flags_are_frozen():
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert sorted(a.dest for a in p._actions if a.dest != "help") == [
        "call_content", "call_syntax", "check_template", "data", "index", "json", "prompt_format", "reasoning",
        "template", "template_kwargs", "tokenizer"]


def test_prompt_format_auto_is_the_default_and_is_announced(tmp_path, capsys):
    """Llama-2's template has no tools: by default the built-in tool-prompt format renders them, said on stderr;
    Qwen2.5's has its own, and nothing is said."""
    llama2 = str(TEMPLATES / "llama-2-chat.jinja")
    assert main(["render", "--data", _data(tmp_path), "--template", llama2, "--json"]) == 0
    captured = capsys.readouterr()
    assert "--prompt-format auto renders tools and calls with the built-in 'tool-prompt' format" in captured.err
    first = json.loads(captured.out.splitlines()[0])
    assert '```json\n{"name": "get_weather", "parameters": {"city": "Beijing"}}\n```' in first["text"]
    assert main(["render", "--data", _data(tmp_path), "--template", QWEN, "--json"]) == 0
    assert capsys.readouterr().err == ""


def test_tokenizer_dir_uses_its_own_chat_template(tmp_path, capsys):
    from trajtune.data_builders.tokenizer import byte_level_tokenizer

    byte_level_tokenizer((TEMPLATES / "qwen3.jinja").read_text()).save_pretrained(str(tmp_path / "tok"))
    assert main(["render", "--data", _data(tmp_path, ("plain_chat",)), "--tokenizer", str(tmp_path / "tok"), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert [line["text"][s:e] for s, e in line["trained_spans"]] == [
        "Hello! How can I help?<|im_end|>", "<think>\n\n</think>\n\nWhy did the chicken cross?<|im_end|>"]


# --- Trained text is marked without a terminal: [[...]] when not colouring, green on a terminal ---


def _split_marked(out: str) -> tuple[list[str], str]:
    """(the texts inside [[ ]], everything outside them)."""
    return re.findall(r"\[\[(.*?)\]\]", out, flags=re.S), re.sub(r"\[\[.*?\]\]", "", out, flags=re.S)


def test_piped_render_marks_trained_text_in_double_brackets(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trajtune.launcher.cli", "render", "--data", _data(tmp_path),
                           "--template", QWEN], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout  # not a terminal: no colour codes, so the brackets are the only marking
    inside, outside = _split_marked(proc.stdout)
    assert inside == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>',
        "It is 26 °C in Beijing.<|im_end|>",  # single_call's two trained messages, then plain_chat's two
        "Hello! How can I help?<|im_end|>", "Why did the chicken cross?<|im_end|>"]
    for untrained in ("<|im_start|>system\n", "<|im_start|>user\nWhat's the weather in Beijing?<|im_end|>",
                      "<|im_start|>assistant\n", "<tool_response>"):
        assert untrained in outside


def test_render_on_a_colour_terminal_highlights_without_brackets(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")  # what a terminal gets; rich treats the output as one
    monkeypatch.setenv("TERM", "xterm-256color")
    assert main(["render", "--data", _data(tmp_path), "--template", QWEN, "--index", "1"]) == 0
    out = capsys.readouterr().out
    assert "[[" not in out and "\x1b[" in out and "Why did the chicken cross?<|im_end|>" in out


def test_build_takes_the_render_options_and_announces_auto(tmp_path, capsys):
    """The same flags on `trajtune build`: a reasoning record on Llama-2 (no tools, no place for reasoning) is
    kept with its reasoning inline, said on stderr as the tool-prompt format auto picks is; --reasoning drop
    leaves it out, and a config file's choice holds unless the command line names another."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({**BATTERY["single_call"], "messages": [
        *BATTERY["single_call"]["messages"][:-1],
        {"role": "assistant", "content": "26 °C.", "reasoning_content": "The tool said 26."}]}) + "\n")
    base = ["build", "--data", str(data), "--template", str(TEMPLATES / "llama-2-chat.jinja"), "--seq-len", "2048",
            "--cache-dir", str(tmp_path / "cache")]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "--prompt-format auto renders tools and calls with the built-in 'tool-prompt' format" in err
    assert "has no place for reasoning: --reasoning auto writes a record's reasoning_content inline" in err
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["kept"] == 1 and manifest["recipe"]["reasoning"] == "inline"
    config = tmp_path / "build.yaml"
    config.write_text("reasoning: drop\n")
    assert main([*base, "--config", str(config), "--out", str(tmp_path / "b")]) == 0
    assert "no place for reasoning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["recipe"]["reasoning"] == "drop"
