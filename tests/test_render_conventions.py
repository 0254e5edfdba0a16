"""Template conventions measured once per template and adapted (issue 12, classes 3-5): a system message the template
rejects or drops is folded into the first user turn, never lost; other variable conventions; call syntax."""

from __future__ import annotations

import json

import pytest
import template_battery as tb

from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.render import RenderError, profile_template, render_with_mask, special_kwargs
from trajtune.data_builders.render.options import RenderOptions
from trajtune.data_builders.render.per_turn import render_samples
from trajtune.data_builders.trajectory import validate_record
from trajtune.launcher.cli import main

CORPUS = tb.CORPUS


def _path(stem: str):
    path = CORPUS / f"{stem}.jinja"
    return path if path.is_file() else tb.SHARED_TEMPLATES / f"{stem}.jinja"


def _trained(tok, r) -> list[str]:
    return tb.trained_runs(tok, r.input_ids, r.loss_mask)


# ---------------------------------------------------------------------------------------------------------
# System folding


@pytest.mark.parametrize("stem, user_turn", [
    ("gemma-2-2b-it", "<start_of_turn>user\nSYSX1 You are a careful assistant.\n\nUSRX1 please help.<end_of_turn>"),
    ("gemma-7b-it", "<start_of_turn>user\nSYSX1 You are a careful assistant.\n\nUSRX1 please help.<end_of_turn>"),
    ("mistral-7b-instruct-v0.1", "[INST] SYSX1 You are a careful assistant.\n\nUSRX1 please help. [/INST]"),
    ("mistral-7b-instruct-v0.2", "[INST] SYSX1 You are a careful assistant.\n\nUSRX1 please help. [/INST]"),
])
def test_a_system_message_the_template_rejects_opens_the_first_user_turn(stem, user_turn):
    """Gemma 2 raises "System role not supported", Mistral v0.1/v0.2 "Conversation roles must alternate"."""
    tok = tb.bare_tokenizer(_path(stem))
    r = render_with_mask(tb.shape_record("multi_turn_system"), tok)
    assert user_turn in r.text
    assert [t.split("<")[0].strip() for t in _trained(tok, r)] == ["ASTX1 here you go.", "ASTX2 here you go."]


@pytest.mark.parametrize("stem", ["mistral-7b-instruct-v0.3", "mistral-nemo-instruct-2407", "phi-3-medium-4k-instruct",
                                  "phi-4-reasoning"])
def test_a_system_message_the_template_drops_is_kept_in_the_first_user_turn(stem):
    """These rendered without the system text (Mistral v0.3 keeps it only when the conversation ends on a user turn;
    Phi-4-reasoning replaces it with its own), and the cell was graded correct: a silent loss."""
    tok = tb.bare_tokenizer(_path(stem))
    record = tb.shape_record("multi_turn_system")
    r = render_with_mask(record, tok)
    assert "SYSX1 You are a careful assistant." in r.text[:r.text.index("USRX1")]
    assert "SYSX1" not in "".join(_trained(tok, r))


def test_a_system_message_with_no_user_turn_to_carry_it_is_an_error_not_a_drop():
    tok = tb.bare_tokenizer(_path("gemma-2-2b-it"))
    record = validate_record({"id": "s", "messages": [{"role": "system", "content": "SYSX9"},
                                                      {"role": "assistant", "content": "ASTX9"}]})
    with pytest.raises(TrajtuneError, match="no system role, and no user turn follows the system message"):
        render_with_mask(record, tok)


# ---------------------------------------------------------------------------------------------------------
# Variable conventions, measured once per template


def _render(stem: str, shape: str, **options):
    tok = tb.bare_tokenizer(_path(stem))
    r = render_with_mask(tb.shape_record(shape), tok, "auto", options=RenderOptions(**options))
    return r, _trained(tok, r)


def test_a_tool_list_read_as_functions_and_a_variable_nothing_gives_are_handled():
    """FireFunction v2 reads the tools as the JSON text `functions`, and `datetime`: the tools go there; the date,
    which no record holds, is declined naming --template-kwargs until given (it used to be an UndefinedError)."""
    with pytest.raises(RenderError) as e:
        _render("firefunction-v2", "single_call")
    assert e.value.reason == "template_variable" and "--template-kwargs datetime=VALUE" in str(e.value)
    r, trained = _render("firefunction-v2", "single_call", template_kwargs=(("datetime", "2024-06-01"),))
    assert "DESCX1 tool." in r.text and "Today is 2024-06-01." in r.text
    assert trained[0] == ' functools[{"name": "lookup_fnx1", "arguments": {"query": "ARGX1"}}]<|eot_id|>'


def test_a_template_that_demands_a_functions_message_gets_one():
    """FireFunction v1 raises 'Expected either "functions" or ["system", "functions"] as the first messages'."""
    r, trained = _render("firefunction-v1", "single_call")
    assert r.text.index("FUNCTIONS: ") < r.text.index("DESCX1") < r.text.index("USRX3")
    assert trained == ['<functioncall>{"name": "lookup_fnx1", "arguments": {"query": "ARGX1"}}</s>',
                       "<plain>ASTX3 here you go.</s>"]


def test_content_read_as_a_list_of_parts_gets_parts():
    """Gemma 3 1B reads the system text as content[0].text: a string raised an UndefinedError."""
    tok = tb.bare_tokenizer(_path("gemma-3-1b-it"))
    prof = profile_template(tok.chat_template, tuple(sorted(special_kwargs(tok).items())))
    assert prof.content_parts == {"system"} and not prof.system_fold  # the template folds it itself, its own way
    r = render_with_mask(tb.shape_record("multi_turn_system"), tok)
    assert "<start_of_turn>user\nSYSX1 You are a careful assistant.\n\nUSRX1 please help." in r.text


@pytest.mark.parametrize("stem", ["hermes-2-pro-tool_use", "gpt-oss-120b", "functionary-medium-v3.1"])
def test_tools_without_descriptions_render_on_templates_that_read_them_unguarded(stem):
    record = tb.shape_record("single_call")
    fn = record["tools"][0]["function"]
    del fn["description"], fn["parameters"]["properties"]["query"]["description"]
    tok = tb.bare_tokenizer(_path(stem))
    r = render_with_mask(record, tok)  # was template_error: 'dict object' has no attribute 'description'
    assert "lookup_fnx1" in r.text and any("ARGX1" in t for t in _trained(tok, r))


def test_template_kwargs_reach_the_template_through_the_cli(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "r", "messages": [{"role": "user", "content": "U"},
                                                         {"role": "assistant", "content": "A"}]}) + "\n")
    args = ["render", "--data", str(data), "--template", str(_path("gpt-oss-120b")), "--json"]
    assert main(args) == 0 and "Reasoning: medium" in json.loads(capsys.readouterr().out)["text"]
    assert main([*args, "--template-kwargs", "reasoning_effort=high"]) == 0
    assert "Reasoning: high" in json.loads(capsys.readouterr().out)["text"]
    assert main([*args, "--template-kwargs", "oops"]) == 2
    assert "give KEY=VALUE" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Call syntax: the template's own call text is trained


@pytest.mark.parametrize("stem, call", [
    ("qwen3-coder-30b-a3b-instruct", "<tool_call>\n<function=lookup_fnx1>\n<parameter=query>\nARGX1\n</parameter>\n"
                                     "</function>\n</tool_call><|im_end|>"),
    ("glm-4.5", "\n<think></think>\n<tool_call>lookup_fnx1\n<arg_key>query</arg_key>\n<arg_value>ARGX1</arg_value>\n"
                "</tool_call><|observation|>"),
    ("bytedance-seed-oss-36b-instruct", "<seed:tool_call>\n<function=lookup_fnx1>\n<parameter=query>ARGX1</parameter>\n"
                                        "</function>\n</seed:tool_call><seed:eos>"),
    # Kimi K2 Thinking writes the call id where the name goes: ids become functions.NAME:INDEX, as its docs say.
    ("kimi-k2-thinking", "<think></think><|tool_calls_section_begin|><|tool_call_begin|>functions.lookup_fnx1:0"
                         '<|tool_call_argument_begin|>{"query": "ARGX1"}<|tool_call_end|><|tool_calls_section_end|>'
                         "<|im_end|>"),
])
def test_native_calls_are_found_by_their_argument_values_and_trained_as_the_template_writes_them(stem, call):
    """These templates write calls in their own syntax; the profile accepted only JSON arguments, so hermes JSON
    was trained (a WRONG mask on Qwen3-Coder, Qwen3.5, GLM-4.5/5.1), or the call was declined (Seed-OSS, Kimi)."""
    r, trained = _render(stem, "single_call")
    assert trained[0] == call
    assert call.rsplit("<", 1)[0] in (tb.native_render(tb.bare_tokenizer(_path(stem)), tb.shape_record("single_call"))
                                      or [""])[-1]


def test_call_syntax_names_the_syntax_of_a_template_that_ignores_tool_calls():
    with pytest.raises(RenderError, match=r"--call-syntax NAME \(hermes, llama3, mistral, "):
        _render("hammer2.1", "single_call")
    _, trained = _render("hammer2.1", "parallel_calls", call_syntax="hermes")
    assert trained[0] == ('<tool_call>\n{"name": "lookup_fnx2", "arguments": {"query": "ARGX2"}}\n</tool_call>\n'
                          '<tool_call>\n{"name": "convert_fnx3", "arguments": {"query": "ARGX3"}}\n</tool_call><|im_end|>')
    with pytest.raises(TrajtuneError, match="the template writes tool calls itself"):
        _render("qwen2.5-instruct", "single_call", call_syntax="hermes")
    with pytest.raises(TrajtuneError, match="--call-syntax 'nope': choose one of hermes"):
        RenderOptions(call_syntax="nope")


def test_text_next_to_a_call_is_never_dropped_silently():
    """Llama 3.1's template writes the call or the text, not both: declined naming --call-content, dropped on request."""
    with pytest.raises(RenderError, match="pass --call-content drop"):
        _render("llama-3.1-instruct", "content_and_call")
    r, trained = _render("llama-3.1-instruct", "content_and_call", call_content="drop")
    assert trained[0] == '{"name": "lookup_fnx6", "parameters": {"query": "ARGX6"}}<|eot_id|>' and "ASTX10" not in r.text


def test_text_next_to_a_call_the_template_writes_as_two_turns_when_last_is_declined_naming_call_content():
    """Nemotron Nano 2 writes text and call as one turn in history, but as the last message (what a generation is
    trained as) it ends the turn after the text and writes the call as a turn of its own: the per-turn target was the
    text alone, declined as "lacks 'lookup_fnx6' (the template drops it)"."""
    tok = tb.bare_tokenizer(_path("nvidia-nemotron-nano-9b-v2"))
    assert not profile_template(tok.chat_template, tuple(sorted(special_kwargs(tok).items()))).content_with_calls
    out = render_samples([tb.shape_record("content_and_call")], tok)[0]
    assert isinstance(out, RenderError) and out.reason == "template_cannot_express" and "--call-content drop" in str(out)
    got = render_samples([tb.shape_record("content_and_call")], tok, options=RenderOptions(call_content="drop"))[0]
    runs = [run for s in got.samples for run in _trained(tok, s)]
    assert runs[0].endswith('<TOOLCALL>[{"name": "lookup_fnx6", "arguments": {"query": "ARGX6"}}]</TOOLCALL><SPECIAL_12>')
    assert runs[1:] == ["ASTX11 here you go.\n<SPECIAL_12>"] and not any("ASTX10" in s.text for s in got.samples)


# ---------------------------------------------------------------------------------------------------------
# Reasoning


def test_reasoning_goes_where_the_template_reads_it_else_inline():
    # Llama 3 has no place for reasoning: auto (the default) writes it inline, as R1-style distilled data does.
    inline = ["<think>\nRSNX1 think first.\n</think>\n\nASTX8 here you go.<|eot_id|>",
              "<think>\nRSNX2 think again.\n</think>\n\nASTX9 here you go.<|eot_id|>"]
    assert _render("llama-3-8b-instruct", "reasoning")[1] == inline
    assert _render("llama-3-8b-instruct", "reasoning", reasoning="inline")[1] == inline
    _, trained = _render("llama-3-8b-instruct", "reasoning", reasoning="drop")
    assert trained == ["ASTX8 here you go.<|eot_id|>", "ASTX9 here you go.<|eot_id|>"]
    # gpt-oss reads `thinking`, and only on the last turn: the history turn is declined, naming the option.
    record = tb.shape_record("reasoning")
    last = validate_record({"id": "r", "messages": record["messages"][2:]})
    tok = tb.bare_tokenizer(_path("gpt-oss-120b"))
    assert "RSNX2 think again." in "".join(_trained(tok, render_with_mask(last, tok)))
    with pytest.raises(RenderError, match="shows reasoning only on the last turn; pass --reasoning drop"):
        render_with_mask(record, tok)


def test_a_prompt_format_keeps_the_reasoning_for_the_template_to_place():
    """tool-prompt rewrote every message and lost reasoning_content: graded correct, the thought silently untrained."""
    tok = tb.bare_tokenizer(_path("gemma-3-it"))
    assert "RSNX1 think first." in "".join(_trained(tok, render_with_mask(tb.shape_record("reasoning"), tok, "tool-prompt")))


def test_reasoning_on_a_template_whose_generation_prompt_closes_the_thought_names_its_switch():
    """DeepSeek-V3.1 prompts `<｜Assistant｜></think>` unless `thinking` is set: training a thought after a closed one
    would teach what the prompt forbids, so the record is declined naming the kwarg; with it, each turn is its own
    sample after the prompt that opens `<think>`."""
    tok = tb.bare_tokenizer(_path("deepseek-v3.1"))
    with pytest.raises(RenderError, match=r"closes the thought .* pass --template-kwargs thinking=true .* or "
                                          "--reasoning drop"):
        render_with_mask(tb.shape_record("reasoning"), tok)


@pytest.mark.parametrize("name", ["deepseek-r1", "deepseek-r1-0528-qwen3-8b"])
def test_a_template_that_cuts_the_thought_from_every_turn_trains_it_per_turn(name):
    """DeepSeek-R1's template cuts `...</think>` from every assistant message, the last one too, and its generation
    prompt opens nothing: the model writes the thought itself. Per turn, the target is the thought, then the
    answer as the template writes it; the history keeps only the answer, as at inference."""
    from trajtune.data_builders.render.per_turn import render_samples

    tok = tb.bare_tokenizer(_path(name))
    with pytest.raises(RenderError, match="lacks 'RSNX1"):
        render_with_mask(tb.shape_record("reasoning"), tok)
    (samples,) = render_samples([tb.shape_record("reasoning")], tok)
    assert samples.per_turn and [_trained(tok, s) for s in samples.samples] == [
        ["<think>\nRSNX1 think first.\n</think>\n\nASTX8 here you go.<｜end▁of▁sentence｜>"],
        ["<think>\nRSNX2 think again.\n</think>\n\nASTX9 here you go.<｜end▁of▁sentence｜>"]]
    assert "RSNX1" not in samples.samples[1].text
