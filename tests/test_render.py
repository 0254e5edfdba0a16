"""render_with_mask: template quirks, verification that refuses wrong masks, tokenizers, and agreement with
Hugging Face's apply_chat_template. The per-template x per-case pins live in test_render_pins.py."""

import copy
import json
import random
import subprocess
import sys

import pytest
from conftest import SHARED, TEMPLATES

from trajtune.data_builders.render import (
    BATTERY,
    RenderError,
    apply_prompt_format,
    encode,
    profile_template,
    render_batch,
    render_text,
    render_with_mask,
    special_kwargs,
)
from trajtune.data_builders.tokenizer import byte_level_tokenizer, train_bpe_tokenizer
from trajtune.data_builders.trajectory import validate_record


def _tok(stem: str):
    tok = byte_level_tokenizer((TEMPLATES / f"{stem}.jinja").read_text())
    tok.name_or_path = stem
    return tok


def _case(name: str) -> dict:
    return validate_record(copy.deepcopy(BATTERY[name]))


def _trained(r) -> list[str]:
    return [r.text[s:e] for s, e in r.trained_spans]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[dict]:
    """40 synthetic multi-round tool trajectories from the shared benchmark generator."""
    out = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    subprocess.run([sys.executable, str(SHARED / "bench" / "make_corpus.py"), "40", str(out), "7"], check=True)
    return [validate_record(json.loads(line)) for line in out.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------
# Spans and masks


def test_qwen25_single_call_spans_are_pinned_as_character_offsets():
    r = render_with_mask(_case("single_call"), _tok("qwen2.5-instruct"))
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>'
    first = r.text.index(call)
    assert r.text[first - len("<|im_start|>assistant\n"):first] == "<|im_start|>assistant\n"
    answer = "It is 26 °C in Beijing.<|im_end|>"
    assert r.trained_spans == [(first, first + len(call)), (r.text.index(answer), r.text.index(answer) + len(answer))]
    assert r.text.endswith(answer + "\n")  # the newline after <|im_end|> is not generated, so not trained
    assert len(r.loss_mask) == len(r.input_ids) and set(r.loss_mask) == {0, 1}


def test_fast_path_agrees_with_prefix_proof_on_a_multi_round_corpus(corpus):
    # The corpus writes text beside every call; templates that drop one of them get call-only turns instead.
    for stem in ("qwen2.5-instruct", "qwen3", "llama-3.1-instruct", "hermes-2-pro-tool_use", "granite-3.3-instruct",
                 "glm-4-9b-chat", "mistral-7b-instruct-v0.3", "phi-4-mini-instruct", "smollm3-3b", "deepseek-v3"):
        tok = _tok(stem)
        for rec in corpus[:8]:
            calls_only = copy.deepcopy(rec)
            for m in calls_only["messages"]:
                if m.get("tool_calls"):
                    m["content"] = None
            for r in (rec, calls_only):
                try:
                    slow = render_with_mask(r, tok, exhaustive=True)
                except RenderError as e:
                    with pytest.raises(RenderError) as fast_e:
                        render_with_mask(r, tok)
                    assert fast_e.value.reason == e.reason
                    continue
                fast = render_with_mask(r, tok)
                assert (fast.text, fast.trained_spans, fast.loss_mask) == (slow.text, slow.trained_spans, slow.loss_mask)
                assert len(fast.trained_spans) == sum(m["role"] == "assistant" for m in r["messages"])


def test_render_text_equals_apply_chat_template():
    for stem in ("qwen2.5-instruct", "llama-3.1-instruct", "mistral-7b-instruct-v0.3", "hermes-2-pro-tool_use"):
        tok = _tok(stem)
        rec = _case("single_call")
        msgs = [{k: v for k, v in m.items() if k != "loss"} for m in rec["messages"]]
        for gen in (False, True):
            want = tok.apply_chat_template(msgs, tools=rec["tools"], tokenize=False, add_generation_prompt=gen)
            assert render_text(tok.chat_template, msgs, rec["tools"], gen, special_kwargs(tok)) == want


def test_bpe_mask_decodes_to_exactly_the_trained_text(corpus):
    template = (TEMPLATES / "qwen2.5-instruct.jinja").read_text()
    texts = (m.get("content") or "" for r in corpus for m in r["messages"])
    tok = train_bpe_tokenizer(texts, vocab_size=1024, template=template)
    for rec in corpus[:10]:
        r = render_with_mask(rec, tok)
        assert len(r.input_ids) < len(r.text.encode()) / 2  # merges happened
        runs, cur = [], []
        for i, keep in zip(r.input_ids, r.loss_mask):
            if keep:
                cur.append(i)
            elif cur:
                runs.append(cur)
                cur = []
        runs += [cur] if cur else []
        assert [tok.decode(run) for run in runs] == _trained(r)


def test_token_straddling_the_generation_boundary_is_an_error_not_a_guess():
    # A template whose generation prompt ends mid-word: "Bot" + "ty ..." merge into one BPE token "Botty",
    # which inference never produces (the prompt ends at "Bot"). Training it either way would be wrong.
    template = ("{% for m in messages %}{% if m.role == 'user' %}<|user|>{{ m.content }}{% else %}Bot{{ m.content }}"
                "<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}Bot{% endif %}")
    tok = train_bpe_tokenizer(["Botty is here. Botty is here."] * 50, vocab_size=300, template=template)
    assert len(tok.backend_tokenizer.encode("Botty").ids) == 1
    rec = validate_record({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ty is here."}]})
    with pytest.raises(RenderError) as e:
        render_with_mask(rec, tok)
    assert e.value.reason == "token_straddles_boundary" and "'Botty'" in str(e.value)
    byte_tok = byte_level_tokenizer(template)  # no merges: the same record masks fine
    assert _trained(render_with_mask(rec, byte_tok)) == ["ty is here.<|end|>"]


def _outcome(record, tok, prompt_format=None):
    try:
        return render_with_mask(record, tok, prompt_format)
    except RenderError as e:
        return e


def _same(a, b) -> bool:
    if isinstance(a, RenderError) or isinstance(b, RenderError):
        return type(a) is type(b) and (a.reason, str(a)) == (b.reason, str(b))
    return a == b  # Rendered is a dataclass: text, ids, mask and spans all compared


def test_render_batch_equals_render_with_mask_record_by_record(corpus, monkeypatch):
    # A small chunk so the batch crosses encode_batch calls; records that raise sit between ones that render.
    monkeypatch.setattr(encode, "ENCODE_CHUNK", 7)
    template = (TEMPLATES / "qwen2.5-instruct.jinja").read_text()
    texts = (m.get("content") or "" for r in corpus for m in r["messages"])
    bpe = train_bpe_tokenizer(texts, vocab_size=1024, template=template)
    nothing = _case("plain_chat")
    for m in nothing["messages"]:
        m["loss"] = False
    user_trained = _case("plain_chat")
    user_trained["messages"][1]["loss"] = True
    header_in_text = copy.deepcopy(corpus[0])  # the header count is off: falls back to the prefix proof
    header_in_text["messages"][-1]["content"] += " <|im_start|>assistant\n again"
    mixed = corpus[:20] + [nothing, user_trained, header_in_text] + corpus[20:]
    for tok in (bpe, _tok("qwen2.5-instruct"), _tok("llama-3.1-instruct")):
        want = [_outcome(r, tok) for r in mixed]
        got = render_batch(mixed, tok)
        assert len(got) == len(mixed) and all(_same(a, b) for a, b in zip(got, want))
        reasons = {w.reason for w in want if isinstance(w, RenderError)}
        assert {"nothing_trained", "template_cannot_express"} <= reasons
        if tok is bpe:  # proved by prefixes, and masked all the same
            assert not isinstance(want[22], RenderError) and len(want[22].trained_spans) > 1
    assert render_batch([], bpe) == []

    # The straddling token of the test above, and a prompt format, through the batch path too.
    straddle = ("{% for m in messages %}{% if m.role == 'user' %}<|user|>{{ m.content }}{% else %}Bot{{ m.content }}"
                "<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}Bot{% endif %}")
    tok = train_bpe_tokenizer(["Botty is here. Botty is here."] * 50, vocab_size=300, template=straddle)
    recs = [validate_record({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": c}]})
            for c in ("ty is here.", " is here.", "ty again")]
    want = [_outcome(r, tok) for r in recs]
    assert [getattr(w, "reason", "ok") for w in want] == ["token_straddles_boundary", "ok", "token_straddles_boundary"]
    assert all(_same(a, b) for a, b in zip(render_batch(recs, tok), want))
    tok = _tok("llama-2-chat")
    want = [_outcome(r, tok, "react") for r in corpus[:5]]
    assert all(_same(a, b) for a, b in zip(render_batch(corpus[:5], tok, "react"), want))


def test_masks_from_ids_alone_equal_masks_from_offsets(corpus, monkeypatch):
    # Byte-level BPEs are encoded without offsets and masked from each token's byte length; that must give
    # exactly what the offsets give, also on multi-byte text, straddling tokens, and texts it must hand back.
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers

    template = (TEMPLATES / "qwen2.5-instruct.jinja").read_text()
    texts = [m.get("content") or "" for r in corpus for m in r["messages"]] + ["北京的天气 ☀️ café naïve 🙂"] * 20
    bpe = train_bpe_tokenizer(texts, vocab_size=1024, template=template)
    nfc = train_bpe_tokenizer(texts, vocab_size=1024, template=template)
    nfc.backend_tokenizer.normalizer = normalizers.NFC()  # as Qwen's tokenizer: lossless only on NFC text
    split = train_bpe_tokenizer(texts, vocab_size=1024, template=template)  # Llama-3 / Qwen2 shape: regex, then bytes
    split.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                                   r"|\s*[\r\n]+|\s+(?!\S)|\s+"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    strip = _tok("qwen2.5-instruct")  # <|im_end|> swallows the spaces before it: ids no longer spell the text
    strip.backend_tokenizer.add_special_tokens([AddedToken("<|im_end|>", lstrip=True, special=True)])
    as_text = train_bpe_tokenizer(texts, vocab_size=1024, template=template)
    as_text.backend_tokenizer.encode_special_tokens = True  # split_special_tokens=True: "<|im_end|>" is plain text
    multi = []
    for content in ("北京 is 26 °C ☀️", "e\u0301 is not NFC", "ends in spaces   ", "🙂" * 3):
        rec = copy.deepcopy(corpus[0])
        rec["messages"][-1]["content"] = content
        multi.append(validate_record(rec))
    records = corpus + multi
    monkeypatch.setattr(encode, "ENCODE_CHUNK", 16)
    for tok in (bpe, nfc, split, strip, as_text, _tok("qwen3"), _tok("glm-4-9b-chat"), _tok("phi-4-mini-instruct")):
        byte_level = encode._byte_level(tok.backend_tokenizer)
        assert byte_level is not None and (byte_level.added is None) == (tok in (strip, as_text))
        from_ids = render_batch(records, tok)
        assert (tok in (strip, as_text)) or byte_level.cache  # the tool list of every record, encoded once
        with monkeypatch.context() as m:
            m.setattr(encode, "_byte_level", lambda *a: None)
            from_offsets = render_batch(records, tok)
        assert all(_same(a, b) for a, b in zip(from_ids, from_offsets))
        assert not any(isinstance(r, RenderError) for r in from_ids)
    assert not encode._mask_from_bytes(*_ids_of(nfc, "e\u0301"), [(0, 1)], "x")  # NFC would change it
    assert not encode._mask_from_bytes(*_ids_of(strip, "a <|im_end|>"), [(0, 1)], "x")  # 1 byte short

    # Straddling tokens: same error, same message, both ways.
    straddle = ("{% for m in messages %}{% if m.role == 'user' %}<|user|>{{ m.content }}{% else %}Bot{{ m.content }}"
                "<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}Bot{% endif %}")
    tok = train_bpe_tokenizer(["Botty is here. Botty ü is here."] * 50, vocab_size=300, template=straddle)
    recs = [validate_record({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": c}]})
            for c in ("ty is here.", " is here.", "ty ü is here.", "ü")]
    from_ids = render_batch(recs, tok)
    monkeypatch.setattr(encode, "_byte_level", lambda *a: None)
    assert [getattr(r, "reason", "ok") for r in from_ids] == ["token_straddles_boundary", "ok"] * 2
    assert all(_same(a, b) for a, b in zip(from_ids, render_batch(recs, tok)))


def test_repeated_segments_are_encoded_once_and_joined_exactly(monkeypatch):
    # Texts cut at added tokens around long repeated segments (at the start, the end, back to back, twice in one
    # call, across calls, after the cache is trimmed) must give exactly the ids of encoding each text whole.
    template = (TEMPLATES / "qwen2.5-instruct.jinja").read_text()
    rng = random.Random(0)
    words = "the of tool city weather query {} [] : , \n 北京 🙂 é".split(" ")
    segments = [" ".join(rng.choices(words, k=rng.randint(60, 200))) for _ in range(5)]
    tok = train_bpe_tokenizer(segments * 3, vocab_size=600, template=template)
    backend = tok.backend_tokenizer
    shared = encode._byte_level(backend)
    byte_level = encode._ByteLevel(shared.lengths, shared.nfc, shared.added)  # an empty cache of its own
    specials = ["<|im_start|>", "<|im_end|>", "<tools>", "</tools>", "\n"]
    texts = []
    for _ in range(120):
        parts = [rng.choice(segments) if rng.random() < 0.5 else " ".join(rng.choices(words, k=rng.randint(0, 90)))
                 for _ in range(rng.randint(1, 6))]
        texts.append("".join(p + rng.choice(specials) * rng.randint(0, 2) for p in parts))
    monkeypatch.setattr(encode, "REPEAT_CACHE_CHARS", 3000)  # trimmed now and then: the cache starts afresh
    for c in range(0, len(texts), 7):
        want = [e.ids for e in backend.encode_batch_fast(texts[c:c + 7], add_special_tokens=False)]
        assert encode._ids_of_texts(backend, byte_level, texts[c:c + 7]) == want
    assert byte_level.cache and byte_level.seen
    backend.encode_special_tokens = True  # switched after the first use: measured again, and no cuts
    assert encode._byte_level(backend).added is None
    backend.encode_special_tokens = False
    assert encode._byte_level(backend) is shared
    from tokenizers import AddedToken

    backend.add_tokens([AddedToken("<extra>", normalized=True)])  # found in a second pass: no cuts then
    assert encode._byte_level(backend).added is None


def test_a_tokenizer_that_is_not_byte_level_is_masked_from_offsets(corpus):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    template = (TEMPLATES / "qwen2.5-instruct.jinja").read_text()
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()  # sentencepiece-style
    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
    texts = [render_with_mask(r, _tok("qwen2.5-instruct")).text for r in corpus]
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=800, special_tokens=specials, show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>")
    tok.chat_template = template
    assert encode._byte_level(tk) is None
    suffixed = Tokenizer(models.BPE(end_of_word_suffix="</w>"))  # byte-level, but "</w>" is spelled in its tokens
    suffixed.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert encode._byte_level(suffixed) is None
    r = render_with_mask(corpus[0], tok)
    assert len(r.trained_spans) > 2 and tok.decode([i for i, keep in zip(r.input_ids, r.loss_mask) if keep]).replace(" ", "") == \
        "".join(_trained(r)).replace(" ", "")


def _ids_of(tok, text: str) -> tuple:
    be = tok.backend_tokenizer
    return be.encode(text, add_special_tokens=False).ids, encode._byte_level(be), text


# ---------------------------------------------------------------------------------------------------------
# Refusing wrong masks


def test_template_that_renders_history_differently_is_refused():
    # Shows assistant text in history as "[old] ..." but generates it plain: no exact mask exists.
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}[old] "
                "{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                "{% endif %}")
    rec = validate_record({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]})
    for exhaustive in (True, False):
        with pytest.raises(RenderError) as e:
            render_with_mask(rec, byte_level_tokenizer(template), exhaustive=exhaustive)
        assert e.value.reason == "mask_mismatch" and "message 1" in str(e.value)


def test_template_that_drops_assistant_content_is_refused():
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role != 'assistant' %}{{ m.content }}"
                "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(RenderError) as e:
        render_with_mask(_case("plain_chat"), byte_level_tokenizer(template))
    assert e.value.reason == "mask_mismatch" and "the template drops the text of such a message" in str(e.value)


def test_nothing_trained_is_an_error_never_an_all_zero_mask():
    rec = _case("plain_chat")
    for m in rec["messages"]:
        m["loss"] = False
    with pytest.raises(RenderError) as e:
        render_with_mask(rec, _tok("qwen2.5-instruct"))
    assert e.value.reason == "nothing_trained"


def test_loss_true_on_a_user_message_is_refused():
    rec = _case("plain_chat")
    rec["messages"][1]["loss"] = True
    with pytest.raises(RenderError, match="only assistant messages can be trained"):
        render_with_mask(rec, _tok("qwen2.5-instruct"))


def test_decline_names_template_and_message_index():
    with pytest.raises(RenderError) as e:
        render_with_mask(_case("content_and_call"), _tok("llama-3.1-instruct"))
    assert e.value.reason == "template_cannot_express"
    assert "llama-3.1-instruct: message 2" in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Template quirks


def test_arguments_form_is_detected_by_rendering():
    def profile(stem):
        tok = _tok(stem)
        return profile_template(tok.chat_template, tuple(sorted(special_kwargs(tok).items())))

    assert profile("deepseek-v3").args_as_string and profile("deepseek-v3").content_none
    assert not profile("qwen2.5-instruct").args_as_string  # tojson of a string would double-encode
    r = render_with_mask(_case("parallel_calls"), _tok("deepseek-v3"))
    assert '```json\n{"city": "Paris"}\n```' in r.text


def test_mistral_call_ids_are_nine_alphanumerics_and_results_match():
    r = render_with_mask(_case("parallel_calls"), _tok("mistral-7b-instruct-v0.3"))
    call_ids = [c["id"] for c in json.loads(r.text.split("[TOOL_CALLS] ")[1].split(" </s>")[0])]
    assert all(len(i) == 9 and i.isalnum() for i in call_ids) and len(set(call_ids)) == 2
    result_ids = [json.loads(part.split(" [/TOOL_RESULTS]")[0])["call_id"] for part in r.text.split("[TOOL_RESULTS] ")[1:]]
    assert result_ids == call_ids


def test_llama31_parallel_calls_become_one_call_per_turn_with_results_as_served():
    r = render_with_mask(_case("parallel_calls"), _tok("llama-3.1-instruct"))
    results = r.text.split("<|start_header_id|>ipython<|end_header_id|>\n\n")[1:]
    # Llama 3.1's template JSON-quotes a string result (tojson): what vLLM and transformers write when the model
    # is served, so what it is trained on (the exported template could not parse them back).
    assert [x.split("<|eot_id|>")[0] for x in results] == ['"{\\"temp_c\\": 26}"', '"{\\"temp_c\\": 18}"']
    assert r.text.index('"Beijing"') < r.text.index('\\"temp_c\\": 26') < r.text.index('"Paris"')


def test_qwen_tool_results_sit_in_a_user_turn():
    r = render_with_mask(_case("parallel_calls"), _tok("qwen2.5-instruct"))
    assert ('<|im_start|>user\n<tool_response>\n{"temp_c": 26}\n</tool_response>\n<tool_response>\n{"temp_c": 18}\n'
            '</tool_response><|im_end|>') in r.text


def test_qwen3_trains_history_turns_as_shown_and_the_last_with_its_think_block():
    r = render_with_mask(_case("two_rounds"), _tok("qwen3"))
    assert _trained(r)[1].startswith("<tool_call>") and _trained(r)[2].startswith("<think>\n\n</think>\n\n")


def test_glm4_calls_via_metadata_and_observation():
    r = render_with_mask(_case("content_and_call"), _tok("glm-4-9b-chat"))
    assert '<|assistant|>\nLet me check.<|assistant|>get_weather\n{"city": "Beijing"}<|observation|>\n{"temp_c": 26}' in r.text
    assert "## get_weather" in r.text  # tools rendered from the system message
    assert r.text.endswith("It is 26 °C in Beijing.<|user|>")  # the last turn ends with the token GLM stops on


def test_templates_that_ignore_tool_calls_get_the_models_own_syntax():
    granite = render_with_mask(_case("single_call"), _tok("granite-3.3-instruct"))
    assert '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Beijing"}}]<|end_of_text|>' in granite.text
    phi = render_with_mask(_case("single_call"), _tok("phi-4-mini-instruct"))
    assert '<|tool|>[{"type": "function"' in phi.text  # tools as a JSON string on the system turn
    assert '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Beijing"}}]<|/tool_call|><|end|>' in phi.text


def test_llama2_react_tool_results_become_user_turns():
    r = render_with_mask(_case("parallel_calls"), _tok("llama-2-chat"), "react")
    assert '[INST] Observation: {"temp_c": 26} [/INST]' in r.text
    assert r.text.count("[INST]") == 3  # the question, then one observation per call: strict alternation holds
    assert "Action: the tool to use, one of [get_weather]" in r.text


def test_tool_prompt_lists_tools_as_markdown():
    rec, template = apply_prompt_format(_case("single_call"), "tool-prompt")
    assert template is None and not rec["tools"]
    system = rec["messages"][0]["content"]
    assert system.startswith("You are a helpful assistant.\n\nYou can call the following tools.")
    assert "\n\n### get_weather\n\nCurrent weather in a city.\n\nParameters:\n- `city` (string, required): City name.\n\n" in system
    assert '```json\n{"name": "<tool name>", "parameters": {"<parameter>": <value>}}\n```' in system


def test_chatglm3_format_matches_chatglm3_tool_layout():
    r = render_with_mask(_case("single_call"), _tok("chatglm3-6b"), "chatglm3")
    assert r.text.startswith('[gMASK]sop<|system|>\n You are a helpful assistant.\n[\n    {\n        "type": "function"')
    assert ('<|user|>\n What\'s the weather in Beijing?<|assistant|>get_weather\n ```python\ntool_call(city="Beijing")'
            '\n```<|observation|>\n {"temp_c": 26}<|assistant|>\n It is 26 °C in Beijing.<|user|>') in r.text


def test_unknown_prompt_format_is_a_clear_error():
    from trajtune.data_builders.errors import TrajtuneError

    with pytest.raises(TrajtuneError, match="choose auto, none or one of tool-prompt, react, chatglm3"):
        render_with_mask(_case("single_call"), _tok("llama-2-chat"), "nope")


def test_byte_level_tokenizer_knows_glm_role_and_sentencepiece_tokens():
    glm = _tok("chatglm3-6b")
    assert len(glm("<|observation|>", add_special_tokens=False)["input_ids"]) == 1
    mistral = _tok("mistral-7b-instruct-v0.3")
    assert (mistral.bos_token, mistral.eos_token) == ("<s>", "</s>")
    assert _tok("phi-4-mini-instruct").eos_token == "<|endoftext|>"


def test_generation_markers_cover_our_spans_plus_the_newlines_trl_trains():
    # TRL's training template marks from after "<|im_start|>assistant" through "<|im_end|>\n": it trains the
    # header's newline (part of the generation prompt) and the newline after <|im_end|> (never generated).
    # Our spans are exactly one character inside on each side.
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = _tok("trl-qwen2_5_training")
    for case in ("single_call", "parallel_calls", "content_and_call", "two_rounds"):
        rec = _case(case)
        r = render_with_mask(rec, tok)
        msgs = [{k: v for k, v in m.items() if k != "loss"} for m in rec["messages"]]
        (text,), (marked,) = render_jinja_template([msgs], tools=rec["tools"], chat_template=tok.chat_template,
                                                   return_assistant_tokens_mask=True)
        assert text == r.text
        assert [(s + 1, e - 1) for s, e in marked] == r.trained_spans
        assert all(text[s] == "\n" and text[e - 1] == "\n" for s, e in marked)


def test_fixture_openai_records_render_on_every_tool_template():
    path = SHARED / "fixtures" / "datasets" / "openai_chat_tools.jsonl"
    records = [validate_record(json.loads(line)) for line in path.read_text().splitlines()[:2]]
    for stem in ("qwen2.5-instruct", "qwen3", "llama-3.1-instruct", "mistral-7b-instruct-v0.3", "glm-4-9b-chat",
                 "granite-3.3-instruct", "phi-4-mini-instruct", "hermes-2-pro-tool_use", "smollm3-3b"):
        for rec in records:
            r = render_with_mask(rec, _tok(stem))
            trained, pos = "".join(_trained(r)), 0
            for m in rec["messages"]:  # every call is trained, in order (one-call-per-turn templates split them)
                for call in m.get("tool_calls") or []:
                    pos = trained.index(call["function"]["name"], pos)


def test_one_call_per_turn_places_each_result_after_its_own_call():
    rec = _case("parallel_calls")
    msgs = rec["messages"]
    msgs[3], msgs[4] = msgs[4], msgs[3]  # results arrive in the other order
    r = render_with_mask(rec, _tok("llama-3.1-instruct"))
    order = [r.text.index(x) for x in ('"Beijing"', 'temp_c\\": 26', '"Paris"', 'temp_c\\": 18')]
    assert order == sorted(order)
    assert r.text.count("ipython<|end_header_id|>") == 2  # no result lost


def _chat(*assistant_contents: str, **last_extra) -> dict:
    messages = []
    for i, content in enumerate(assistant_contents):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": content}]
    messages[-1].update(last_extra)
    return validate_record({"id": "chat", "messages": messages})


@pytest.mark.parametrize("exhaustive", [False, True])
def test_another_models_stop_string_in_content_is_plain_text(exhaustive):
    # `</s>` ends a Llama-2 turn but is ordinary text for Qwen: the span must run on to Qwen's own <|im_end|>.
    r = render_with_mask(_chat("Done: <s>old</s>"), _tok("qwen2.5-instruct"), exhaustive=exhaustive)
    assert _trained(r) == ["Done: <s>old</s><|im_end|>"]


@pytest.mark.parametrize("exhaustive", [False, True])
def test_content_holding_the_templates_own_end_of_turn_is_declined(exhaustive):
    with pytest.raises(RenderError, match="contains the end-of-turn token '<|im_end|>'"):
        render_with_mask(_chat("cut <|im_end|> here"), _tok("qwen2.5-instruct"), exhaustive=exhaustive)


@pytest.mark.parametrize("exhaustive", [False, True])
def test_qwen3_history_turn_with_reasoning_is_declined_not_trained_without_it(exhaustive):
    # Qwen3 strips reasoning from history turns; training "Hello!" alone would teach the model to skip its thought.
    record = _chat("<think>\nGreet back.\n</think>\n\nHello!", "<think>\nOk.\n</think>\n\nBye!")
    with pytest.raises(RenderError) as e:
        render_with_mask(record, _tok("qwen3"), exhaustive=exhaustive)
    assert e.value.reason == "mask_mismatch" and "Greet back." in str(e.value)
    # The last turn keeps its reasoning, so a single turn with a thought trains it.
    r = render_with_mask(_chat("<think>\nOk.\n</think>\n\nBye!"), _tok("qwen3"), exhaustive=exhaustive)
    assert _trained(r) == ["<think>\nOk.\n</think>\n\nBye!<|im_end|>"]


def test_reasoning_content_reaches_the_template_and_is_trained():
    r = render_with_mask(_chat("4", reasoning_content="add two and two"), _tok("qwen3"))
    assert _trained(r) == ["<think>\nadd two and two\n</think>\n\n4<|im_end|>"]
    # A template with no place for reasoning gets it inline, never dropped (unless --reasoning drop).
    r = render_with_mask(_chat("4", reasoning_content="add two and two"), _tok("qwen2.5-instruct"))
    assert _trained(r) == ["<think>\nadd two and two\n</think>\n\n4<|im_end|>"]
