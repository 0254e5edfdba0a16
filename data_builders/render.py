"""Render a canonical trajectory with a model's own chat template, with a loss mask that is verified per record.

`render_with_mask(record, tokenizer)` returns the full text, its token ids, a 0/1 loss mask and the trained
character spans. Trained = exactly what the model generates at inference (DESIGN.md): for each trained
assistant message, the text after the generation prompt through the end-of-turn token.

The proof (`spans_by_prefix`, always used with `exhaustive=True`): for every trained message `i`,
`messages[:i]` rendered with `add_generation_prompt=True` must be a prefix of the full render (or, where a
template writes history slightly differently, its generation header must be found right where the two
part); the span starts there and ends with the first stop token after it; `messages[:i+1]` rendered alone
must give exactly that text (or end with it, when only the last turn gets a preamble such as Qwen3's empty
`<think></think>`); and the span must hold the message's content and every call's name. Anything else
raises RenderError naming template and message: never a silent wrong mask, never an all-zero mask.
The default path (`spans_by_header`) needs one render: the k-th assistant turn starts after the k-th
occurrence of the template's generation header. It is used only for templates where it agrees with the
proof on the whole battery (render_check.py), and only when the header count, span ends and content all
check out on the record; otherwise the proof runs.

How a template wants tools and calls is measured once by `template_profile.py`. Templates that ignore
`tool_calls` get the calls as text in the model's own syntax (`tool_calls.format_tool_calls`); templates
with no tools at all need a prompt format (`prompt_formats.py`). The full text is tokenized once (`_encode_masked`:
byte-level BPEs without offsets, with repeated long segments from a per-process cache, giving the same ids); a
token straddling a span edge is an error (training would see tokens inference never produces), never a guess.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .errors import TrajtuneError
from .template_profile import (  # noqa: F401  (render_text is part of this module's API)
    TemplateProfile,
    profile_template,
    render_text,
    try_render,
    with_call,
)
from .tokenizer import ROLE_CONCAT_RE
from .trajectory import Trajectory, message_trained

# Tokens after which the model stops: end-of-turn tokens, and for GLM/ChatGLM3 the role token it emits next.
STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>",
               "</s>", "<|endoftext|>", "<|user|>", "<|observation|>")

_STOP_RE = re.compile("|".join(re.escape(t) for t in sorted(STOP_TOKENS, key=len, reverse=True)))


def template_stop_tokens(tokenizer) -> list[str]:
    """The tokens generation must stop at for a model trained on this tokenizer's chat template, first found first.

    Found by probe renders, not assumed: the first of STOP_TOKENS the template renders after an assistant reply,
    and after a tool call (GLM's `<|observation|>`); then the tokenizer's eos. A template that renders none of
    them adds nothing; no chat template gives just the eos. Example: a base Qwen2.5 tokenizer (eos
    `<|endoftext|>`) with the ChatML template gives ["<|im_end|>", "<|endoftext|>"].
    """
    template = tokenizer.chat_template
    found: list[str] = []
    if isinstance(template, str) and template:
        special = special_kwargs(tokenizer)
        profile = profile_template(template, tuple(sorted(special.items())))
        call = {"id": "probecall1", "type": "function", "function": {"name": "probe_fn", "arguments": {"k": "probe_v1"}}}
        call_msg = (with_call([call], None if profile.content_none else "", profile.args_as_string)
                    if profile.native_calls else {"role": "assistant", "content": "probe_v1"})
        result = {"role": profile.tool_role, "tool_call_id": "probecall1", "name": "probe_fn", "content": "probe_end"}
        user = {"role": "user", "content": "probe_user"}
        probes = ([user, {"role": "assistant", "content": "probe_v1"}, {"role": "user", "content": "probe_end"}],
                  [user, call_msg, result])
        for messages in probes:
            text = try_render(template, special, messages, [] if profile.needs_tool_list else None) or ""
            start, end = text.find("probe_v1"), text.rfind("probe_end")
            stop = _STOP_RE.search(text, start, end) if 0 <= start < end else None
            if stop is not None and stop.group(0) not in found:
                found.append(stop.group(0))
    eos = tokenizer.eos_token
    return found + ([eos] if isinstance(eos, str) and eos and eos not in found else [])


# Texts per encode call in render_batch: amortises the call, bounds the Encodings held (~100 B a token).
ENCODE_CHUNK = 64
# Text between two added tokens at least this long, seen twice, is encoded once per process (`_ids_of_texts`);
# at most REPEAT_CACHE_CHARS of such text is kept, and SEEN_MAX hashes of segments seen once.
MIN_REPEAT_CHARS = 256
REPEAT_CACHE_CHARS = 1 << 21  # ~10 MB of ids at most
SEEN_MAX = 1 << 16

REASONS = {
    "template_cannot_express": "the chat template has no way to show this record (tools, a call, content + call)",
    "template_error": "the chat template raised an error on this record",
    "not_prefix_stable": "the template renders history differently from a generation prompt, so no exact mask",
    "mask_mismatch": "the trained span is not the assistant message's own text",
    "token_straddles_boundary": "a token spans both trained and untrained text",
    "nothing_trained": "the record has no trained assistant message",
}


@dataclass
class Rendered:
    text: str  # the full rendered conversation
    input_ids: list[int]
    loss_mask: list[int]  # 1 = trained token, same length as input_ids
    trained_spans: list[tuple[int, int]]  # character offsets into text, [start, end)


class RenderError(TrajtuneError):
    """A record the template cannot express, or cannot be masked exactly. `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------------------------
# Rendering


def special_kwargs(tokenizer) -> dict[str, str]:
    # A missing bos/eos renders as "" (apply_chat_template leaves it undefined, which renders the same).
    return {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}


def template_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or "the chat template"


# ---------------------------------------------------------------------------------------------------------
# Record -> the messages this template wants (each remembers its source message and whether it trains)


@dataclass
class _Msg:
    msg: dict  # what the template sees
    src: int  # index of the canonical message it comes from
    trained: bool
    cont: bool = False  # continues the previous assistant turn in the same generation (GLM: text, then a call)


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
        for k, call in enumerate(calls):  # content, if any, stays with the first call
            out.append((i, {**m, "tool_calls": [call], "content": m.get("content") if k == 0 else None}))
            mine = next((r for r in results if messages[r].get("tool_call_id") == call["id"]), None)
            if mine is not None:
                results.remove(mine)
                out.append((mine, messages[mine]))
        out.extend((r, messages[r]) for r in results)  # results that answer no call here: kept, in order
        i = j
    return out


def format_calls(calls: list, syntax: str, where: str) -> str:
    """`tool_calls.format_tool_calls`, with a call the syntax cannot write turned into a RenderError."""
    from .tool_calls import format_tool_calls

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


def template_messages(record: Trajectory, template: str, prof: TemplateProfile, where: str) -> tuple[list[_Msg], list | None]:
    """The record as this template wants it, and the `tools=` to pass. Raises RenderError when the template
    cannot express the record."""
    from .tool_calls import mistral_call_id

    tools = record.get("tools") or []
    messages = record["messages"]
    has_calls = any(m.get("tool_calls") for m in messages)
    if (tools or has_calls) and prof.tools_where == "none" and not prof.native_calls and prof.text_syntax is None:
        raise RenderError("template_cannot_express", f"{where}: the template has no tools, tool calls or tool "
                          "results; choose a prompt format (--prompt-format tool-prompt, react or chatglm3)")
    if has_calls and not prof.native_calls and prof.text_syntax is None:
        raise RenderError("template_cannot_express", f"{where}: the template ignores tool_calls and its call syntax "
                          "is unknown; choose a prompt format (--prompt-format tool-prompt, react or chatglm3)")
    pairs = interleave_results(messages) if prof.one_call_per_turn else list(enumerate(messages))
    ids = {}
    if prof.ids_rendered and "[TOOL_CALLS]" in template:
        ids = {c["id"]: mistral_call_id(c["id"]) for m in messages for c in m.get("tool_calls") or []}

    out: list[_Msg] = []
    for src, m in pairs:
        role, content = m["role"], m.get("content")
        msg: dict[str, Any] = {"role": role, "content": content if content is not None else ""}
        if "metadata" in m:  # prompt formats (chatglm3) put the called function's name there
            msg["metadata"] = m["metadata"]
        if "reasoning_content" in m:  # templates that read it (Qwen3, DeepSeek-R1); _expected_pieces checks it is kept
            msg["reasoning_content"] = m["reasoning_content"]
        calls = m.get("tool_calls") or []
        if role == "assistant" and calls:
            if prof.native_calls:
                if content and not prof.content_with_calls:
                    raise RenderError("template_cannot_express", f"{where}: message {src} has content next to a "
                                      "tool call, and the template drops one of them")
                msg = with_call([{**c, "id": ids.get(c["id"], c["id"])} for c in calls],
                                 content if content else (None if prof.content_none else ""), prof.args_as_string)
            elif prof.text_syntax == "glm4":  # GLM-4: the function name goes in `metadata`, the JSON in content
                name, _, body = format_calls(calls, "glm4", where).partition("\n")
                msg = {"role": "assistant", "metadata": name, "content": body}
                if content:  # GLM-4 writes text, then `<|assistant|>name` for the call, in one generation
                    out.append(_Msg({"role": "assistant", "content": content}, src, message_trained(m)))
                    out.append(_Msg(msg, src, message_trained(m), cont=True))
                    continue
            else:
                text = format_calls(calls, prof.text_syntax, where)
                msg = {"role": "assistant", "content": f"{content}\n{text}" if content else text}
        elif role == "tool":
            msg = {"role": prof.tool_role, "content": content or "", "name": m.get("name", "")}
            if "tool_call_id" in m:
                msg["tool_call_id"] = ids.get(m["tool_call_id"], m["tool_call_id"])
            if prof.quote_results:
                try:
                    parsed = json.loads(msg["content"])
                    if isinstance(parsed, (dict, list)):
                        msg["content"] = parsed  # so the template's tojson writes the JSON, not a quoted string
                except json.JSONDecodeError:
                    pass
        out.append(_Msg(msg, src, message_trained(m), cont=bool(m.get("continues_turn"))))

    if prof.strict_alternation:
        out = _merge_same_role(out, where)
    kw_tools = [] if prof.needs_tool_list else None
    if tools and prof.tools_where == "kwarg":
        kw_tools = tools
    elif tools and prof.tools_where in ("system_list", "system_string", "none"):
        value = tools if prof.tools_where == "system_list" else json.dumps(tools, ensure_ascii=False)
        if out and out[0].msg["role"] == "system":
            first = out[0]
        else:
            first = _Msg({"role": "system", "content": ""}, -1, False)
            out.insert(0, first)
        if prof.tools_where == "none":  # calls render natively, but tools have no slot: list them in the system
            sep = "\n\n" if first.msg["content"] else ""
            first.msg = {**first.msg, "content": first.msg["content"] + sep + _tool_list_text(tools)}
        else:
            first.msg = {**first.msg, "tools": value}
    return out, kw_tools


def _merge_same_role(msgs: list[_Msg], where: str) -> list[_Msg]:
    """Strict-alternation templates: tool results become user turns, and adjacent same-role turns merge."""
    out: list[_Msg] = []
    for m in msgs:
        if m.msg["role"] == "tool":
            m = _Msg({"role": "user", "content": str(m.msg["content"])}, m.src, m.trained)
        if out and out[-1].msg["role"] == m.msg["role"] and m.msg["role"] in ("user", "assistant"):
            prev = out[-1]
            if prev.trained != m.trained:
                raise RenderError("template_cannot_express", f"{where}: messages {prev.src} and {m.src} must merge "
                                  "into one turn (strict alternation) but only one of them is trained")
            out[-1] = _Msg({**prev.msg, "content": f"{prev.msg['content']}\n\n{m.msg['content']}"}, prev.src,
                           prev.trained)
        else:
            out.append(m)
    return out


# ---------------------------------------------------------------------------------------------------------
# The mask


def _find_header(full: str, prompt: str, history: str) -> int | None:
    """Where message j's text starts in `full` when the prompt is not a prefix of it (Hermes-2-Pro writes a
    tool result's closing newline only when another message follows). The generation header is what the
    prompt adds to the history; it is searched from where prompt and full text part. The span found is then
    verified like any other (its text must be the message's own), so a wrong find is an error, not a mask."""
    if not prompt.startswith(history) or len(prompt) == len(history):
        return None
    header = prompt[len(history):]
    common = len(_common_prefix(full, prompt))
    pos = full.find(header, max(0, common - len(header)))
    return None if pos < 0 else pos + len(header)


def _common_prefix(a: str, b: str) -> str:
    import os

    return os.path.commonprefix([a, b])


def _expected_pieces(msg: dict) -> list[str]:
    """Text that must appear in a trained span: the visible content and each call's name."""
    pieces = []
    content = msg.get("content")
    if isinstance(content, str) and content.strip():
        # A template may move reasoning out of the content (Qwen3): the answer after </think> must stay, and so
        # must the reasoning itself when there is any: a template that strips it from a history turn would
        # train the answer without the thought the model writes before it, so such a record is declined.
        reasoning, _, answer = content.rpartition("</think>")
        pieces += [answer.strip(), reasoning.replace("<think>", "").strip()]
    if isinstance(msg.get("reasoning_content"), str):
        pieces.append(msg["reasoning_content"].strip())
    pieces += [c["function"]["name"] for c in msg.get("tool_calls") or []]
    if msg.get("metadata"):
        pieces.append(msg["metadata"])
    return [p for p in pieces if p]


def render_with_mask(record: Trajectory, tokenizer, prompt_format: str | None = None,
                     exhaustive: bool = False) -> Rendered:
    """Render `record` (canonical, validated) with `tokenizer`'s chat template and mask what is trained.

    Returns the text, ids, a mask (1 = trained token) and the trained character spans. Raises RenderError
    (with `.reason`) when the template cannot express the record or the mask cannot be proven exact.
    With `exhaustive=True` every trained message is located by prefix rendering (2 extra renders each);
    otherwise templates that pass `fast_path_ok` use one render and their own generation header (see
    `spans_by_header`), falling back to prefix rendering on any doubt.
    Example: `render_with_mask(rec, byte_level_tokenizer(qwen_template)).trained_spans` -> [(412, 440)].
    """
    full, spans, where = _render_spans(record, tokenizer, prompt_format, exhaustive)
    result = _encode_masked(tokenizer, [(full, spans, where)])[0]
    if isinstance(result, RenderError):
        raise result
    return Rendered(full, *result, spans)


def render_batch(records: list[Trajectory], tokenizer, prompt_format: str | None = None) -> list[Rendered | RenderError]:
    """`render_with_mask` of each record, with the texts tokenized ENCODE_CHUNK per call (the build's path:
    tokenizing is most of a record's cost, and one call per chunk saves the per-call overhead).

    Item i is exactly `render_with_mask(records[i], ...)`'s result, or the RenderError it raises; any other
    error (no chat template, a slow tokenizer) is raised, as it is no record's fault.
    """
    out: list[Rendered | RenderError | None] = []
    todo: list[tuple[int, str, list[tuple[int, int]], str]] = []  # (index in out, text, spans, where)
    for record in records:
        try:
            full, spans, where = _render_spans(record, tokenizer, prompt_format)
        except RenderError as e:
            out.append(e)
            continue
        todo.append((len(out), full, spans, where))
        out.append(None)
    for (i, full, spans, _), result in zip(todo, _encode_masked(tokenizer, [t[1:] for t in todo])):
        out[i] = result if isinstance(result, RenderError) else Rendered(full, *result, spans)
    return out  # type: ignore[return-value]  (every None was replaced)


def _render_spans(record: Trajectory, tokenizer, prompt_format: str | None = None,
                  exhaustive: bool = False) -> tuple[str, list[tuple[int, int]], str]:
    """The text and trained spans of `render_with_mask` (no tokens), and the name errors give the template."""
    template = tokenizer.chat_template
    where = template_name(tokenizer)
    if prompt_format is not None:
        from .prompt_formats import apply_prompt_format

        record, override = apply_prompt_format(record, prompt_format)
        if override is not None:
            template, where = override, f"{where} (prompt format {prompt_format})"
    if not isinstance(template, str) or not template:
        raise TrajtuneError(f"{where} has no chat template; pass --template FILE.jinja")
    ctx = _context(template, tokenizer)
    msgs, tools = template_messages(record, template, ctx.profile, where)
    if not any(m.trained for m in msgs):
        raise RenderError("nothing_trained", f"{where}: record {record.get('id', '?')} has no trained message")
    for m in msgs:
        if m.trained and m.msg["role"] != "assistant":
            raise RenderError("template_cannot_express", f"{where}: message {m.src} ({m.msg['role']}) has loss=true; "
                              "only assistant messages can be trained")
    found = None
    if not exhaustive and ctx.fast:
        found = spans_by_header(ctx, msgs, tools, where)
    full, spans = found if found is not None else spans_by_prefix(ctx, msgs, tools, where)
    return full, spans, where


@dataclass(frozen=True)
class _Ctx:
    template: str
    special: dict
    profile: TemplateProfile
    stop_re: re.Pattern
    final: str  # appended after the last turn when the format has no end-of-turn token of its own
    header: str  # what add_generation_prompt adds ("" if nothing)
    fast: bool


_LAST_CTX: list = [None, None, None]  # (tokenizer, template, ctx): the build renders millions with one pair


def _context(template: str, tokenizer) -> _Ctx:
    if _LAST_CTX[0] is tokenizer and _LAST_CTX[1] is template:
        return _LAST_CTX[2]
    special = special_kwargs(tokenizer)
    ctx = _context_cached(template, tuple(sorted(special.items())), tokenizer.eos_token or "")
    _LAST_CTX[:] = [tokenizer, template, ctx]
    return ctx


@lru_cache(maxsize=64)
def _context_cached(template: str, special_items: tuple, eos: str) -> _Ctx:
    special = dict(special_items)
    # Only this template's own end-of-turn tokens: another model's (`</s>` for Qwen) is ordinary text here.
    role_tokens = {"<|user|>", "<|observation|>"} if ROLE_CONCAT_RE.search(template) else set()
    stops = {t for t in STOP_TOKENS if t in template or t in role_tokens} | ({eos} if eos else set())
    stop_re = re.compile("|".join(re.escape(t) for t in sorted(stops, key=len, reverse=True)))
    final = "<|user|>" if ROLE_CONCAT_RE.search(template) else eos
    probe = [{"role": "user", "content": "probe_user"}]
    no_tools = [] if profile_template(template, special_items).needs_tool_list else None
    plain = try_render(template, special, probe, no_tools)
    try:
        with_gen = render_text(template, probe, no_tools, True, special)
    except Exception:  # a template that cannot even render a user turn: no fast path, prefix proof reports it
        with_gen = None
    header = with_gen[len(plain):] if plain is not None and with_gen and with_gen.startswith(plain) else ""
    ctx = _Ctx(template, special, profile_template(template, special_items), stop_re, final, header, False)
    if header:
        from .render_check import fast_path_ok

        ctx = _Ctx(*[getattr(ctx, f) for f in ("template", "special", "profile", "stop_re", "final", "header")],
                   fast_path_ok(ctx))
    return ctx


def _render(ctx: _Ctx, plain: list[dict], tools, gen: bool, where: str, what: str) -> str:
    try:
        return render_text(ctx.template, plain, tools, gen, ctx.special)
    except Exception as e:  # jinja's raise_exception, or a TypeError on a value the template cannot take
        raise RenderError("template_error", f"{where}: rendering {what}: {type(e).__name__}: {e}") from None


def _close_turn(ctx: _Ctx, full: str, start: int, is_last: bool, src: int, where: str) -> tuple[str, int, int]:
    """(full text, body end, span end) for the turn starting at `start`: it ends with the first stop token;
    GLM-style formats end a turn with the next role token, so the last turn gets `ctx.final` appended."""
    stop = ctx.stop_re.search(full, start)
    if stop is not None:
        return full, stop.start(), stop.end()
    if not is_last or not ctx.final:
        raise RenderError("mask_mismatch", f"{where}: no end-of-turn token after message {src}")
    return full + ctx.final, len(full), len(full) + len(ctx.final)


def _check_pieces(ctx: _Ctx, full: str, span: tuple[int, int], m: _Msg, where: str) -> None:
    got = full[span[0]:span[1]]
    pieces = _expected_pieces(m.msg)
    stop = next((hit for p in pieces if (hit := ctx.stop_re.search(p))), None)
    if stop is not None:
        raise RenderError("mask_mismatch", f"{where}: message {m.src} contains the end-of-turn token "
                          f"{stop.group(0)!r}: the model would stop there, so no mask is right")
    missing = [p for p in pieces if p not in got]
    if missing:
        raise RenderError("mask_mismatch", f"{where}: message {m.src}: the trained text {got!r} lacks {missing[0]!r} "
                          "(the template drops it)")


def spans_by_header(ctx: _Ctx, msgs: list[_Msg], tools, where: str) -> tuple[str, list[tuple[int, int]]] | None:
    """One render: the k-th assistant turn starts after the k-th occurrence of the template's generation
    header. Used only when the header occurs exactly once per assistant turn, every span closes before the
    next header, and each span holds its message's content; otherwise None (the caller proves by prefixes)."""
    plain = [m.msg for m in msgs]
    full = _render(ctx, plain, tools, False, where, "the whole record")
    header, starts, pos = ctx.header, [], full.find(ctx.header)
    while pos >= 0:
        starts.append(pos + len(header))
        pos = full.find(header, pos + len(header))
    assistants = [j for j, m in enumerate(msgs) if m.msg["role"] == "assistant"]
    if len(starts) != len(assistants):
        return None
    spans = []
    for k, j in enumerate(assistants):
        if not msgs[j].trained or msgs[j].cont:
            continue
        g = _group_end(msgs, j, where)
        nxt = k + 1 + (g - j)  # the header of the next turn that is not part of this generation
        try:
            full, _, end = _close_turn(ctx, full, starts[k], g == len(msgs) - 1, msgs[j].src, where)
            if nxt < len(starts) and end > starts[nxt] - len(header):
                return None
            for m in msgs[j:g + 1]:
                _check_pieces(ctx, full, (starts[k], end), m, where)
        except RenderError:
            return None
        spans.append((starts[k], end))
    return full, spans


def _group_end(msgs: list[_Msg], j: int, where: str) -> int:
    """Index of the last message of the generation that starts at message j (continuations included)."""
    g = j
    while g + 1 < len(msgs) and msgs[g + 1].cont:
        g += 1
        if msgs[g].trained != msgs[j].trained:
            raise RenderError("template_cannot_express", f"{where}: message {msgs[j].src} is one generation with the "
                              "next, but only one of them is trained")
    return g


def spans_by_prefix(ctx: _Ctx, msgs: list[_Msg], tools, where: str) -> tuple[str, list[tuple[int, int]]]:
    """The proof: for each trained message j, `messages[:j]` + generation prompt must be a prefix of the full
    render (or its header found right after where they part, see `_find_header`); the span runs to the first
    stop token; and `messages[:j+1]` rendered alone must give the same text (or end with it)."""
    plain = [m.msg for m in msgs]
    full = _render(ctx, plain, tools, False, where, "the whole record")
    spans: list[tuple[int, int]] = []
    for j, m in enumerate(msgs):
        if not m.trained or m.cont:
            continue
        g = _group_end(msgs, j, where)
        prompt = _render(ctx, plain[:j], tools, True, where, f"the prompt before message {m.src}")
        history = None
        if full.startswith(prompt):
            start = len(prompt)
        else:
            history = _render(ctx, plain[:j], tools, False, where, f"the history before message {m.src}")
            start = _find_header(full, prompt, history)
        if start is None or (spans and start < spans[-1][1]):
            raise RenderError("not_prefix_stable", f"{where}: the generation prompt before message {m.src} is not a "
                              "prefix of the full render, so the trained text cannot be located exactly")
        full, body_end, end = _close_turn(ctx, full, start, g == len(msgs) - 1, m.src, where)
        # The same message rendered as the last turn: its body must equal the one in the full text, or end
        # with it when the template gives only the last turn a preamble (Qwen3's empty <think></think>).
        alone = _render(ctx, plain[:g + 1], tools, False, where, f"message {m.src} as the last turn")
        a_start = len(prompt) if alone.startswith(prompt) else _find_header(alone, prompt, history or "")
        alone_stop = ctx.stop_re.search(alone, a_start or 0)
        got, want = full[start:body_end], alone[a_start or 0:alone_stop.start() if alone_stop else len(alone)]
        if a_start is None or not (got == want or (got and want.endswith(got))):
            why = ("the template does not close this turn with an end-of-turn token" if got.startswith(want)
                   else "the template renders it differently inside the conversation")
            raise RenderError("mask_mismatch", f"{where}: message {m.src}: {why}: {want!r} when last, {got!r} in the "
                              "full text")
        for part in msgs[j:g + 1]:
            _check_pieces(ctx, full, (start, end), part, where)
        spans.append((start, end))
    return full, spans


def _backend(tokenizer, where: str):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TrajtuneError(f"{where}: a fast tokenizer (with offsets) is needed to place the loss mask")
    return backend


def _encode_masked(tokenizer, items: list[tuple[str, list[tuple[int, int]], str]]) -> list[tuple[list[int], list[int]] | RenderError]:
    """Each (text, trained spans, where) -> (ids, mask): the text tokenized once, mask=1 on the tokens of the
    spans; or the RenderError of a token across a span edge.

    Byte-level BPEs (`_byte_level`) are encoded without offsets (`encode_batch_fast`, ~20% faster): each token's
    byte length is known from its id, so the ids alone place every token in the text. Any other tokenizer, or a
    text where the ids do not spell out exactly the text's bytes, takes the offsets path."""
    if not items:
        return []
    backend = _backend(tokenizer, items[0][2])
    byte_level = _byte_level(backend)
    out: list[tuple[list[int], list[int]] | RenderError] = []
    for c in range(0, len(items), ENCODE_CHUNK):
        chunk = items[c:c + ENCODE_CHUNK]
        texts = [text for text, _, _ in chunk]
        if byte_level is not None:
            encs: list = _ids_of_texts(backend, byte_level, texts)
        else:
            encs = backend.encode_batch(texts, add_special_tokens=False)
        for (text, spans, where), enc in zip(chunk, encs):
            try:
                result = _mask_from_bytes(enc, byte_level, text, spans, where) if byte_level is not None else None
                if result is None:
                    if byte_level is not None:  # encoded without offsets: encode this one again with them
                        enc = backend.encode(text, add_special_tokens=False)
                    result = _mask_from_encoding(enc, text, spans, where)
                out.append(result)
            except RenderError as e:
                out.append(e)
    return out


def _ids_of_texts(backend, byte_level: _ByteLevel, texts: list[str]) -> list[list[int]]:
    """The ids of each text (`encode_batch_fast`), with long text segments that repeat across records encoded
    once per process: a system prompt or tool list shared by a whole dataset is most of each record's text.

    Exact because the tokenizer itself first cuts the text at added tokens and encodes each piece on its own:
    cutting the text there too, and joining the pieces' ids, gives the same ids. `_byte_level` allows it only
    where that cut is plain string matching (no added token strips spaces or matches whole words only, and
    special tokens are not encoded as text)."""
    if byte_level.added is None:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    cache, seen = byte_level.cache, byte_level.seen
    pieces: list[str] = []  # to encode in one call
    fresh: dict[str, int] = {}  # segments seen a second time -> their piece, whose ids are then cached
    plans: list[list[int | list[int]]] = []  # per text, in order: a piece to encode (int) or cached ids
    for text in texts:
        plan: list[int | list[int]] = []
        start = at = 0  # start of the text not yet planned; char position of the current part
        for k, part in enumerate(byte_level.added.split(text)):  # segment, added token, segment, ...
            if k % 2 == 0 and len(part) >= MIN_REPEAT_CHARS:
                if part in cache or part in fresh or hash(part) in seen:
                    if start < at:
                        plan.append(len(pieces))
                        pieces.append(text[start:at])
                    if part in cache:
                        plan.append(cache[part])
                    else:
                        if part not in fresh:
                            fresh[part] = len(pieces)
                            pieces.append(part)
                        plan.append(fresh[part])
                    start = at + len(part)
                else:
                    seen.add(hash(part))  # first sight: stays inside its run of text
            at += len(part)
        if start < len(text):
            plan.append(len(pieces))
            pieces.append(text[start:])
        plans.append(plan)
    ids = [e.ids for e in backend.encode_batch_fast(pieces, add_special_tokens=False)]
    for part, k in fresh.items():
        cache[part] = ids[k]
    out = [[i for step in plan for i in (ids[step] if isinstance(step, int) else step)] for plan in plans]
    byte_level.trim()
    return out


@dataclass
class _ByteLevel:
    lengths: Any  # np.ndarray: bytes of text each token id stands for
    nfc: bool  # the tokenizer normalizes to NFC (Qwen): lossless only on text that already is NFC
    added: re.Pattern | None  # splits a text at its added tokens (captured); None: cutting there is not exact
    cache: dict[str, list[int]] = field(default_factory=dict)  # repeated segment -> its ids (`_ids_of_texts`)
    seen: set[int] = field(default_factory=set)  # hashes of long segments seen once

    def trim(self) -> None:
        """Bound the per-process memory of `_ids_of_texts`: start afresh past REPEAT_CACHE_CHARS / SEEN_MAX."""
        if sum(map(len, self.cache)) > REPEAT_CACHE_CHARS:
            self.cache.clear()
        if len(self.seen) > SEEN_MAX:
            self.seen.clear()


def _byte_level(backend) -> _ByteLevel | None:
    """The byte lengths of a byte-level BPE's tokens, or None for any other tokenizer (see `_measure_byte_level`).

    Measured once per tokenizer and per state that changes the answer: a tokenizer that gains tokens, or whose
    special tokens are switched to being encoded as text (`split_special_tokens`), is measured again."""
    return _measure_byte_level(backend, backend.get_vocab_size(with_added_tokens=True), backend.encode_special_tokens)


@lru_cache(maxsize=4)
def _measure_byte_level(backend, vocab_size: int, encode_special_tokens: bool) -> _ByteLevel | None:
    """Byte-level BPE (GPT-2, Llama 3, Qwen, DeepSeek) with no normalizer (or NFC), no prefix space and no byte
    fallback is lossless: the tokens' bytes concatenate to exactly the encoded text, each vocabulary character
    standing for one byte and an added token for its own text. `vocab_size` and `encode_special_tokens` are the
    cache key beside `backend`."""
    import numpy as np
    from tokenizers import models, normalizers, pre_tokenizers

    norm, pre = backend.normalizer, backend.pre_tokenizer
    model = backend.model
    if not (norm is None or type(norm) is normalizers.NFC) or not isinstance(model, models.BPE) or model.byte_fallback \
            or model.continuing_subword_prefix or model.end_of_word_suffix or pre is None:
        return None  # (a subword prefix or word suffix is spelled in the token but is not in the text)
    steps = [pre]
    if type(pre) is pre_tokenizers.Sequence:
        steps = []
        while True:
            try:
                steps.append(pre[len(steps)])
            except IndexError:
                break
    levels = [p for p in steps if type(p) is pre_tokenizers.ByteLevel]
    if len(levels) != 1 or levels[0].add_prefix_space or type(steps[-1]) is not pre_tokenizers.ByteLevel:
        return None
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    vocab, added = backend.get_vocab(with_added_tokens=False), backend.get_added_tokens_decoder()
    lengths = np.zeros(max([*vocab.values(), *added, -1]) + 1, np.int64)  # 0: a token with no byte-level spelling
    for token, i in vocab.items():
        if alphabet.issuperset(token):
            lengths[i] = len(token)
    for i, token in added.items():
        lengths[i] = len(token.content.encode())
    # The tokenizer finds added tokens leftmost-longest, as the alternation below (longest first) does, but in two
    # passes when some are matched on normalized text and some not; then a cut might differ, so none is made.
    exact_cut = not encode_special_tokens and len({t.normalized for t in added.values()}) <= 1 and not any(
        t.lstrip or t.rstrip or t.single_word for t in added.values())
    contents = sorted({t.content for t in added.values()}, key=len, reverse=True)
    pattern = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if exact_cut and contents else None
    return _ByteLevel(lengths, norm is not None, pattern)


def _mask_from_bytes(ids: list[int], byte_level: _ByteLevel, text: str, spans: list[tuple[int, int]],
                     where: str) -> tuple[list[int], list[int]] | None:
    """(ids, mask) of `text` from its ids alone, or None when the ids do not spell exactly the text's bytes (a
    token with no byte-level spelling, an added token that strips spaces, text that NFC would change)."""
    import numpy as np

    raw = None if text.isascii() else text.encode()
    if raw is not None and byte_level.nfc and not unicodedata.is_normalized("NFC", text):
        return None
    lengths = byte_level.lengths[ids]
    ends = np.cumsum(lengths)  # byte offset where each token ends
    if not ids or ends[-1] != (len(text) if raw is None else len(raw)) or not lengths.all():
        return None
    mask = np.zeros(len(ids), np.int8)
    for s, e in spans:
        bs, be = (s, e) if raw is None else (len(text[:s].encode()), len(text[:e].encode()))
        # Tokens holding the span's first and last bytes.
        a, b = int(np.searchsorted(ends, bs, "right")), int(np.searchsorted(ends, be - 1, "right"))
        for k, edge, inside in ((a, s, ends[a] - lengths[a] >= bs), (b, e, ends[b] <= be)):
            if not inside:
                start, end = int(ends[k] - lengths[k]), int(ends[k])
                piece = text[start:end] if raw is None else raw[start:end].decode(errors="replace")
                raise _straddle(where, k, piece, edge)
        mask[a:b + 1] = 1
    return ids, mask.tolist()


def _straddle(where: str, k: int, piece: str, edge: int) -> RenderError:
    return RenderError("token_straddles_boundary", f"{where}: token {k} {piece!r} spans the trained-text edge at "
                       f"char {edge}, so training would see tokens inference never does")


def _mask_from_encoding(enc, text: str, spans: list[tuple[int, int]], where: str) -> tuple[list[int], list[int]]:
    """The ids of `enc` (`text` tokenized once, with offsets) and mask=1 on tokens inside a span; a token across a
    span edge is an error."""
    ids = enc.ids
    mask = [0] * len(ids)
    for s, e in spans:
        # Tokens holding the span's first and last characters (O(log n) lookups, no offsets list built).
        a, b = enc.char_to_token(s), enc.char_to_token(e - 1)
        if a is None or b is None:
            raise RenderError("mask_mismatch", f"{where}: no token covers trained text [{s}, {e})")
        for k, edge, inside in ((a, s, enc.token_to_chars(a)[0] >= s), (b, e, enc.token_to_chars(b)[1] <= e)):
            if not inside:
                ts, te = enc.token_to_chars(k)
                raise _straddle(where, k, text[ts:te], edge)
        mask[a:b + 1] = [1] * (b + 1 - a)
    return ids, mask
