"""How a chat template wants tools, tool calls and tool results, measured by rendering probe conversations.

Templates disagree: arguments as a dict or a JSON string, a call-only message with content None or "",
parallel calls or one call per turn, tools as the `tools=` keyword or on the system message (as a list or
a JSON string), tool results JSON-quoted or not, strict user/assistant alternation, or no `tool_calls` at
all. Rather than a table per model, `profile_template(template)` renders a few tiny probe conversations
once and reads the answers off the output; `shape.py` then shapes each record the way the template wants.
`render_text` is the single rendering entry point, compiled exactly as `apply_chat_template` compiles.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

# Which call syntax a template that ignores `tool_calls` teaches its model, by a marker in its text (first hit).
_TEXT_SYNTAX_MARKERS = (("metadata", "glm4"), ("<|/tool|>", "phi4"), ("<|tool_call|>", "granite"),
                        ("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|eot_id|>", "llama3"))


@lru_cache(maxsize=64)
def compiled_template(template: str):
    """The template compiled exactly as `apply_chat_template` compiles it (same filters and globals)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(template)


def render_text(template: str, messages: list[dict], tools: list | None, add_generation_prompt: bool,
                special: dict[str, str]) -> str:
    """`apply_chat_template(..., tokenize=False)` without its per-call copying (the build renders millions).

    `special` holds bos_token/eos_token... as apply_chat_template passes them; tests pin the equality."""
    return compiled_template(template).render(messages=messages, tools=tools, documents=None,
                                      add_generation_prompt=add_generation_prompt, **special)


# ---------------------------------------------------------------------------------------------------------
# Template profile: how this template wants tools, calls and results (measured once, by rendering probes)

PROBE_TOOLS = [{"type": "function", "function": {
    "name": "probe_fn", "description": "Probe tool.",
    "parameters": {"type": "object", "properties": {"probe_key": {"type": "string", "description": "A key."}},
                   "required": ["probe_key"]}}}]


def probe_call(i: int = 1, name: str = "probe_fn") -> dict:
    return {"id": f"probecall{i}", "type": "function", "function": {"name": name, "arguments": {"probe_key": f"probe_v{i}"}}}


@dataclass(frozen=True)
class TemplateProfile:
    tools_where: str  # "kwarg" | "system_list" | "system_string" | "none"
    native_calls: bool  # the template renders `tool_calls` itself
    content_none: bool  # a call-only message needs content None (not "")
    args_as_string: bool  # the template wants arguments as a JSON string
    one_call_per_turn: bool  # parallel calls become call/result, call/result turns
    content_with_calls: bool  # content next to calls survives rendering
    text_syntax: str | None  # for templates that ignore tool_calls: the model's call syntax
    tool_role: str  # role for tool results: "tool", "observation" (GLM-4) or "user"
    quote_results: bool  # the template JSON-quotes string results (Llama-3.1): pass JSON results parsed
    ids_rendered: bool  # call ids are visible in the text (Mistral: 9-char ids)
    strict_alternation: bool  # consecutive user (or assistant) messages are an error (Llama-2)
    needs_tool_list: bool  # the template loops over `tools` unguarded (Hermes-2-Pro): pass [] rather than None
    system_fold: bool = False  # the template rejects or drops a system message (Gemma 2, Mistral v0.1-v0.3, Phi-3-
    # medium): its text opens the first user turn instead, "SYSTEM\n\nUSER", as Gemma 3's and Mistral's templates do


def try_render(template: str, special: dict, messages: list[dict], tools=None) -> str | None:
    try:
        return render_text(template, messages, tools, False, special)
    except Exception:  # a probe that the template rejects is an answer, not a failure
        return None


def with_call(msg_calls: list[dict], content, args_as_string: bool) -> dict:
    calls = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])
                                if args_as_string else c["function"]["arguments"]}} for c in msg_calls]
    return {"role": "assistant", "content": content, "tool_calls": calls}


@lru_cache(maxsize=64)
def profile_template(template: str, special_items: tuple = ()) -> TemplateProfile:
    """Measure how `template` shows tools, calls and results by rendering small probe conversations."""
    special = dict(special_items)
    user = {"role": "user", "content": "probe_user"}
    sys_user = [{"role": "system", "content": "probe_sys"}, user]
    needs_list = any(try_render(template, special, m) is None and try_render(template, special, m, []) is not None
                     for m in (sys_user, [user]))
    no_tools = [] if needs_list else None
    # A system message the template rejects (raise_exception) or drops (Mistral v0.3 keeps it only when the
    # conversation ends on a user turn, so probe with an answer last) is folded into the first user turn.
    answer = {"role": "assistant", "content": "probe_v1"}
    kept = try_render(template, special, [*sys_user, answer], no_tools)
    folded = try_render(template, special, [{"role": "user", "content": "probe_sys\n\nprobe_user"}, answer], no_tools)
    system_fold = (kept is None or "probe_sys" not in kept) and folded is not None and "probe_sys" in folded
    if system_fold:
        sys_user = [user]

    tools_where = "none"
    out = try_render(template, special, sys_user, PROBE_TOOLS)
    if out and "probe_fn" in out:
        tools_where = "kwarg"
    else:
        for where, value in (("system_list", PROBE_TOOLS), ("system_string", json.dumps(PROBE_TOOLS)))[
                :0 if system_fold else 2]:
            out = try_render(template, special, [{**sys_user[0], "tools": value}, sys_user[1]])
            if out and "probe_fn" in out:
                tools_where = where
                break
    tools = PROBE_TOOLS if tools_where == "kwarg" else no_tools
    base = sys_user if tools_where in ("kwarg", "none") else [{**sys_user[0], "tools": (
        PROBE_TOOLS if tools_where == "system_list" else json.dumps(PROBE_TOOLS))}, sys_user[1]]

    def shows_json_args(text: str | None, i: int = 1) -> bool:
        # The arguments must appear as JSON, not as a Python repr nor double-encoded.
        return text is not None and re.search(rf'(?<!\\)"probe_key": ?"probe_v{i}"', text) is not None

    native = None
    for content_none, as_string in ((False, False), (True, False), (False, True), (True, True)):
        out = try_render(template, special, base + [with_call([probe_call()], None if content_none else "", as_string)],
                   tools)
        if shows_json_args(out) and "probe_fn" in out.split("probe_user", 1)[-1]:
            native = (content_none, as_string)
            break
    text_syntax = None
    if native is None:
        text_syntax = next((s for marker, s in _TEXT_SYNTAX_MARKERS if marker in template), None)
        content_none, as_string = False, False
    else:
        content_none, as_string = native

    one_call, with_content, ids_rendered = True, True, False
    if native is not None:
        two = try_render(template, special, base + [with_call([probe_call(1), probe_call(2, "probe_gn")], None
                                                          if content_none else "", as_string)], tools)
        one_call = not (shows_json_args(two, 1) and shows_json_args(two, 2) and "probe_gn" in two)
        said = try_render(template, special, base + [with_call([probe_call()], "probe_said", as_string)], tools)
        with_content = said is not None and "probe_said" in said and shows_json_args(said)
        ids_rendered = "probecall1" in (out or "")
    else:
        from ..tool_calls import ONE_CALL_PER_TURN

        one_call = text_syntax in ONE_CALL_PER_TURN

    tool_role = "observation" if text_syntax == "glm4" else "tool"
    call_msg = (with_call([probe_call()], None if content_none else "", as_string) if native is not None
                else {"role": "assistant", "content": "probe_call_text"})
    result = {"role": tool_role, "tool_call_id": "probecall1", "name": "probe_fn", "content": '{"probe_out": 1}'}
    out = try_render(template, special, base + [call_msg, result], tools)
    if out is None or "probe_out" not in out:
        tool_role = "user"
    quote_results = out is not None and '\\"probe_out\\"' in out
    strict = try_render(template, special, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                  no_tools) is None
    return TemplateProfile(tools_where, native is not None, content_none, as_string, one_call, with_content,
                           text_syntax, tool_role, quote_results, ids_rendered, strict, needs_list, system_fold)



def special_kwargs(tokenizer) -> dict[str, str]:
    # A missing bos/eos renders as "" (apply_chat_template leaves it undefined, which renders the same).
    return {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}


def template_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or "the chat template"
