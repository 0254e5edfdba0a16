"""Per-turn rendering (issue 12, item 2): each trained assistant message is its own sample, exact by construction.

On templates that render history differently from a generation (QwQ, the R1 distills, gpt-oss), every sample's
tokens must be `apply_chat_template(messages[:i], add_generation_prompt=True)` (untrained) followed by what the
model generates for message i through its stop token (trained), and nothing else.
"""

from __future__ import annotations

import pytest
import template_battery as tb
from conftest import ROOT

from trajtune.data_builders.render import RenderError, render_with_mask
from trajtune.data_builders.render.mask import prepare_record
from trajtune.data_builders.render.per_turn import render_samples, render_turns, template_turns
from trajtune.data_builders.tokenizer import load_tokenizer
from trajtune.data_builders.trajectory import validate_record

CORPUS = ROOT / "tests" / "templates"
FIXTURES = ROOT.parent / "shared" / "fixtures" / "templates"


@pytest.fixture(scope="module")
def toks():
    return {"qwq": tb.bare_tokenizer(CORPUS / "qwq-32b.jinja"),
            "r1-distill": tb.bare_tokenizer(CORPUS / "deepseek-r1-distill-qwen-32b.jinja"),
            "gpt-oss": tb.model_tokenizer(CORPUS / "gpt-oss-120b.jinja"),  # eos <|return|>, as the model's
            "qwen2.5": load_tokenizer(None, FIXTURES / "qwen2.5-instruct.jinja"),
            "qwen3": load_tokenizer(None, FIXTURES / "qwen3.jinja")}


def assert_exact(tok, record: dict) -> list:
    """Every sample = the template's own generation prompt for messages[:i] (untrained) + the target (trained)."""
    ctx, msgs, tools, _ = prepare_record(record, tok)
    trained = [j for j, m in enumerate(msgs) if m.trained and not m.cont]
    samples = render_turns(record, tok)
    assert len(samples) == len(trained)
    for j, s in zip(trained, samples):
        context = tok.apply_chat_template([m.msg for m in msgs[:j]], tools=tools, add_generation_prompt=True,
                                          tokenize=False)
        context_ids = tok.apply_chat_template([m.msg for m in msgs[:j]], tools=tools, add_generation_prompt=True,
                                              tokenize=True, return_dict=False)
        target = s.text[len(context):]
        assert s.text.startswith(context) and s.trained_spans == [(len(context), len(s.text))]
        assert s.input_ids == list(context_ids) + tok.encode(target, add_special_tokens=False)
        assert s.loss_mask == [0] * len(context_ids) + [1] * (len(s.input_ids) - len(context_ids))
    return samples


def targets(samples) -> list[str]:
    return [s.text[s.trained_spans[0][0]:] for s in samples]


@pytest.mark.parametrize("shape", ["multi_turn_system", "single_call", "parallel_calls", "second_round", "loss_false",
                                   "reasoning", "content_and_call"])
def test_qwq_every_turn_is_its_generation_prompt_plus_thought_and_answer(toks, shape):
    # QwQ opens <think> in the generation prompt and strips thoughts from history: joint rendering is impossible.
    record = tb.shape_record(shape)
    with pytest.raises(RenderError, match="not_prefix_stable"):
        render_with_mask(record, toks["qwq"], exhaustive=True)
    samples = assert_exact(toks["qwq"], record)
    for target in targets(samples):
        assert target.count("</think>") == 1 and target.endswith("<|im_end|>")
        assert "<|im_start|>" not in target


def test_qwq_targets_carry_the_thought_or_an_empty_one(toks):
    chat = targets(render_turns(tb.shape_record("multi_turn_system"), toks["qwq"]))
    assert chat == ["\n</think>\n\nASTX1 here you go.<|im_end|>", "\n</think>\n\nASTX2 here you go.<|im_end|>"]
    thought = targets(render_turns(tb.shape_record("reasoning"), toks["qwq"]))
    assert thought == ["RSNX1 think first.\n</think>\n\nASTX8 here you go.<|im_end|>",
                       "RSNX2 think again.\n</think>\n\nASTX9 here you go.<|im_end|>"]
    # The same thought written inline in the content (<think>...</think>) gives the same target.
    inline = validate_record({"messages": [{"role": "user", "content": "USRX9 please help."}, {
        "role": "assistant", "content": "<think>\nRSNX1 think first.\n</think>\n\nASTX8 here you go."}]})
    assert targets(render_turns(inline, toks["qwq"])) == thought[:1]


@pytest.mark.parametrize("shape", ["multi_turn_system", "loss_false", "reasoning"])
def test_r1_distill_turns_are_exact(toks, shape):
    # The R1 distills drop the thought of every turn (even the last) and open <think> in the generation prompt.
    # (Its call turns need content None, which transformers 5.24's apply_chat_template drops before rendering.)
    record = tb.shape_record(shape)
    samples = assert_exact(toks["r1-distill"], record)
    assert all(t.endswith("<｜end▁of▁sentence｜>") for t in targets(samples))
    if shape == "reasoning":
        assert targets(samples)[0] == "RSNX1 think first.\n</think>\n\nASTX8 here you go.<｜end▁of▁sentence｜>"


@pytest.mark.parametrize("shape", ["multi_turn_system", "loss_false"])
def test_gpt_oss_final_answers_end_with_return_each_in_its_own_sample(toks, shape):
    # Harmony: a final answer ends with <|return|> when generated, with <|end|> in history.
    samples = assert_exact(toks["gpt-oss"], tb.shape_record(shape))
    for target in targets(samples):
        assert target.startswith("<|channel|>final<|message|>ASTX") and target.endswith("here you go.<|return|>")
    assert "<|channel|>final<|message|>ASTX1 here you go.<|end|>" in samples[-1].text if shape != "loss_false" else True


def test_gpt_oss_calls_end_with_call_and_keep_their_analysis(toks):
    # A call with text: harmony writes the text as an analysis message, then the call, in one generation; once a
    # final answer follows, the history drops that analysis, so the answer's context (with it, as at inference)
    # is not a prefix of the render with it last. The answer's target is its own final message, nothing before.
    samples = assert_exact(toks["gpt-oss"], tb.shape_record("content_and_call"))
    assert targets(samples) == [
        "<|channel|>analysis<|message|>ASTX10 let me look.<|end|><|start|>assistant to=functions.lookup_fnx6"
        '<|channel|>commentary json<|message|>{"query": "ARGX6"}<|call|>',
        "<|channel|>final<|message|>ASTX11 here you go.<|return|>"]
    assert "ASTX10 let me look." in samples[1].text[:samples[1].trained_spans[0][0]]  # the analysis, in context
    cell = tb.grade("gpt-oss-120b", "content_and_call", toks["gpt-oss"], mode="model", turns="auto")
    assert cell.verdict == "correct", cell.detail


def test_glm_5_1_call_turns_end_with_the_observation_token_it_writes_next():
    # GLM-5.1 opens <think> in its generation prompt, so it renders per turn, where each target is its message last:
    # after a last call the template writes only `</tool_call>`, and `<|observation|>` (where GLM stops) once the
    # result follows; that token is appended, as after a last answer. These were declined no_stop_token.
    tok = tb.bare_tokenizer(CORPUS / "glm-5.1.jinja")
    assert targets(assert_exact(tok, tb.shape_record("single_call"))) == [
        "</think><tool_call>lookup_fnx1<arg_key>query</arg_key><arg_value>ARGX1</arg_value></tool_call><|observation|>",
        "</think>ASTX3 here you go.<|user|>"]
    for shape in ("single_call", "parallel_calls", "second_round", "content_and_call"):
        cell = tb.grade("glm-5.1", shape, tok, turns="auto")
        assert cell.verdict == "correct", (shape, cell.detail, cell.message)


def test_nemotron_3_nano_turns_without_a_thought_close_the_opened_one():
    # Its generation prompt opens `<think>\n`, and it writes a message without reasoning as `<think></think>ANSWER`:
    # after that prompt the model writes the empty thought's close, then the answer, as the template writes them
    # (these were declined: "the template writes </think> after the generation prompt opened <think>").
    tok = tb.bare_tokenizer(CORPUS / "nemotron-3-nano.jinja")
    assert targets(assert_exact(tok, tb.shape_record("multi_turn_system"))) == [
        "</think>ASTX1 here you go.<|im_end|>", "</think>ASTX2 here you go.<|im_end|>"]
    call = targets(assert_exact(tok, tb.shape_record("content_and_call")))[0]
    assert call.startswith("</think>ASTX10 let me look.\n<tool_call>\n<function=lookup_fnx6>")
    assert call.endswith("</tool_call>\n<|im_end|>") and call.count("</think>") == 1
    # A message with its own reasoning keeps it, as the template writes it after the opened thought.
    assert targets(assert_exact(tok, tb.shape_record("reasoning")))[0] == \
        "RSNX1 think first.\n</think>\nASTX8 here you go.<|im_end|>"
    for shape in tb.SHAPES:
        cell = tb.grade("nemotron-3-nano", shape, tok, turns="auto")
        assert cell.verdict == "correct", (shape, cell.detail, cell.message)


def test_deepseek_r1_second_call_turn_written_without_its_header_is_declined_naming_it():
    # R1's template never resets `ns.is_first`: a later call turn is written right after the user's text, without the
    # `<｜Assistant｜>` its generation prompt ends with. The per-turn search for that header found the first call
    # turn's and took that turn as the target (declined only because a call name was missing from it).
    tok = tb.bare_tokenizer(CORPUS / "deepseek-r1.jinja")
    out = render_samples([tb.shape_record("second_round")], tok)[0]
    assert isinstance(out, RenderError) and out.reason == "not_prefix_stable", out
    assert "message 6" in str(out) and "'<｜Assistant｜>'" in str(out) and "'\\n<｜tool▁call▁begin｜>" in str(out)


def test_auto_is_decided_per_template(toks):
    assert template_turns(toks["qwen2.5"]) == "joint"
    assert template_turns(toks["qwen3"]) == "joint"
    assert template_turns(toks["qwq"]) == "per-turn"
    assert template_turns(toks["r1-distill"]) == "per-turn"


def test_auto_renders_a_record_per_turn_when_it_fails_joint(toks):
    # Qwen3 is prefix-stable, but strips the thought of history turns: a two-turn reasoning record fails joint
    # and falls back to per-turn, each turn trained with its own thought; a plain chat stays one joint sample.
    reasoning, chat = tb.shape_record("reasoning"), tb.shape_record("multi_turn_system")
    joint = render_samples([reasoning, chat], toks["qwen3"], turns="joint")
    assert isinstance(joint[0], RenderError) and joint[0].reason in ("mask_mismatch", "not_prefix_stable")
    auto = render_samples([reasoning, chat], toks["qwen3"], turns="auto")
    assert [(len(x.samples), x.per_turn) for x in auto] == [(2, True), (1, False)]
    assert ["RSNX1" in t and "RSNX2" not in t for t in targets(auto[0].samples)] == [True, False]
    assert auto[1].samples[0].input_ids == render_with_mask(chat, toks["qwen3"]).input_ids
    forced = render_samples([chat], toks["qwen3"], turns="per-turn")[0].samples
    # Forced per turn: turn 1 is history (untrained) in turn 2's context; each target is what Qwen3 generates, the
    # empty thought it writes before a last answer included.
    assert len(forced) == 2 and "ASTX1" in forced[1].text[:forced[1].trained_spans[0][0]]
    assert targets(forced) == ["<think>\n\n</think>\n\nASTX1 here you go.<|im_end|>",
                               "<think>\n\n</think>\n\nASTX2 here you go.<|im_end|>"]


def test_battery_cells_flip_from_declined_to_correct_per_turn():
    # Under --turns auto (the build's default) the not-prefix-stable templates' cells are trained correctly.
    paths = [CORPUS / "qwq-32b.jinja", CORPUS / "deepseek-r1-distill-qwen-32b.jinja"]
    joint = {(c.template, c.shape): c.verdict for c in tb.measure(paths, "bare")}
    auto = {(c.template, c.shape): c for c in tb.measure(paths, "bare", turns="auto")}
    assert not any(c.verdict in ("wrong", "crashed") for c in auto.values())
    flipped = sorted(k for k, c in auto.items() if c.verdict == "correct" and joint[k] == "declined")
    assert [s for t, s in flipped if t == "qwq-32b"] == sorted(tb.SHAPES)
    # (R1-distill's single call is declined either way: its template closes no single call turn.)
    assert [s for t, s in flipped if t.startswith("deepseek")] == sorted(
        ["loss_false", "multi_turn_system", "parallel_calls", "reasoning"])
