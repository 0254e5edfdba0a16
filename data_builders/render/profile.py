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
    tools_where: str  # "kwarg" | "functions" (the `functions` variable, JSON: FireFunction v2) | "functions_message"
    # (a `functions` role message: FireFunction v1) | "system_list" | "system_string" | "none"
    native_calls: bool  # the template renders `tool_calls` itself (in whatever syntax: JSON, <parameter=..>, ...)
    content_none: bool  # a call-only message needs content None (not "")
    args_as_string: bool  # the template wants arguments as a JSON string
    one_call_per_turn: bool  # parallel calls become call/result, call/result turns
    content_with_calls: bool  # content next to calls survives rendering
    text_syntax: str | None  # for templates that ignore tool_calls: the model's call syntax
    tool_role: str  # role for tool results: "tool", "observation" (GLM-4) or "user"
    quote_results: bool  # the template JSON-quotes string results (Llama-3.1's tojson): kept, as served
    ids_rendered: bool  # call ids are visible in the text (Mistral: 9-char ids)
    strict_alternation: bool  # consecutive user (or assistant) messages are an error (Llama-2)
    needs_tool_list: bool  # the template loops over `tools` unguarded (Hermes-2-Pro): pass [] rather than None
    system_fold: bool = False  # the template rejects or drops a system message (Gemma 2, Mistral v0.1-v0.3, Phi-3-
    # medium): its text opens the first user turn instead, "SYSTEM\n\nUSER", as Gemma 3's and Mistral's templates do
    content_parts: frozenset[str] = frozenset()  # roles whose content it reads as parts (Gemma 3: content[0].text)
    fill_tool_fields: bool = False  # it reads tool / parameter descriptions unguarded: missing ones are given as ""
    missing_vars: tuple[str, ...] = ()  # variables it needs that nothing gives (FireFunction v2's `datetime`)
    reasoning_field: str | None = None  # where it reads an assistant's reasoning: reasoning_content, thinking, ...
    ids_name_calls: bool = False  # it writes a call's id, not its name (Kimi K2): ids become functions.NAME:INDEX
    opens_thought: bool = False  # its generation prompt opens a thought (QwQ, R1 distills: `<think>\n`) that
    # history never shows: the reasoning of a turn has a place only in that turn's own per-turn sample
    closes_thought: bool = False  # its generation prompt closes an empty thought (`</think>`: DeepSeek-V3.1 with
    # thinking off): the model is prompted not to reason
    thinking_kwarg: str | None = None  # the template kwarg that makes its generation prompt open a thought instead


def render_shaped(template: str, prof: TemplateProfile, special: dict, messages: list[dict], tools: list | None,
                  add_generation_prompt: bool) -> str:
    """`render_text` of messages shaped for `prof` (shape.py): a template that reads its tool list as the
    `functions` variable (FireFunction v2) gets it there, as the JSON text it concatenates."""
    if prof.tools_where == "functions":
        special = {**special, "functions": json.dumps(tools or [], ensure_ascii=False)}
    return render_text(template, messages, tools, add_generation_prompt, special)


def try_render(template: str, special: dict, messages: list[dict], tools=None,
               add_generation_prompt: bool = False) -> str | None:
    try:
        return render_text(template, messages, tools, add_generation_prompt, special)
    except Exception:  # a probe that the template rejects is an answer, not a failure
        return None


def with_call(msg_calls: list[dict], content, args_as_string: bool) -> dict:
    calls = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)
                                if args_as_string else c["function"]["arguments"]}} for c in msg_calls]
    return {"role": "assistant", "content": content, "tool_calls": calls}


def kimi_call_id(name: str, index: int) -> str:
    """Kimi K2's call id, which its template writes in place of the name: `functions.NAME:INDEX` (INDEX counts the
    calls of the conversation from 0)."""
    return f"functions.{name}:{index}"


def parts(text) -> list[dict]:
    """Content as a list of parts, for roles in `TemplateProfile.content_parts`."""
    return [{"type": "text", "text": text}]


def _needed_vars(template: str, special: dict) -> dict[str, str]:
    """Placeholders for the variables the template reads unguarded and nothing passes (a render raises
    UndefinedError naming them): `functions` (a tool list) and others (FireFunction v2's `datetime`)."""
    from jinja2.exceptions import UndefinedError

    extra: dict[str, str] = {}
    for _ in range(8):
        try:
            render_text(template, [{"role": "user", "content": "probe_user"}], None, True, {**special, **extra})
            break
        except UndefinedError as e:
            m = re.match(r"'(\w+)' is undefined", str(e))
            if m is None or m.group(1) in extra:
                break
            extra[m.group(1)] = "[]" if m.group(1) == "functions" else f"probe_{m.group(1)}"
        except Exception:  # any other rejection is for the probes below to measure
            break
    return extra


def shows_call(text: str | None, i: int = 1, name: str = "probe_fn", json_only: bool = False) -> bool:
    """The render shows call i after the user's turn: its name and argument value. `json_only`: as JSON. Never a
    Python dict repr (`{'probe_key': ...}`) nor double-encoded JSON: those are no syntax a model is taught."""
    after = (text or "").split("probe_user", 1)[-1]
    if text is None or name not in after or re.search(rf"'probe_key': ?'probe_v{i}'|\\\"probe_v{i}", after):
        return False
    return re.search(rf'"probe_key": ?"probe_v{i}"', after) is not None if json_only else f"probe_v{i}" in after


def _text_to_call(text: str | None) -> str | None:
    """What a probe render writes from the probe text `probe_said` to the call's name after it (None if not both)."""
    at = (text or "").find("probe_said")
    to = (text or "").find("probe_fn", at)
    return text[at:to] if text and at >= 0 and to >= 0 else None


@lru_cache(maxsize=64)
def profile_template(template: str, special_items: tuple = ()) -> TemplateProfile:
    """Measure how `template` shows tools, calls and results by rendering small probe conversations."""
    special = dict(special_items)
    needed = _needed_vars(template, special)
    missing = tuple(k for k in needed if k != "functions")
    special = {**special, **needed}  # probe as if given, so the rest is measured
    user = {"role": "user", "content": "probe_user"}
    needs_list = try_render(template, special, [user]) is None and try_render(template, special, [user], []) is not None
    no_tools = [] if needs_list else None

    def renders(msgs: list[dict], *texts: str, tools=no_tools) -> bool:
        out = try_render(template, special, msgs, tools)
        return out is not None and all(t in out for t in texts)

    part_roles = set()
    if not renders([user], "probe_user") and renders([{**user, "content": parts("probe_user")}], "probe_user"):
        part_roles.add("user")
        user = {**user, "content": parts("probe_user")}
    answer = {"role": "assistant", "content": "probe_v1"}
    system = {"role": "system", "content": "probe_sys"}
    if not renders([system, user, answer], "probe_sys") and renders([{**system, "content": parts("probe_sys")}, user,
                                                                      answer], "probe_sys"):
        part_roles.add("system")
        system = {**system, "content": parts("probe_sys")}
    # A system message the template rejects (raise_exception) or drops (Mistral v0.3 keeps it only when the
    # conversation ends on a user turn, so probe with an answer last) is folded into the first user turn.
    folded = {**user, "content": parts("probe_sys\n\nprobe_user") if "user" in part_roles else "probe_sys\n\nprobe_user"}
    system_fold = not renders([system, user, answer], "probe_sys") and renders([folded, answer], "probe_sys")
    sys_user = [user] if system_fold else [system, user]

    tools_where, tools, base = "none", no_tools, sys_user
    functions = {"role": "functions", "content": json.dumps(PROBE_TOOLS)}
    for where, msgs, kw, extra in (
            ("kwarg", sys_user, PROBE_TOOLS, {}),
            ("functions", sys_user, no_tools, {"functions": json.dumps(PROBE_TOOLS)}),
            ("functions_message", [*sys_user[:-1], functions, user], no_tools, {}),
            ("system_list", [{**system, "tools": PROBE_TOOLS}, user], no_tools, {}),
            ("system_string", [{**system, "tools": json.dumps(PROBE_TOOLS)}, user], no_tools, {})):
        if (where.startswith("system") and system_fold) or (where == "functions" and "functions" not in needed) or (
                where == "functions_message" and renders(sys_user)):  # a role only for templates that demand it
            continue
        out = try_render(template, {**special, **extra}, msgs, kw)
        if out and "probe_fn" in out:
            tools_where, tools, base = where, kw, msgs
            special = {**special, **extra}
            break
    if tools_where != "functions" and "functions" in needed:  # reads `functions`, but not as a tool list
        missing += ("functions",)
    fill = False
    if tools_where in ("kwarg", "functions"):
        bare = [{"type": "function", "function": {"name": "probe_fn", "parameters": {
            "type": "object", "properties": {"probe_key": {"type": "string"}}}}}]
        kw, extra = (bare, {}) if tools_where == "kwarg" else (no_tools, {"functions": json.dumps(bare)})
        fill = try_render(template, {**special, **extra}, sys_user, kw) is None

    state = {"named": False}  # probe call ids as Kimi K2's functions.NAME:INDEX

    def call_render(calls: list[dict], content, as_string: bool, after: tuple[dict, ...] = ()) -> str | None:
        if state["named"]:
            calls = [{**c, "id": kimi_call_id(c["function"]["name"], k)} for k, c in enumerate(calls)]
        return try_render(template, special, base + [with_call(calls, content, as_string), *after], tools)

    # Native calls: first as JSON arguments, then in any syntax that shows the argument values (Qwen3-Coder's
    # <parameter=probe_key>probe_v1, GLM-4.5's <arg_value>probe_v1): the template's own text is what is trained.
    forms = ((False, False), (True, False), (False, True), (True, True))
    for state["named"] in (False, True):  # Kimi K2 writes the id where the name goes: functions.NAME:INDEX
        native = next((f for json_only in (True, False) for f in forms
                       if shows_call(call_render([probe_call()], None if f[0] else "", f[1]), json_only=json_only)), None)
        if native is not None:
            break
    text_syntax = None
    if native is None:
        text_syntax = next((s for marker, s in _TEXT_SYNTAX_MARKERS if marker in template), None)
        content_none, as_string = False, False
    else:
        content_none, as_string = native
    out = call_render([probe_call()], None if content_none else "", as_string)

    one_call, with_content, ids_rendered = True, True, False
    if native is not None:
        two = call_render([probe_call(1), probe_call(2, "probe_gn")], None if content_none else "", as_string)
        one_call = not (shows_call(two, 1) and shows_call(two, 2, "probe_gn"))
        said = call_render([probe_call()], "probe_said", as_string)
        with_content = said is not None and "probe_said" in said and shows_call(said)
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
    if with_content and native is not None:
        # Text and call must be one turn as a generation too: written alike when the message is last and when its
        # result follows (Nemotron Nano 2, when it is last, ends the turn after the text and writes the call as a
        # turn of its own).
        followed = call_render([probe_call()], "probe_said", as_string, ({**result, "role": tool_role},))
        with_content = followed is None or _text_to_call(said) == _text_to_call(followed)
    strict = try_render(template, special, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                        no_tools) is None
    # Reasoning: the field the template shows for the last assistant turn (gpt-oss reads `thinking`).
    reasoning = next((f for f in ("reasoning_content", "thinking", "reasoning")
                      if renders([*sys_user, {**answer, f: "probe_rsn"}], "probe_rsn", "probe_v1")), None)
    prompt = try_render(template, special, sys_user, no_tools, add_generation_prompt=True) or ""
    opens_thought = reasoning is None and prompt.rstrip("\n").endswith(("<think>", "<thought>"))
    closes_thought = reasoning is None and prompt.rstrip("\n").endswith(("</think>", "</thought>"))
    switch = next((k for k in ("thinking", "enable_thinking") if closes_thought and k in template and
                   (try_render(template, {**special, k: True}, sys_user, no_tools, add_generation_prompt=True) or "")
                   .rstrip("\n").endswith(("<think>", "<thought>"))), None)
    return TemplateProfile(tools_where, native is not None, content_none, as_string, one_call, with_content,
                           text_syntax, tool_role, quote_results, ids_rendered, strict, needs_list, system_fold,
                           frozenset(part_roles), fill, missing, reasoning, state["named"] and native is not None,
                           opens_thought, closes_thought, switch)


def special_kwargs(tokenizer) -> dict[str, str]:
    # A missing bos/eos renders as "" (apply_chat_template leaves it undefined, which renders the same).
    return {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}


def template_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or "the chat template"
