"""A canonical record -> the messages this template wants (`template_messages`).

Each `TemplateMessage` remembers the canonical message it comes from and whether it trains. The profile
(profile.py) says how the template wants tools, calls and results; this file shapes the record that way:
calls as the template's own `tool_calls`, or as text in the model's call syntax, one call per turn where the
format has no parallel calls, tools on the system turn, strict alternation merged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import TrajtuneError
from ..trajectory import Trajectory, message_trained
from .errors import RenderError
from .options import RenderOptions
from .profile import TemplateProfile, kimi_call_id, parts, with_call


@dataclass
class TemplateMessage:
    msg: dict  # what the template sees
    src: int  # index of the canonical message it comes from
    trained: bool
    cont: bool = False  # continues the previous assistant turn in the same generation (GLM: text, then a call)
    calls: bool = False  # ends in tool calls (native, or as call text): its stop is a call's (stops.KINDS)


def interleave_results(messages: list[dict]) -> list[tuple[int, dict]]:
    """For one-call-per-turn formats: an assistant turn with N calls followed by its N results becomes
    N (call, result) pairs, each result placed right after its call (matched by tool_call_id)."""
    out: list[tuple[int, dict]] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        calls = m.get("tool_calls") or []
        if m["role"] != "assistant" or len(calls) < 2:
            out.append((i, m))
            i += 1
            continue
        results = list(range(i + 1, j := _end_of_results(messages, i + 1)))
        first = m
        rest = {k: v for k, v in m.items() if k != "reasoning_content"}
        for k, call in enumerate(calls):  # content and reasoning, if any, stay with the first call
            out.append((i, {**(first if k == 0 else rest), "tool_calls": [call],
                            "content": m.get("content") if k == 0 else None}))
            mine = next((r for r in results if messages[r].get("tool_call_id") == call["id"]), None)
            if mine is not None:
                results.remove(mine)
                out.append((mine, messages[mine]))
        out.extend((r, messages[r]) for r in results)  # results that answer no call here: kept, in order
        i = j
    return out


def format_calls(calls: list, syntax: str, where: str) -> str:
    """`tool_calls.format_tool_calls`, with a call the syntax cannot write turned into a RenderError."""
    from ..tool_calls import format_tool_calls

    try:
        return format_tool_calls(calls, syntax)
    except ValueError as e:
        raise RenderError("template_cannot_express", f"{where}: {e}") from None


def _end_of_results(messages: list[dict], j: int) -> int:
    while j < len(messages) and messages[j]["role"] == "tool":
        j += 1
    return j


def _tool_list_text(tools: list) -> str:
    return "# Tools\n\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)


def call_syntax_of(prof: TemplateProfile, opts: RenderOptions, where: str) -> str | None:
    """The call syntax calls are written in as text (None: the template writes calls itself, or none is known)."""
    if opts.call_syntax is not None and prof.native_calls:
        raise TrajtuneError(f"{where}: --call-syntax {opts.call_syntax}: the template writes tool calls itself, in its "
                            "own syntax; --call-syntax is for templates that ignore tool_calls")
    return None if prof.native_calls else opts.call_syntax or prof.text_syntax


def template_messages(record: Trajectory, template: str, prof: TemplateProfile, where: str,
                      opts: RenderOptions | None = None) -> tuple[list[TemplateMessage], list | None]:
    """The record as this template wants it, and the `tools=` to pass. Raises RenderError when the template
    cannot express the record (the message names the option that would), TrajtuneError for options that
    contradict the template."""
    from ..tool_calls import ONE_CALL_PER_TURN, SYNTAXES, mistral_call_id

    opts = opts or RenderOptions()
    if prof.missing_vars:
        name = prof.missing_vars[0]
        raise RenderError("template_variable", f"{where}: the template reads the variable {name!r}, which no record "
                          f"gives; pass it with --template-kwargs {name}=VALUE")
    tools = record.get("tools") or []
    messages = record["messages"]
    has_calls = any(m.get("tool_calls") for m in messages)
    syntax = call_syntax_of(prof, opts, where)
    if (tools or has_calls) and prof.tools_where == "none" and not prof.native_calls and syntax is None:
        raise RenderError("template_cannot_express", f"{where}: the template has no tools, tool calls or tool "
                          "results; choose a prompt format (--prompt-format auto, tool-prompt, react or chatglm3)")
    if has_calls and not prof.native_calls and syntax is None:
        raise RenderError("template_cannot_express", f"{where}: the template ignores tool_calls and its call syntax "
                          f"cannot be inferred from it; name it with --call-syntax NAME ({', '.join(SYNTAXES)}) or "
                          "choose a prompt format (--prompt-format tool-prompt, react or chatglm3)")
    one_call = prof.one_call_per_turn if syntax is None or opts.call_syntax is None else syntax in ONE_CALL_PER_TURN
    pairs = interleave_results(messages) if one_call else list(enumerate(messages))
    ids = {}
    if prof.ids_rendered and "[TOOL_CALLS]" in template:
        ids = {c["id"]: mistral_call_id(c["id"]) for m in messages for c in m.get("tool_calls") or []}
    elif prof.ids_name_calls:
        all_calls = [c for m in messages for c in m.get("tool_calls") or []]
        ids = {c["id"]: kimi_call_id(c["function"]["name"], k) for k, c in enumerate(all_calls)}

    out: list[TemplateMessage] = []
    for src, m in pairs:
        role, content = m["role"], m.get("content")
        msg: dict[str, Any] = {"role": role, "content": content if content is not None else ""}
        if "metadata" in m:  # prompt formats (chatglm3) put the called function's name there
            msg["metadata"] = m["metadata"]
        calls = m.get("tool_calls") or []
        if role == "assistant" and calls:
            if prof.native_calls:
                if content and not prof.content_with_calls:
                    if opts.call_content != "drop":
                        raise RenderError("template_cannot_express", f"{where}: message {src} has text next to a tool "
                                          "call, and the template cannot write both as one turn (it shows only one of "
                                          "them, or ends the turn between them); pass --call-content drop to train "
                                          "the call alone, or use --prompt-format tool-prompt, which shows both")
                    content = None
                msg = with_call([{**c, "id": ids.get(c["id"], c["id"])} for c in calls],
                                 content if content else (None if prof.content_none else ""), prof.args_as_string)
            elif syntax == "glm4":  # GLM-4: the function name goes in `metadata`, the JSON in content
                name, _, body = format_calls(calls, "glm4", where).partition("\n")
                msg = {"role": "assistant", "metadata": name, "content": body}
                if content:  # GLM-4 writes text, then `<|assistant|>name` for the call, in one generation
                    out.append(TemplateMessage({"role": "assistant", "content": content}, src, message_trained(m)))
                    out.append(TemplateMessage(msg, src, message_trained(m), cont=True, calls=True))
                    continue
            else:
                text = format_calls(calls, syntax, where)
                msg = {"role": "assistant", "content": f"{content}\n{text}" if content else text}
        elif role == "tool":
            msg = {"role": prof.tool_role, "content": content or "", "name": m.get("name", "")}
            if "tool_call_id" in m:
                msg["tool_call_id"] = ids.get(m["tool_call_id"], m["tool_call_id"])
            # A template that JSON-quotes results (Llama 3.1's tojson of a string) gets the string as a client
            # sends it: trained text = what the template writes when the model is served with it.
        if role == "assistant" and "reasoning_content" in m:
            msg = _with_reasoning(msg, m["reasoning_content"], prof, opts, src, where)
        if role in prof.content_parts and isinstance(msg.get("content"), str):
            msg = {**msg, "content": parts(msg["content"])}
        out.append(TemplateMessage(msg, src, message_trained(m), cont=bool(m.get("continues_turn")),
                                   # Calls as plain text are an ordinary answer to the template: its stop is an answer's.
                                   calls=role == "assistant" and bool((calls and syntax is None) or msg.get("metadata"))))

    if prof.strict_alternation:
        out = _merge_same_role(out, where)
    kw_tools = [] if prof.needs_tool_list else None
    if prof.fill_tool_fields:
        tools = [_filled(t) for t in tools]
    if tools and prof.tools_where in ("kwarg", "functions"):
        kw_tools = tools  # "functions": render_shaped passes them as the `functions` variable too
    elif prof.tools_where == "functions_message":  # FireFunction v1: [system,] functions, then the conversation
        at = 1 if out and out[0].msg["role"] == "system" else 0
        out.insert(at, TemplateMessage({"role": "functions", "content": json.dumps(tools, ensure_ascii=False)}, -1,
                                       False))
    elif tools and prof.tools_where in ("system_list", "system_string", "none"):
        value = tools if prof.tools_where == "system_list" else json.dumps(tools, ensure_ascii=False)
        if out and out[0].msg["role"] == "system":
            first = out[0]
        else:
            first = TemplateMessage({"role": "system", "content": ""}, -1, False)
            out.insert(0, first)
        if prof.tools_where == "none":  # calls render natively, but tools have no slot: list them in the system
            sep = "\n\n" if first.msg["content"] else ""
            first.msg = {**first.msg, "content": first.msg["content"] + sep + _tool_list_text(tools)}
        else:
            first.msg = {**first.msg, "tools": value}
    if prof.system_fold:
        out = _fold_system(out, where)
    return out, kw_tools


def reasoning_placement(prof: TemplateProfile, opts: RenderOptions) -> str | None:
    """Where reasoning goes with this template and --reasoning: "inline" (as <think>...</think> before the answer,
    in the content), "drop", "per-turn" (a template whose generation prompt opens a thought: each turn's own
    sample holds it, per_turn.py), "off" (its generation prompt closes the thought: the model is prompted not to
    reason, so reasoning is declined) or None (the template's own field, `prof.reasoning_field`)."""
    if opts.reasoning in ("inline", "drop"):
        return opts.reasoning
    if prof.reasoning_field is not None:
        return None
    if prof.closes_thought:
        return "off"
    return "per-turn" if prof.opens_thought else "inline"  # auto, on a template with no place for reasoning


def _with_reasoning(msg: dict, reasoning: str, prof: TemplateProfile, opts: RenderOptions, src: int,
                    where: str) -> dict:
    """The assistant message with its reasoning where `reasoning_placement` says; never dropped unless asked."""
    place = reasoning_placement(prof, opts)
    if place == "drop" or not reasoning:
        return msg
    if place == "off":
        switch = f"--template-kwargs {prof.thinking_kwarg}=true (its generation prompt then opens <think>), or "
        raise RenderError("template_cannot_express", f"{where}: message {src} has reasoning_content, and the "
                          "template's generation prompt closes the thought (</think>): it prompts the model not to "
                          f"reason; pass {switch if prof.thinking_kwarg else ''}--reasoning drop")
    if place == "inline":
        if msg.get("tool_calls") and not prof.content_with_calls:
            raise RenderError("template_cannot_express", f"{where}: message {src} has reasoning next to a tool call, "
                              "and the template shows no text beside a call, so the reasoning cannot go inline; pass "
                              "--reasoning drop, or use --prompt-format tool-prompt")
        body = msg.get("content") or ""
        return {**msg, "content": f"<think>\n{reasoning}\n</think>\n\n{body}" if body else f"<think>\n{reasoning}\n</think>"}
    return {**msg, prof.reasoning_field or "reasoning_content": reasoning}  # per-turn: history hides it


def _filled(tool: dict) -> dict:
    """A tool whose missing descriptions are "" (for templates that read them unguarded, Hermes-2-Pro, gpt-oss)."""
    fn = {"description": "", **tool["function"]}
    params = fn.get("parameters") or {}
    props = params.get("properties")
    if isinstance(props, dict):
        fn["parameters"] = {**params, "properties": {k: {"description": "", **v} if isinstance(v, dict) else v
                                                     for k, v in props.items()}}
    return {**tool, "function": fn}


def _fold_system(msgs: list[TemplateMessage], where: str) -> list[TemplateMessage]:
    """A template with no system role: the system text opens the first user turn ("SYSTEM\\n\\nUSER", the way
    Gemma 3's template and Mistral's v1-system template write it). Never dropped: no user turn to carry it is an
    error."""
    system = "\n\n".join(m.msg["content"] for m in msgs if m.msg["role"] == "system" and m.msg["content"])
    rest = [m for m in msgs if m.msg["role"] != "system"]
    if not system:
        return rest
    first = next((m for m in rest if m.msg["role"] == "user"), None)
    if first is None or first.trained:
        raise RenderError("template_cannot_express", f"{where}: the template has no system role, and no user turn "
                          "follows the system message to carry its text")
    first.msg = {**first.msg, "content": f"{system}\n\n{first.msg['content']}"}
    return rest


def _merge_same_role(msgs: list[TemplateMessage], where: str) -> list[TemplateMessage]:
    """Strict-alternation templates: tool results become user turns, and adjacent same-role turns merge."""
    out: list[TemplateMessage] = []
    for m in msgs:
        if m.msg["role"] == "tool":
            m = TemplateMessage({"role": "user", "content": str(m.msg["content"])}, m.src, m.trained)
        if out and out[-1].msg["role"] == m.msg["role"] and m.msg["role"] in ("user", "assistant"):
            prev = out[-1]
            if prev.trained != m.trained:
                raise RenderError("template_cannot_express", f"{where}: messages {prev.src} and {m.src} must merge "
                                  "into one turn (strict alternation) but only one of them is trained")
            out[-1] = TemplateMessage({**prev.msg, "content": f"{prev.msg['content']}\n\n{m.msg['content']}"}, prev.src,
                                      prev.trained, calls=m.calls)
        else:
            out.append(m)
    return out
