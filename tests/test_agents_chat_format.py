"""The engine prompts a model exactly as training rendered it, and reads back exactly what training taught it to write.

On every fixture template (with a prompt format where the template has no tools): for each assistant turn of a
multi-turn record, `ChatFormat.prompt(history)` is the text `render_with_mask` puts before that turn's trained
span, and `parse` of the trained span (cut at its stop) gives back the turn's content and calls.
"""

from __future__ import annotations

import pytest
from conftest import TEMPLATES

from trajtune.data_builders.agents import PARSE_ERROR
from trajtune.data_builders.agents.chat_format import ChatFormat
from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.render import render_with_mask
from trajtune.data_builders.tokenizer import byte_level_tokenizer

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def _call(i: int, city: str) -> dict:
    return {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


def record(content_with_call: bool) -> dict:
    return {"tools": TOOLS, "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [_call(0, "Paris")]},
        {"role": "tool", "tool_call_id": "call_0", "name": "get_weather", "content": '{"temp_c": 21}'},
        {"role": "assistant", "content": "It is 21 C in Paris."},
        {"role": "user", "content": "And Tokyo?"},
        {"role": "assistant", "content": "Let me check." if content_with_call else None,
         "tool_calls": [_call(1, "Tokyo")]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temp_c": 25}'},
        {"role": "assistant", "content": "25 C in Tokyo."}]}


# (template, prompt format, expected syntax): every fixture template, each with what it needs.
CASES = [(p.name, None) for p in sorted(TEMPLATES.glob("*.jinja"))
         if p.name not in ("chatglm3-6b.jinja", "llama-2-chat.jinja", "deepseek-v3.jinja")]
CASES += [(name, fmt) for name in ("llama-2-chat.jinja", "qwen2.5-instruct.jinja")
          for fmt in ("tool-prompt", "react", "chatglm3")] + [("chatglm3-6b.jinja", "chatglm3")]
SYNTAX = {"qwen2.5-instruct.jinja": "hermes", "llama-3.1-instruct.jinja": "llama3", "mistral-7b-instruct-v0.3.jinja":
          "mistral", "glm-4-9b-chat.jinja": "glm4", "phi-4-mini-instruct.jinja": "phi4", "granite-3.3-instruct.jinja":
          "granite", "tool-prompt": "json_block", "react": "react", "chatglm3": "chatglm3"}


def tokenizer_for(name: str, fmt: str | None = None):
    # A prompt format's role tokens must be tokens of the tokenizer (the renderer refuses a stop made of bytes).
    from trajtune.data_builders.render.prompt_formats import format_template
    from trajtune.data_builders.tokenizer import special_tokens_of

    extra = special_tokens_of(format_template(fmt)) if fmt == "chatglm3" else []
    tok = byte_level_tokenizer((TEMPLATES / name).read_text(), extra)
    tok.name_or_path = name
    return tok


@pytest.mark.parametrize("name,fmt", CASES)
def test_prompt_is_the_training_prefix_and_parse_reads_the_trained_text(name: str, fmt: str | None):
    tok = tokenizer_for(name, fmt)
    chat = ChatFormat.of(tok, fmt)
    if fmt in SYNTAX or name in SYNTAX:
        assert chat.syntax == SYNTAX.get(fmt or name)
    rec = None
    # Llama-3.1, Mistral, Hermes-2-Pro drop content beside a call; Mistral lists tools before the last user turn
    # (so only a one-question record has an exact mask).
    for candidate in (record(True), record(False), {**record(False), "messages": record(False)["messages"][:5]}):
        try:
            rendered = render_with_mask(candidate, tok, fmt)
            rec = candidate
            break
        except TrajtuneError:
            continue
    assert rec is not None, f"{name} renders none of the records"
    turns = [i for i, m in enumerate(rec["messages"]) if m["role"] == "assistant"]
    assert len(rendered.trained_spans) == len(turns)
    for i, (start, end) in zip(turns, rendered.trained_spans):
        prompt, before = chat.prompt(rec["messages"][:i], TOOLS), rendered.text[:start]
        head, sep, rest = before.rpartition("</tool_response>\n<|im_end|>")
        if name == "hermes-2-pro-tool_use.jinja" and sep and "<|im_end|>" not in rest:  # the last result's closing
            before = head + "</tool_response><|im_end|>" + rest  # newline is written only when a message follows
        assert prompt == before, f"turn {i}"
        text, stopped = chat.cut(rendered.text[start:end])
        assert stopped or fmt == "chatglm3" or "glm" in name  # GLM ends a turn with the next role token
        got, want = chat.parse(text, TOOLS), rec["messages"][i]
        assert PARSE_ERROR not in got, got
        assert [c["function"] for c in got.get("tool_calls") or []] == [c["function"] for c in
                                                                        want.get("tool_calls") or []], f"turn {i}"
        assert (got.get("content") or None) == (want.get("content") or None), f"turn {i}"


def test_unreadable_call_text_is_kept_whole_with_the_error():
    chat = ChatFormat.of(tokenizer_for("qwen2.5-instruct.jinja"))
    text = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"'
    got = chat.parse(text, TOOLS)
    assert got["content"] == text and got[PARSE_ERROR]["type"] in ("truncated_json", "unterminated_block")
    unknown = chat.parse('<tool_call>\n{"name": "get_wether", "arguments": {"city": "Paris"}}\n</tool_call>', TOOLS)
    assert unknown[PARSE_ERROR]["type"] == "unknown_tool" and "get_weather" in unknown[PARSE_ERROR]["message"]
    assert chat.parse("Plain answer.", TOOLS) == {"role": "assistant", "content": "Plain answer."}


def test_template_without_tools_needs_a_prompt_format():
    chat = ChatFormat.of(tokenizer_for("llama-2-chat.jinja"))
    assert chat.syntax is None
    with pytest.raises(TrajtuneError, match="prompt_format=tool-prompt, react or chatglm3"):
        chat.prompt([{"role": "user", "content": "hi"}], TOOLS)
    assert chat.prompt([{"role": "user", "content": "hi"}]).endswith("[/INST]")  # no tools: plain chat works
