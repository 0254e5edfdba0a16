"""Stop tokens come from the template (issue 12, class 1): per kind of message, whole tokens of the tokenizer in use,
nothing the template did not render appended, nothing after the stop trained; and the byte-level tokenizer built
from `--template` alone gets that stop as its eos (never '' nor a role token)."""

from __future__ import annotations

import copy
import json

import pytest
import template_battery as tb
from conftest import TEMPLATES

from trajtune.data_builders.render import (
    RenderError,
    profile_template,
    render_with_mask,
    special_kwargs,
    template_stop_tokens,
)
from trajtune.data_builders.render.per_turn import render_samples
from trajtune.data_builders.tokenizer import byte_level_tokenizer
from trajtune.data_builders.trajectory import validate_record
from trajtune.launcher.cli import main

CORPUS = tb.CORPUS


def _record(*turns: str, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return validate_record({"id": "r", "messages": msgs})


def _trained(tok, r) -> list[str]:
    return tb.trained_runs(tok, r.input_ids, r.loss_mask)


def test_gemma_turns_end_at_end_of_turn_with_a_tokenizer_whose_eos_is_eos():
    """Gemma's tokenizer has eos `<eos>`, but its turns end with `<end_of_turn>\\n`: `<eos>` was appended (never
    rendered) and trained with the `\\n` before it; multi-turn records were dropped."""
    tok = byte_level_tokenizer((CORPUS / "gemma-3-it.jinja").read_text(), ["<bos>", "<eos>", "<start_of_turn>",
                                                                            "<end_of_turn>"])
    tok.bos_token, tok.eos_token = "<bos>", "<eos>"
    record = _record("U1 hi", "A1 hello", "U2 more", "A2 sure")
    r = render_with_mask(record, tok)
    assert _trained(tok, r) == ["A1 hello<end_of_turn>", "A2 sure<end_of_turn>"]  # the "\n" after it: never
    assert r.text == tok.apply_chat_template(record["messages"], tokenize=False)  # nothing appended
    assert "<eos>" not in r.text
    stops = template_stop_tokens(tok)
    assert (stops.answer, stops.history) == ("<end_of_turn>", "<end_of_turn>") and stops.open_last == frozenset()


@pytest.mark.parametrize("path, want", [
    # harmony: a final answer returns, a history answer ends, a call calls.
    (CORPUS / "gpt-oss-120b.jinja", {"answer": "<|return|>", "history": "<|end|>", "call": "<|call|>"}),
    (TEMPLATES / "llama-3.1-instruct.jinja", {"answer": "<|eot_id|>", "history": "<|eot_id|>", "call": "<|eot_id|>"}),
    # Qwen: `</tool_call>` closes the call the message opened; the turn ends at <|im_end|>.
    (TEMPLATES / "qwen2.5-instruct.jinja", {"answer": "<|im_end|>", "call": "<|im_end|>"}),
    # Command R7B: <|END_RESPONSE|> closes the <|START_RESPONSE|> of its header; the turn ends after it.
    (CORPUS / "command-r7b-12-2024.jinja", {"answer": "<|END_OF_TURN_TOKEN|>", "history": "<|END_OF_TURN_TOKEN|>"}),
    # GLM ends a turn with the next role token, and writes nothing after the last message (open_last).
    (TEMPLATES / "glm-4-9b-chat.jinja", {"answer": "<|user|>", "history": "<|user|>", "call": "<|observation|>"}),
    # DeepSeek-V3's template closes a call turn only after a second call: probed with one call, then two.
    (TEMPLATES / "deepseek-v3.jinja", {"answer": "<｜end▁of▁sentence｜>", "call": "<｜end▁of▁sentence｜>"}),
    # Command R's `Action:` turn is followed by the next turn's header, never closed: no stop, so declined.
    (CORPUS / "command-r-v01-tool_use.jinja", {"answer": "<|END_OF_TURN_TOKEN|>", "call": None}),
    # GLM-4.5 / 5.1 write `</tool_call>` after a last call, then `<|observation|>` once its result follows.
    (CORPUS / "glm-4.5.jinja", {"call": "<|observation|>", "call_last": "<|observation|>"}),
    (CORPUS / "glm-5.1.jinja", {"call": "<|observation|>", "call_last": "<|observation|>"}),
])
def test_stop_tokens_per_kind_of_message_are_read_from_probe_renders(path, want):
    stops = template_stop_tokens(tb.bare_tokenizer(path))
    assert {k: stops.of(k) for k in want} == want
    if path.stem.startswith("glm-"):
        assert stops.open_last == {"answer", "call_last"}


@pytest.mark.parametrize("path", [TEMPLATES / "deepseek-v3.jinja", CORPUS / "deepseek-r1-0528-qwen3-8b.jinja",
                                  CORPUS / "deepseek-r1-distill-qwen-32b.jinja"])
def test_a_call_turn_closed_only_after_a_second_call_is_declined_naming_that(path):
    """These templates write `<｜tool▁calls▁end｜><｜end▁of▁sentence｜>` inside their loop over the calls, after each
    call but the first: a turn with one call is never closed (the model writes that close, the template does not).
    It was declined as "no end-of-turn token after message 2"; now the message says why and what to do."""
    tok = tb.bare_tokenizer(path)
    assert template_stop_tokens(tok).multi_call_only == {"call", "call_last"}
    out = render_samples([tb.shape_record("single_call")], tok)[0]
    assert isinstance(out, RenderError) and out.reason == "no_stop_token", out
    assert "only after a second call" in str(out) and "--prompt-format tool-prompt" in str(out)
    assert tb.grade(path.stem, "parallel_calls", tok, turns="auto").verdict == "correct"  # two calls: closed
    fixed = tb.grade(path.stem, "single_call", tok, prompt_format="tool-prompt", turns="auto")
    assert fixed.verdict == "correct" and fixed.trained[0].endswith("```<｜end▁of▁sentence｜>")


def test_command_r_call_turns_the_template_never_closes_are_declined_naming_what_to_do():
    """Command R's template writes the next turn's header right after an `Action:` block: no stop is invented; the
    decline names the options (its own template closing call turns, or tool-prompt, whose turns it closes)."""
    tok = tb.bare_tokenizer(CORPUS / "command-r-v01-tool_use.jinja")
    with pytest.raises(RenderError) as e:
        render_with_mask(tb.shape_record("single_call"), tok)
    assert e.value.reason == "no_stop_token" and "<|START_OF_TURN_TOKEN|>" in str(e.value)
    assert "--template FILE.jinja" in str(e.value) and "--prompt-format tool-prompt" in str(e.value)
    r = render_with_mask(tb.shape_record("single_call"), tok, "tool-prompt")
    assert _trained(tok, r) == ['```json\n{"name": "lookup_fnx1", "parameters": {"query": "ARGX1"}}\n```'
                                "<|END_OF_TURN_TOKEN|>", "ASTX3 here you go.<|END_OF_TURN_TOKEN|>"]


@pytest.mark.parametrize("stem, eos", [
    ("olmo-2-1124-7b-instruct", "<|endoftext|>"),  # the old guess: the role token <|user|>
    ("gemma-3-it", "<end_of_turn>"), ("command-r-v01", "<|END_OF_TURN_TOKEN|>"),  # were '' (no eos)
    ("nvidia-nemotron-nano-9b-v2", "<SPECIAL_12>"), ("functionary-medium-v2.2", "<|stop|>"),
    ("exaone-3.5-7.8b-instruct", "[|endofturn|]"), ("bytedance-seed-oss-36b-instruct", "<seed:eos>"),  # was </s>
    ("gpt-oss-120b", "<|return|>"),  # was <|end|>
    ("falcon2-11b", "<|endoftext|>"),  # no stop token at all: an added eos, never ''
])
def test_byte_level_tokenizer_from_a_template_alone_takes_its_stop_token_as_eos(stem, eos):
    tok = tb.bare_tokenizer(CORPUS / f"{stem}.jinja")
    assert tok.eos_token == eos and len(tok.encode(eos, add_special_tokens=False)) == 1


def test_render_cli_with_template_alone_trains_command_r_turns(tmp_path, capsys):
    """Through `trajtune render --template`: the records used to be declined with "end-of-turn token ''"."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "r", "messages": [{"role": "user", "content": "U1"},
                                                         {"role": "assistant", "content": "A1"}]}) + "\n")
    assert main(["render", "--data", str(data), "--template", str(CORPUS / "command-r-v01.jinja"), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert [line["text"][s:e] for s, e in line["trained_spans"]] == ["A1<|END_OF_TURN_TOKEN|>"]


@pytest.fixture(scope="module")
def plain_renders() -> list[tuple[str, str, object, object]]:
    """(template, shape, tokenizer, Rendered) for every corpus template x tokenizer x the two shapes without tools."""
    out = []
    for path in tb.corpus_paths():
        for tok in filter(None, (tb.bare_tokenizer(path), tb.model_tokenizer(path))):
            for shape in ("multi_turn_system", "loss_false"):
                try:
                    out.append((path.stem, shape, tok, render_with_mask(tb.shape_record(shape), tok)))
                except RenderError:
                    continue
    return out


def _native(tok, messages: list[dict]) -> str:
    """apply_chat_template's text; for a template with no system role, of the messages with the system text folded
    into the first user turn (as the renderer does, test_render_conventions.py)."""
    prof = template_profile(tok)
    if messages[0]["role"] == "system" and prof.system_fold:
        messages = [{**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}, *messages[2:]]
    if prof.tools_where == "functions_message":  # FireFunction v1 demands a `functions` message, tools or not
        at = 1 if messages[0]["role"] == "system" else 0
        messages = [*messages[:at], {"role": "functions", "content": "[]"}, *messages[at:]]
    messages = [{**m, "content": [{"type": "text", "text": m["content"]}]} if m["role"] in prof.content_parts else m
                for m in messages]  # Gemma 3 1B reads the system text as content[0].text
    extra = {"functions": "[]"} if prof.tools_where == "functions" else {}  # FireFunction v2's variable
    try:
        return tok.apply_chat_template(messages, tokenize=False, **extra)
    except TypeError:  # a template that loops over `tools` unguarded (Hermes-2-Pro): the renderer passes []
        return tok.apply_chat_template(messages, tools=[], tokenize=False, **extra)


def template_profile(tok):
    return profile_template(tok.chat_template, tuple(sorted(special_kwargs(tok).items())))


def test_nothing_the_template_did_not_render_is_appended(plain_renders):
    """The rendered text is the template's own (apply_chat_template). Only where the template writes nothing after
    the last message (GLM) is a token added: the one it writes right there when another turn follows. Seed-OSS got
    `</s>` appended, gpt-oss `<|end|>` after `<|return|>`, Gemma `<eos>` after `<end_of_turn>\\n`."""
    assert len(plain_renders) > 80
    for name, shape, tok, r in plain_renders:
        messages = [{k: v for k, v in m.items() if k != "loss"} for m in copy.deepcopy(tb.SHAPES[shape]["messages"])]
        native = _native(tok, messages)
        extra = r.text[len(native):]
        assert r.text.startswith(native), (name, shape)
        if extra:
            last = messages[-1]["content"]
            followed = _native(tok, messages + [{"role": "user", "content": "more"}])
            assert native.endswith(last) and followed[followed.rindex(last) + len(last):].startswith(extra), (name, extra)
        for run in _trained(tok, r):  # each trained run ends with a stop token, and nothing follows it in the run
            assert any(run.endswith(t) for t in tok.get_added_vocab()), (name, shape, run)
