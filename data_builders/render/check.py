"""The template battery: the conversations every chat template is vetted on, and the fast-path gate.

`BATTERY` holds the cases of issue 3 (plain chat, single call, parallel calls, content and a call in one turn,
two tool rounds, a loss=false message). `check_template(tokenizer)` renders each with the exhaustive prefix
proof, per turn where that fails on history, and reports a verdict per case (`trajtune render --check-template T`). `fast_path_ok(ctx)` decides
whether a template may use the one-render header path of `render_with_mask`: only if, on every case here
plus a few extra probes, it finds exactly the spans the prefix proof finds, or defers to it. `turn_cut_ok(ctx)`
decides the same for per-turn rendering: whether each turn's context and target may be cut out of one render.
"""

from __future__ import annotations

import copy
import json

_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name."}},
                   "required": ["city"]}}}]


def _call(i: int, city: str) -> dict:
    return {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


def _result(i: int, temp: int) -> dict:
    return {"role": "tool", "tool_call_id": f"call_{i}", "name": "get_weather", "content": json.dumps({"temp_c": temp})}


_SYS = {"role": "system", "content": "You are a helpful assistant."}
_ASK = {"role": "user", "content": "What's the weather in Beijing?"}

# Extra cases for the fast-path gate only: reasoning in history (Qwen3 strips it), a trained turn after an
# untrained one, and a conversation that ends on a user turn.
_EXTRA = {
    "think_history": {"id": "think_history", "messages": [
        {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
        {"role": "user", "content": "Bye."}, {"role": "assistant", "content": "<think>\nOk.\n</think>\n\nBye!"}]},
    "ends_on_user": {"id": "ends_on_user", "messages": [
        {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Ok."}]},
}

# name -> record. Each trained assistant message must come out as exactly its text/calls + end-of-turn.
BATTERY: dict[str, dict] = {
    "plain_chat": {"id": "plain_chat", "messages": [
        _SYS, {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "Why did the chicken cross?"}]},
    "single_call": {"id": "single_call", "tools": _TOOLS, "messages": [
        _SYS, _ASK, {"role": "assistant", "content": None, "tool_calls": [_call(1, "Beijing")]}, _result(1, 26),
        {"role": "assistant", "content": "It is 26 °C in Beijing."}]},
    "parallel_calls": {"id": "parallel_calls", "tools": _TOOLS, "messages": [
        _SYS, {"role": "user", "content": "Weather in Beijing and Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [_call(1, "Beijing"), _call(2, "Paris")]},
        _result(1, 26), _result(2, 18), {"role": "assistant", "content": "Beijing 26 °C, Paris 18 °C."}]},
    "content_and_call": {"id": "content_and_call", "tools": _TOOLS, "messages": [
        _SYS, _ASK, {"role": "assistant", "content": "Let me check.", "tool_calls": [_call(1, "Beijing")]},
        _result(1, 26), {"role": "assistant", "content": "It is 26 °C in Beijing."}]},
    "two_rounds": {"id": "two_rounds", "tools": _TOOLS, "messages": [
        _SYS, {"role": "user", "content": "Is Beijing warmer than Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [_call(1, "Beijing")]}, _result(1, 26),
        {"role": "assistant", "content": None, "tool_calls": [_call(2, "Paris")]}, _result(2, 18),
        {"role": "assistant", "content": "Yes: 26 °C against 18 °C."}]},
    "loss_false": {"id": "loss_false", "messages": [
        _SYS, {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hullo, wrong greeting.", "loss": False},
        {"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "Why did the chicken cross?"}]},
    "reasoning": {"id": "reasoning", "messages": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4.", "reasoning_content": "Two and two make four."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6.", "reasoning_content": "Three and three make six."}]},
}


def check_template(tokenizer, prompt_format: str | None = None, options=None) -> list[tuple[str, str, str]]:
    """Render every BATTERY case as `trajtune build --turns auto` would; return (case, verdict, detail) with verdict
    "ok" (one joint render, proved by the exhaustive prefix check; detail = the trained text, spans joined by
    " | "), "per-turn" (the joint proof fails where per-turn rendering resolves it: each trained turn its own
    sample; detail = the targets) or "declined" (detail = the reason, which names the option that would fix it)."""
    from ..trajectory import validate_record
    from .errors import RenderError
    from .mask import render_with_mask
    from .per_turn import FALLBACK, render_turns

    rows = []
    for name, record in BATTERY.items():
        try:
            r = render_with_mask(validate_record(copy.deepcopy(record)), tokenizer, prompt_format, exhaustive=True,
                                 options=options)
        except RenderError as e:
            if e.reason not in FALLBACK:
                rows.append((name, "declined", str(e)))
                continue
            try:
                samples = render_turns(validate_record(copy.deepcopy(record)), tokenizer, prompt_format, options)
            except RenderError as again:
                rows.append((name, "declined", str(again)))
                continue
            rows.append((name, "per-turn", " | ".join(t.text[s:e] for t in samples for s, e in t.trained_spans)))
            continue
        rows.append((name, "ok", " | ".join(r.text[s:e] for s, e in r.trained_spans)))
    return rows


def describe_template(tokenizer, rows: list[tuple[str, str, str]], prompt_format: str | None = "auto",
                      options=None) -> list[str]:
    """What `trajtune render --check-template` says about a template beside the verdicts (`rows`, check_template):
    joint or per-turn (prefix stability on the battery), the stop token per kind of message, the folds and
    conventions it needs (measured by the profile), and the prompt format auto picks. One line each."""
    from .options import RenderOptions
    from .per_turn import template_turns
    from .profile import profile_template, special_kwargs
    from .prompt_formats import resolve_prompt_format
    from .shape import reasoning_placement
    from .stops import KINDS, template_stop_tokens

    options = options or RenderOptions()
    kwargs = dict(options.template_kwargs)
    prof = profile_template(tokenizer.chat_template, tuple(sorted({**special_kwargs(tokenizer), **kwargs}.items())))
    per_turn = [name for name, verdict, _ in rows if verdict == "per-turn"]
    if template_turns(tokenizer, prompt_format, options) == "per-turn":
        lines = ["rendering: per-turn (the template renders history unlike a generation: --turns auto gives each "
                 "trained turn its own sample)"]
    elif per_turn:
        lines = [f"rendering: joint, but not prefix-stable on {', '.join(per_turn)}: --turns auto renders such "
                 "records per turn"]
    else:
        lines = ["rendering: joint (the generation prompt is a prefix of the conversation on every case)"]
    stops = template_stop_tokens(tokenizer)
    lines.append("stop tokens: " + "; ".join(
        f"{what}: {stops.of(kind) or 'none (declined)'}" + (" (appended: the template leaves the last turn open)"
                                                             if kind in stops.open_last else "")
        + (" (written only after two or more calls: one call is declined)" if kind in stops.multi_call_only else "")
        for kind, what in KINDS.items()))
    folds = []
    if prof.system_fold:
        folds.append("system text folded into the first user turn (the template has no system role)")
    if prof.content_parts:
        folds.append(f"content as a list of parts for {', '.join(sorted(prof.content_parts))}")
    if prof.strict_alternation:
        folds.append("strict user/assistant alternation: tool results as user turns, same-role turns merged")
    if prof.fill_tool_fields:
        folds.append("missing tool descriptions given as \"\" (the template reads them unguarded)")
    if prof.quote_results:
        folds.append("tool results written JSON-quoted (the template's tojson of a string), as when served")
    if prof.ids_name_calls:
        folds.append("call ids written as functions.NAME:INDEX (the template writes the id where the name goes)")
    folds += [f"needs --template-kwargs {v}=VALUE" for v in prof.missing_vars]
    lines.append("folds: " + ("; ".join(folds) or "none"))
    tools = {"kwarg": "the tools= variable", "functions": "the functions variable", "functions_message": "a functions "
             "message", "system_list": "the system message (a list)", "system_string": "the system message (JSON)",
             "none": "nowhere"}[prof.tools_where]
    calls = ("written by the template" if prof.native_calls else f"as text in the {prof.text_syntax} syntax"
             if prof.text_syntax else "ignored, syntax unknown (--call-syntax NAME)")
    chosen = resolve_prompt_format(tokenizer, prompt_format, options)
    place = reasoning_placement(prof, options)
    reasoning = {None: f"the {prof.reasoning_field} field", "inline": "inline, <think>...</think> before the answer",
                 "drop": "dropped (--reasoning drop)", "per-turn": "after the generation prompt's <think>, per turn",
                 "off": "declined: the generation prompt closes the thought"
                        + (f" (--template-kwargs {prof.thinking_kwarg}=true opens it)" if prof.thinking_kwarg else "")
                 }[place]
    lines.append(f"tools: {tools}; calls: {calls}; reasoning: {reasoning}; "
                 f"prompt format: {chosen or 'none (the template alone)'}")
    return lines


def fast_path_ok(ctx) -> bool:
    """True if the one-render header path agrees with the prefix proof on every battery case (or defers)."""
    from ..trajectory import validate_record
    from .errors import RenderError
    from .shape import template_messages
    from .spans import spans_by_header, spans_by_prefix

    for record in list(BATTERY.values()) + list(_EXTRA.values()):
        try:
            msgs, tools = template_messages(validate_record(copy.deepcopy(record)), ctx.template, ctx.profile, "probe")
            if not any(m.trained for m in msgs):
                continue
            fast = spans_by_header(ctx, msgs, tools, "probe")
        except RenderError:
            continue
        if fast is None:
            continue
        try:
            slow = spans_by_prefix(ctx, msgs, tools, "probe")
        except RenderError:
            return False  # the header path would accept what the proof rejects
        if slow != fast:
            return False
    return True


_TURN_CUT: dict[int, tuple] = {}  # id(ctx) -> (ctx, verdict); holding ctx keeps its id from being reused


def turn_cut_ok(ctx) -> bool:
    """True if cutting each turn's context and target out of one render (`per_turn.cut_texts`) may be used with
    this template: on every battery case, where rendering each turn apart (`per_turn.turn_texts`) declines, the
    cut defers; where it renders, the cut defers or gives the same texts, and the joint prefix proof accepts the
    case (the template writes each prompt as a prefix of the conversation, and a turn alike last and in history:
    what the cut assumes of every record). At least one case must be compared, and the template's one-render
    header path must be allowed (`fast_path_ok`). Decided once per render context.
    """
    hit = _TURN_CUT.get(id(ctx))
    if hit is not None and hit[0] is ctx:
        return hit[1]
    if len(_TURN_CUT) >= 64:
        _TURN_CUT.clear()
    verdict = ctx.fast and _turn_cut_agrees(ctx)  # (the cut finds turns by the header path: vetted first)
    _TURN_CUT[id(ctx)] = (ctx, verdict)
    return verdict


def _turn_cut_agrees(ctx) -> bool:
    from ..trajectory import validate_record
    from .errors import RenderError
    from .per_turn import cut_texts, turn_texts
    from .shape import template_messages
    from .spans import spans_by_prefix

    compared = 0
    for record in list(BATTERY.values()) + list(_EXTRA.values()):
        try:
            msgs, tools = template_messages(validate_record(copy.deepcopy(record)), ctx.template, ctx.profile, "probe")
        except RenderError:
            continue
        if not any(m.trained for m in msgs):
            continue
        cut = cut_texts(ctx, msgs, tools, "probe")
        try:
            exact = turn_texts(ctx, msgs, tools, "probe")
        except RenderError:
            if cut is not None:
                return False  # the cut would accept what rendering apart declines
            continue
        try:
            spans_by_prefix(ctx, msgs, tools, "probe")
        except RenderError:
            return False  # history written unlike a generation: a template that needs per-turn rendering
        if cut is not None:
            if cut[0] != exact:
                return False
            compared += 1
    return compared > 0
