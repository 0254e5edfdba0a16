"""One rendering recipe from build to serve (issue 12): the build writes it into manifest.json, `train` copies it
into the export's trajtune.json, and the exported chat template renders tools and calls as training did, so a
plain `apply_chat_template` on the export gives the text the model was trained on, a prompt format included.

One real pipeline through the CLI: convert the public fixtures, build with Llama-2's template (no tools) and
`--prompt-format tool-prompt`, make a tiny model, train 1 step, export; then compare texts record by record.
"""

from __future__ import annotations

import copy
import json

import pytest
from conftest import ROOT, TEMPLATES, read_records
from transformers import AutoTokenizer

from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.render import render_with_mask
from trajtune.data_builders.render.options import RenderOptions
from trajtune.data_builders.render.recipe import (
    RenderRecipe,
    build_recipe,
    client_messages,
    export_chat_template,
    load_recipe,
)
from trajtune.data_builders.tokenizer import load_tokenizer
from trajtune.data_builders.trajectory import validate_record
from trajtune.launcher.cli import main

LLAMA2 = TEMPLATES / "llama-2-chat.jinja"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, converted_fixtures):
    d = tmp_path_factory.mktemp("recipe")
    assert main(["build", "--data", str(converted_fixtures), "--template", str(LLAMA2), "--prompt-format", "tool-prompt",
                 "--seq-len", "8192", "--out", str(d / "built"), "--cache-dir", str(d / "cache")]) == 0
    assert main(["tiny-model", "--tokenizer", str(d / "built" / "tokenizer"), "--out", str(d / "tiny"), "--hidden", "16",
                 "--layers", "1", "--heads", "2", "--max-positions", "8192"]) == 0
    assert main(["train", f"model={d / 'tiny'}", f"data={d / 'built'}", f"output_dir={d / 'run'}", "engine=torch",
                 "bf16=false", "micro_batch_size=1", "global_batch_size=1", "max_steps=1", "save_steps=0",
                 "report_to=none", "attn=sdpa"]) == 0
    return {"dir": d, "records": read_records(converted_fixtures), "final": d / "run" / "final"}


def test_manifest_and_export_carry_the_recipe(pipeline):
    manifest = json.loads((pipeline["dir"] / "built" / "manifest.json").read_text())
    recipe = manifest["recipe"]
    assert recipe["prompt_format"] == "tool-prompt" and recipe["turns"] == "joint" and recipe["version"] == 1
    assert "</s>" in recipe["stop_tokens"] and "strict_alternation" in recipe["folds"]
    info = json.loads((pipeline["final"] / "trajtune.json").read_text())
    assert info["recipe"] == recipe
    assert load_recipe(pipeline["final"]) == RenderRecipe.from_dict(recipe, "manifest") == load_recipe(pipeline["dir"] / "built")


def test_exported_chat_template_renders_what_training_rendered(pipeline):
    exported = AutoTokenizer.from_pretrained(pipeline["final"])
    built = load_tokenizer(None, LLAMA2)
    checked = 0
    for record in pipeline["records"]:
        try:
            want = render_with_mask(copy.deepcopy(record), built, "tool-prompt").text
        except TrajtuneError:
            continue
        got = exported.apply_chat_template(client_messages(record), tools=record.get("tools") or None, tokenize=False)
        assert got == want, record["id"]
        checked += 1
    assert checked >= 20 and any(r.get("tools") for r in pipeline["records"])


@pytest.mark.parametrize("template", ["qwen2.5-instruct.jinja", "mistral-7b-instruct-v0.3.jinja", "llama-2-chat.jinja"])
@pytest.mark.parametrize("fmt", ["tool-prompt", "react"])
def test_combined_template_equals_the_build_on_parallel_calls_and_rounds(template, fmt):
    # Parallel calls answered out of order (react splits them into call/result pairs; the reasoning, written
    # inline, stays with the first), a call-only turn (content None, which apply_chat_template drops), a second
    # round, a system prompt with unicode.
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "description": "City"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
                                                                             "properties": {"tz": {"type": "string"}}}}}]
    call = lambda i, name, args: {"id": i, "type": "function", "function": {"name": name, "arguments": args}}  # noqa: E731
    record = validate_record({"id": "r", "tools": tools, "messages": [
        {"role": "system", "content": "Be brief, ünïcode."}, {"role": "user", "content": "Beijing and Paris?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Two cities, two calls.",
         "tool_calls": [call("a", "get_weather", {"city": "Beijing"}), call("b", "get_weather", {"city": "Paris"})]},
        {"role": "tool", "tool_call_id": "b", "content": '{"t": 18}'}, {"role": "tool", "tool_call_id": "a", "content": "26"},
        {"role": "assistant", "content": "26 and 18."}, {"role": "user", "content": "Time in Tokyo?"},
        {"role": "assistant", "content": None, "tool_calls": [call("c", "get_time", {"tz": "Asia/Tokyo"})]},
        {"role": "tool", "tool_call_id": "c", "content": "10:00"}, {"role": "assistant", "content": "10:00."}]})
    tok = load_tokenizer(None, TEMPLATES / template)
    want = render_with_mask(copy.deepcopy(record), tok, fmt).text
    assert want.count("Two cities, two calls.") == 1
    exported = load_tokenizer(None, TEMPLATES / template)
    exported.chat_template = export_chat_template(tok, build_recipe(tok, fmt, "joint"))
    assert exported.apply_chat_template(client_messages(record), tools=tools, tokenize=False) == want
    # At inference the prompt is the conversation so far plus the generation prompt: the same text the
    # template gives the build's records, up to the turn the model writes next.
    prompt = exported.apply_chat_template(client_messages(record)[:-1], tools=tools, tokenize=False,
                                          add_generation_prompt=True)
    assert want.startswith(prompt) and "10:00." not in prompt


def test_a_model_directory_without_a_recipe(tmp_path):
    assert load_recipe(tmp_path) is None  # not trained by trajtune: its own chat template, as is
    (tmp_path / "trajtune.json").write_text(json.dumps({"steps": 3}))
    with pytest.raises(TrajtuneError, match="no rendering recipe"):
        load_recipe(tmp_path)
    (tmp_path / "trajtune.json").write_text(json.dumps({"recipe": {"version": 99}}))
    with pytest.raises(TrajtuneError, match="version 1"):
        load_recipe(tmp_path)


@pytest.mark.parametrize("path", [TEMPLATES / "mistral-7b-instruct-v0.3.jinja",
                                  ROOT / "tests" / "templates" / "gemma-2-2b-it.jinja"])
def test_a_system_fold_is_written_into_the_exported_template(path):
    # Gemma 2 rejects a system message, Mistral v0.3 drops it unless the conversation ends on a user turn: the
    # build folds it into the first user turn, and so must the exported template, or the served model never
    # sees the system prompt it was trained with.
    record = validate_record({"id": "s", "messages": [
        {"role": "system", "content": "SYSX1 be careful."}, {"role": "user", "content": "USRX1 hi"},
        {"role": "assistant", "content": "ASTX1 hello"}, {"role": "user", "content": "USRX2 joke?"},
        {"role": "assistant", "content": "ASTX2 no."}]})
    tok = load_tokenizer(None, path)
    want = render_with_mask(copy.deepcopy(record), tok).text
    recipe = build_recipe(tok, None, "joint")
    assert "system_into_first_user" in recipe.folds
    exported = load_tokenizer(None, path)
    exported.chat_template = export_chat_template(tok, recipe)
    assert exported.apply_chat_template(client_messages(record), tokenize=False) == want
    assert "SYSX1" in want


@pytest.mark.parametrize("path", [TEMPLATES / "qwen2.5-instruct.jinja", ROOT / "tests" / "templates" / "gemma-2-2b-it.jinja"])
def test_reasoning_written_inline_is_written_by_the_exported_template(path):
    # Qwen2.5 and Gemma 2 have no place for reasoning: --reasoning auto writes it inline, as <think>...</think>
    # before the answer. The recipe says so, and the exported template writes a client's reasoning_content the
    # same way, so history turns read at inference as they did in training.
    record = validate_record({"id": "r", "messages": [
        {"role": "system", "content": "SYSX1 think aloud."}, {"role": "user", "content": "USRX1 2+2?"},
        {"role": "assistant", "content": "ASTX1 4.", "reasoning_content": "RSNX1 two and two."},
        {"role": "user", "content": "USRX2 3+3?"},
        {"role": "assistant", "content": "ASTX2 6.", "reasoning_content": "RSNX2 three and three."}]})
    tok = load_tokenizer(None, path)
    r = render_with_mask(copy.deepcopy(record), tok)
    assert "<think>\nRSNX1 two and two.\n</think>\n\nASTX1 4." in r.text
    assert "RSNX2" in "".join(r.text[s:e] for s, e in r.trained_spans)
    recipe = build_recipe(tok, None, "joint")
    assert recipe.reasoning == "inline"
    assert build_recipe(tok, None, "joint", RenderOptions(reasoning="drop")).reasoning == "drop"
    exported = load_tokenizer(None, path)
    exported.chat_template = export_chat_template(tok, recipe)
    assert exported.apply_chat_template(client_messages(record), tokenize=False) == r.text
    # The template alone drops the reasoning.
    assert "RSNX1" not in tok.apply_chat_template(client_messages(record)[1:], tokenize=False)


def test_a_template_with_its_own_place_for_reasoning_keeps_it():
    # Qwen3 reads reasoning_content itself: nothing inline, nothing in the recipe.
    tok = load_tokenizer(None, TEMPLATES / "qwen3.jinja")
    recipe = build_recipe(tok, None, "joint")
    assert recipe.reasoning is None
    record = validate_record({"id": "r", "messages": [{"role": "user", "content": "USRX1 2+2?"},
                                                      {"role": "assistant", "content": "4.", "reasoning_content": "RSNX1"}]})
    exported = load_tokenizer(None, TEMPLATES / "qwen3.jinja")
    exported.chat_template = export_chat_template(tok, recipe)
    assert exported.apply_chat_template(client_messages(record), tokenize=False) == render_with_mask(record, tok).text


def test_a_template_that_renders_client_messages_as_built_ships_as_it_is():
    tok = load_tokenizer(None, TEMPLATES / "qwen2.5-instruct.jinja")
    recipe = build_recipe(tok, None, "joint", reasoning_seen=False)
    assert recipe.reasoning is None and export_chat_template(tok, recipe) == tok.chat_template
    # Data with reasoning: written inline, so the export writes it inline too.
    assert export_chat_template(tok, build_recipe(tok, None, "joint")) != tok.chat_template


def _as_the_model_wrote_them(record: dict, tok) -> dict:
    """The record with the call ids the model itself writes (Mistral's 9 alphanumerics, Kimi's functions.NAME:K):
    what a client sends back. The build maps other ids to these; a Jinja template cannot (sha256)."""
    from trajtune.data_builders.render.profile import kimi_call_id, profile_template, special_kwargs
    from trajtune.data_builders.tool_calls import mistral_call_id

    profile = profile_template(tok.chat_template, tuple(sorted(special_kwargs(tok).items())))
    calls = [c for m in record["messages"] for c in m.get("tool_calls") or []]
    if "[TOOL_CALLS]" in tok.chat_template:
        ids = {c["id"]: mistral_call_id(c["id"]) for c in calls}
    elif profile.ids_name_calls:
        ids = {c["id"]: kimi_call_id(c["function"]["name"], k) for k, c in enumerate(calls)}
    else:
        return record
    for m in record["messages"]:
        for c in m.get("tool_calls") or []:
            c["id"] = ids[c["id"]]
        if "tool_call_id" in m:
            m["tool_call_id"] = ids[m["tool_call_id"]]
    return record


def test_every_exported_template_renders_client_messages_as_the_build_did():
    # The whole corpus x the battery shapes: what `apply_chat_template` (or vLLM) gives for the messages a client
    # sends equals the build's text, whatever the profile reshaped (calls one per turn, arguments as JSON text,
    # results as user or observation turns, strict alternation, tools on the system turn or listed in it, calls
    # as text in the template's syntax, content as parts, the system folded), up to a stop token the build
    # appends after a last turn the template leaves open.
    import template_battery as tb

    from trajtune.data_builders.render import RenderError
    from trajtune.data_builders.render.prompt_formats import resolve_prompt_format

    checked, wrong = 0, []
    for path in tb.corpus_paths():
        tok = tb.bare_tokenizer(path)
        fmt = resolve_prompt_format(tok, "auto")
        recipe = build_recipe(tok, fmt, "joint")
        exported = tb.bare_tokenizer(path)
        exported.chat_template = export_chat_template(tok, recipe)
        for shape in tb.SHAPES:
            record = _as_the_model_wrote_them(tb.shape_record(shape), tok)
            try:
                want = render_with_mask(copy.deepcopy(record), tok, fmt).text
            except RenderError:
                continue
            got = exported.apply_chat_template(client_messages(record), tools=record.get("tools") or None,
                                               tokenize=False)
            checked += 1
            if not (got == want or want.startswith(got) and want[len(got):] in recipe.stop_tokens):
                wrong.append((path.stem, shape))
    assert not wrong and checked >= 450


def test_every_exported_template_prompts_as_the_per_turn_samples_were_trained():
    # Per turn, each sample's context is what the model was prompted with: the exported template, given the
    # client's messages before a trained assistant message and add_generation_prompt, writes the same text.
    import template_battery as tb

    from trajtune.data_builders.render import RenderError
    from trajtune.data_builders.render.per_turn import render_turns
    from trajtune.data_builders.render.prompt_formats import resolve_prompt_format

    checked, wrong = 0, []
    for path in tb.corpus_paths():
        tok = tb.bare_tokenizer(path)
        fmt = resolve_prompt_format(tok, "auto")
        exported = tb.bare_tokenizer(path)
        exported.chat_template = export_chat_template(tok, build_recipe(tok, fmt, "per-turn"))
        for shape in tb.SHAPES:
            record = _as_the_model_wrote_them(tb.shape_record(shape), tok)
            try:
                samples = render_turns(copy.deepcopy(record), tok, fmt)
            except RenderError:
                continue
            contexts = {s.text[:s.trained_spans[0][0]] for s in samples}
            messages = client_messages(record)
            for i, m in enumerate(record["messages"]):
                if m["role"] == "assistant" and m.get("loss", True):
                    prompt = exported.apply_chat_template(messages[:i], tools=record.get("tools") or None,
                                                          add_generation_prompt=True, tokenize=False)
                    checked += 1
                    if prompt not in contexts:
                        wrong.append((path.stem, shape, i))
    assert not wrong and checked >= 600


def test_the_chatglm3_format_is_written_into_the_exported_template():
    # chatglm3 replaces the whole template and reads rewritten messages (`metadata` = the called function,
    # `observation` turns, tools on the system turn): the export's prelude rewrites a client's OpenAI-style
    # messages that way: parallel calls answered out of order become call/result pairs, arguments Python
    # literals (a key that is no identifier through **{...}), text before a call its own turn.
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "n-days": {"type": "integer"},
                                         "opts": {"type": "object"}}, "required": ["city"]}}}]
    call = lambda i, args: {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": args}}  # noqa: E731
    record = validate_record({"id": "r", "tools": tools, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Beijing and Paris?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Two cities.", "tool_calls": [
            call("a", {"city": "Beijing", "n-days": 2}), call("b", {"city": 'Pa"ris', "opts": {"x": [True, None, 1.5]}})]},
        {"role": "tool", "tool_call_id": "b", "content": '{"t": 18}'}, {"role": "tool", "tool_call_id": "a", "content": "26"},
        {"role": "assistant", "content": "26 and 18."}]})
    tok = load_tokenizer(None, TEMPLATES / "chatglm3-6b.jinja")
    want = render_with_mask(copy.deepcopy(record), tok, "chatglm3").text
    recipe = build_recipe(tok, "chatglm3", "joint")
    exported = load_tokenizer(None, TEMPLATES / "chatglm3-6b.jinja")
    exported.chat_template = export_chat_template(tok, recipe)
    got = exported.apply_chat_template(client_messages(record), tools=tools, tokenize=False)
    # ChatGLM3 ends a turn with the next role token: the build appends it after the last turn, which the
    # template leaves open.
    assert want.startswith(got) and want[len(got):] in recipe.stop_tokens
    assert 'tool_call(city="Beijing", **{"n-days": 2})' in got and want.count("Two cities.") == 1
    prompt = exported.apply_chat_template(client_messages(record)[:-1], tools=tools, tokenize=False,
                                          add_generation_prompt=True)
    assert want.startswith(prompt) and "26 and 18." not in prompt
    with pytest.raises(Exception, match="arguments as an object"):  # a JSON string cannot become Python literals
        exported.apply_chat_template([*client_messages(record)[:2], {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}],
            tools=tools, tokenize=False)
