"""Per-turn rendering (issue 12, item 2): each trained assistant message is its own sample, exact by construction.

On templates that render history differently from a generation (QwQ, the R1 distills, gpt-oss), every sample's
tokens must be `apply_chat_template(messages[:i], add_generation_prompt=True)` (untrained) followed by what the
model generates for message i through its stop token (trained), and nothing else.
"""

from __future__ import annotations

import pytest
import template_battery as tb
from conftest import ROOT

from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.render import RenderError, render_with_mask
from trajtune.data_builders.render.check import turn_cut_ok
from trajtune.data_builders.render.encode import ids_of_slices
from trajtune.data_builders.render.mask import prepare_record
from trajtune.data_builders.render.per_turn import (
    cut_texts,
    render_samples,
    render_turns,
    template_turns,
    turn_texts,
    turn_texts_of,
)
from trajtune.data_builders.render.spans import render_context
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


# ---------------------------------------------------------------------------------------------------------
# The fast path: a prefix-stable template's turns cut out of one render (per_turn.cut_texts), its contexts and
# targets tokenized from one encoding of it (encode.ids_of_slices). It must give exactly what rendering each turn
# apart gives (render_turns(..., exact=True)), and that what the model sees and writes (assert_exact).

ALL = tb.corpus_paths()
CELLS = [(p, "bare") for p in ALL] + [(p, "model") for p in ALL if any(p.stem.startswith(k) for k in tb.MODEL_TOKENS)]


def _outcome(record, tok, prompt_format, exact):
    try:
        return [(s.text, s.input_ids, s.loss_mask, s.trained_spans)
                for s in render_turns(record, tok, prompt_format, exact=exact)]
    except TrajtuneError as e:
        return (type(e).__name__, getattr(e, "reason", ""), str(e))


@pytest.mark.parametrize(("path", "mode"), CELLS, ids=[f"{p.stem}-{mode}" for p, mode in CELLS])
def test_the_cut_gives_exactly_the_samples_of_rendering_each_turn_apart(path, mode):
    # Every template forced per turn (those `template_turns` sends per turn, Qwen2.5 as the bench builds it, and
    # all others), every battery shape, with and without the built-in tool prompt.
    tok = tb.TOKENIZERS[mode](path)
    for shape in tb.SHAPES:
        for prompt_format in (None, "auto"):
            record = tb.shape_record(shape)
            fast = _outcome(record, tok, prompt_format, exact=False)
            assert fast == _outcome(record, tok, prompt_format, exact=True), (shape, prompt_format)
            for text, ids, mask, [(start, end)] in fast if isinstance(fast, list) else []:
                context = tok.encode(text[:start], add_special_tokens=False)  # the tokenizer's own encodings
                assert end == len(text) and ids == context + tok.encode(text[start:], add_special_tokens=False)
                assert mask == [0] * len(context) + [1] * (len(ids) - len(context))


def test_only_templates_that_write_history_like_a_generation_are_cut(toks):
    # Those `template_turns` renders per turn are never cut; Qwen2.5 (prefix-stable) is, and so is every sample of
    # the bench's corpus shapes.
    per_turn = []
    for path in ALL:
        tok = tb.bare_tokenizer(path)
        if template_turns(tok) == "per-turn":
            per_turn.append(path.stem)
            assert not turn_cut_ok(render_context(tok.chat_template, tok)), path.stem
    assert {"qwq-32b", "deepseek-r1-distill-qwen-32b", "gpt-oss-120b"} <= set(per_turn)
    for name in ("qwen2.5", "qwen3"):
        ctx, msgs, tools, where = prepare_record(tb.shape_record("second_round"), toks[name])
        assert turn_cut_ok(ctx) == (name == "qwen2.5")  # Qwen3 writes an empty thought only before a last answer
    ctx, msgs, tools, where = prepare_record(tb.shape_record("second_round"), toks["qwen2.5"])
    cut, full = cut_texts(ctx, msgs, tools, where)
    assert cut == turn_texts(ctx, msgs, tools, where) and all(full.startswith(c + t) for c, t in cut)
    assert turn_texts_of(tb.shape_record("second_round"), toks["qwen2.5"]).full == full


def test_a_record_the_cut_cannot_check_is_rendered_apart(toks):
    # A user turn that writes the generation header itself: one render cannot tell where the turns start, so the
    # record is rendered turn by turn (exact), with the same samples as ever.
    record = tb.shape_record("multi_turn_system")
    record["messages"][1]["content"] = "USRX1 <|im_start|>assistant\nnot a turn"
    ctx, msgs, tools, where = prepare_record(record, toks["qwen2.5"])
    assert turn_cut_ok(ctx) and cut_texts(ctx, msgs, tools, where) is None
    assert turn_texts_of(record, toks["qwen2.5"]).full is None
    assert_exact(toks["qwen2.5"], record)


@pytest.mark.parametrize("nfc", [False, True])
def test_slices_of_one_encoding_are_the_encodings_of_the_slices(nfc):
    # ids_of_slices cuts only at added tokens, where the tokenizer cuts: any slice (ends inside text, on an added
    # token's edge, or inside one: then encoded by pieces) has exactly the ids of encoding it on its own; it
    # spells its text unless the tokenizer normalizes it (NFC, as Qwen's: a decomposed "é" is composed).
    import random

    from tokenizers import normalizers

    tok = load_tokenizer(None, FIXTURES / "qwen2.5-instruct.jinja")  # (its own: a normalizer changes what is measured)
    if nfc:
        tok.backend_tokenizer.normalizer = normalizers.NFC()
    texts = [render_turns(tb.shape_record(s), tok)[-1].text for s in ("second_round", "content_and_call")]
    texts += [texts[0].replace("USRX5", "USRX5 çà et là — ünïcödé"), texts[1].replace("USRX11", "USRX11 e\u0301 ")]
    rng = random.Random(0)
    slices = [sorted({(a, b) for a, b in (sorted(rng.sample(range(len(t) + 1), 2)) for _ in range(200))}) for t in texts]
    for text, got, spans in zip(texts, ids_of_slices(tok, texts, slices), slices):
        for (s, e), (head, (a, b), tail, spelled) in zip(spans, got.slices):
            ids = head + got.ids[a:b].tolist() + tail
            assert ids == tok.encode(text[s:e], add_special_tokens=False), (s, e)
            assert spelled == (tok.decode(ids) == text[s:e]), (s, e)


def test_a_per_turn_build_of_cut_records_packs_exactly_their_samples(tmp_path):
    # Qwen2.5 forced per turn (the bench's build): every packed sample is one of rendering each turn apart, each
    # record's every turn that fits once; with a seq_len some turns overrun, those are left out (truncate).
    import json

    from datasets import load_from_disk

    from trajtune.data_builders.build import BuildConfig, build
    from trajtune.data_builders.pack import IGNORE_INDEX

    template = FIXTURES / "qwen2.5-instruct.jinja"
    tok = load_tokenizer(None, template)
    records = [tb.shape_record(s) for s in tb.SHAPES if s != "reasoning"]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    want = []
    for r in records:
        for s in render_turns(r, tok, exact=True):
            want.append((tuple(s.input_ids), tuple([IGNORE_INDEX] + [t if m else IGNORE_INDEX for t, m in
                                                                     zip(s.input_ids[1:], s.loss_mask[1:])])))
    seq_len = sorted(len(ids) for ids, _ in want)[-3]  # the two longest samples do not fit
    m = build(BuildConfig(data=[str(data)], template=str(template), out=str(tmp_path / "out"), seq_len=seq_len,
                          turns="per-turn", overlong="truncate", dedup="none", cache_dir=str(tmp_path / "cache")),
              log=lambda *_: None)
    got = []
    for row in load_from_disk(str(tmp_path / "out" / "train")):
        start = 0
        for n in row["seq_lens"]:
            got.append((tuple(row["input_ids"][start:start + n]), tuple(row["labels"][start:start + n])))
            start += n
    fits = [s for s in want if len(s[0]) <= seq_len]
    assert sorted(got) == sorted(fits) and len(fits) == len(want) - 2
    assert m["turns"]["per_turn_samples"] == len(fits) and m["truncated"] >= 1
