"""Where each trained assistant message lies in the rendered text: the prefix proof and the one-render header path.

The proof (`spans_by_prefix`, always used with `exhaustive=True`): for every trained message `i`,
`messages[:i]` rendered with `add_generation_prompt=True` must be a prefix of the full render (or, where a
template writes history slightly differently, its generation header must be found right where the two
part); the span starts there and ends with the stop token of its kind (stops.py); `messages[:i+1]` rendered alone
must give exactly that text (or end with it, when only the last turn gets a preamble such as Qwen3's empty
`<think></think>`); and the span must hold the message's content and every call's name. Anything else
raises RenderError naming template and message: never a silent wrong mask, never an all-zero mask.
The default path (`spans_by_header`) needs one render: the k-th assistant turn starts after the k-th
occurrence of the template's generation header. It is used only for templates where it agrees with the
proof on the whole battery (check.py), and only when the header count, span ends and content all check out
on the record; otherwise the proof runs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import RenderError
from .profile import (
    TemplateProfile,
    parts,
    profile_template,
    render_shaped,
    render_text,
    special_kwargs,
    try_render,
)
from .shape import TemplateMessage
from .stops import KINDS, StopTokens, added_tokens, kind_of, stop_tokens_of


def find_header(full: str, prompt: str, history: str) -> int | None:
    """Where message j's text starts in `full` when the prompt is not a prefix of it (Hermes-2-Pro writes a
    tool result's closing newline only when another message follows). The generation header is what the
    prompt adds to the history; it is searched from where prompt and full text part. The span found is then
    verified like any other (its text must be the message's own), so a wrong find is an error, not a mask."""
    if not prompt.startswith(history) or len(prompt) == len(history):
        return None
    header = prompt[len(history):]
    common = len(common_prefix(full, prompt))
    pos = full.find(header, max(0, common - len(header)))
    return None if pos < 0 else pos + len(header)


def common_prefix(a: str, b: str) -> str:
    """The longest text both `a` and `b` start with."""
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
    for field in ("reasoning_content", "thinking", "reasoning"):  # wherever the template reads it (profile.py)
        if isinstance(msg.get(field), str):
            pieces.append(msg[field].strip())
    pieces += [c["function"]["name"] for c in msg.get("tool_calls") or []]
    if msg.get("metadata"):
        pieces.append(msg["metadata"])
    return [p for p in pieces if p]


@dataclass(frozen=True)
class RenderContext:
    template: str
    special: dict
    profile: TemplateProfile
    stops: StopTokens  # the stop token per kind of message (stops.py)
    stop_re: re.Pattern | None  # any of them: a message containing one cannot be trained (the model stops there)
    added: tuple[str, ...]  # the tokenizer's added tokens (the only text a stop token can be)
    header: str  # what add_generation_prompt adds ("" if nothing)
    fast: bool


_LAST_CTX: list = [None, None, None, None]  # (tokenizer, template, kwargs, ctx): the build renders millions with one


def render_context(template: str, tokenizer, template_kwargs: tuple = ()) -> RenderContext:
    """The measured facts of `template` with `tokenizer` (profile, stop tokens, header, fast path), cached.
    `template_kwargs` (sorted pairs, options.py) are passed to the template beside bos/eos, as
    apply_chat_template passes chat_template_kwargs."""
    if _LAST_CTX[0] is tokenizer and _LAST_CTX[1] is template and _LAST_CTX[2] == template_kwargs:
        return _LAST_CTX[3]
    special = {**special_kwargs(tokenizer), **dict(template_kwargs)}
    ctx = _context_cached(template, tuple(sorted(special.items())), added_tokens(tokenizer))
    _LAST_CTX[:] = [tokenizer, template, template_kwargs, ctx]
    return ctx


@lru_cache(maxsize=64)
def _context_cached(template: str, special_items: tuple, added: tuple[str, ...]) -> RenderContext:
    special = dict(special_items)
    stops = stop_tokens_of(template, special_items, added)
    tokens = sorted(stops.tokens(), key=len, reverse=True)
    stop_re = re.compile("|".join(map(re.escape, tokens))) if tokens else None
    prof = profile_template(template, special_items)
    probe = [{"role": "user", "content": parts("probe_user") if "user" in prof.content_parts else "probe_user"}]
    no_tools = [] if prof.needs_tool_list else None
    plain = try_render(template, special, probe, no_tools)
    try:
        with_gen = render_text(template, probe, no_tools, True, special)
    except Exception:  # a template that cannot even render a user turn: no fast path, prefix proof reports it
        with_gen = None
    header = with_gen[len(plain):] if plain is not None and with_gen and with_gen.startswith(plain) else ""
    ctx = RenderContext(template, special, profile_template(template, special_items), stops, stop_re, added, header,
                        False)
    if header:
        from .check import fast_path_ok

        ctx = dataclasses.replace(ctx, fast=fast_path_ok(ctx))
    return ctx


def render_or_raise(ctx: RenderContext, plain: list[dict], tools, gen: bool, where: str, what: str) -> str:
    try:
        return render_shaped(ctx.template, ctx.profile, ctx.special, plain, tools, gen)
    except Exception as e:  # jinja's raise_exception, or a TypeError on a value the template cannot take
        raise RenderError("template_error", f"{where}: rendering {what}: {type(e).__name__}: {e}") from None


def close_turn(ctx: RenderContext, full: str, start: int, kind: str, src: int, where: str) -> tuple[str, int, int]:
    """(full text, body end, span end) for the turn of kind `kind` (stops.KINDS) starting at `start`: it ends
    with that kind's stop token. Where the template leaves the last turn open (GLM), the stop it writes when
    another turn follows is appended (`StopTokens.open_last`); nothing else is ever appended."""
    stop = ctx.stops.of(kind)
    if stop is None and kind not in ctx.stops.tails:
        raise RenderError("mask_mismatch", f"{where}: message {src} is {KINDS[kind]}, and the template drops the text of "
                          "such a message (a probe render does not show it)")
    if stop is None:
        from ..tokenizer import special_tokens_of

        tail = ctx.stops.tails.get(kind, "")
        unknown = [t for t in special_tokens_of(tail) if t not in ctx.added]
        fix = (f"{unknown[0]!r} there is no token of this tokenizer: add it as a special token" if unknown else
               _CALL_FIX if kind in ("call", "call_last") else
               "check the template (trajtune render --check-template T.jinja) or use one that closes its turns")
        raise RenderError("no_stop_token", f"{where}: message {src} is {KINDS[kind]}, and the template writes no "
                          f"end-of-turn token after such a message (it writes {tail[:60]!r}), so where generation "
                          f"stops cannot be trained; {fix}")
    pos = full.find(stop, start)
    if pos >= 0:
        return full, pos, pos + len(stop)
    if kind in ctx.stops.open_last:
        return full + stop, len(full), len(full) + len(stop)
    if kind in ctx.stops.multi_call_only:
        raise unclosed_call(ctx, kind, full[start:], src, where)
    raise RenderError("mask_mismatch", f"{where}: no end-of-turn token {stop!r} after message {src}")


def unclosed_call(ctx: RenderContext, kind: str, turn: str, src: int, where: str) -> RenderError:
    """The decline of message `src`, a call turn of `kind` (in `StopTokens.multi_call_only`) that the template wrote
    as `turn` with no stop: it closes such a turn only after a second call (DeepSeek-V3)."""
    return RenderError("no_stop_token", f"{where}: message {src} is {KINDS[kind]}, and the template closes such a turn "
                       f"({ctx.stops.of(kind)!r}) only after a second call (it writes the close inside its loop over "
                       f"the calls), so a turn with one call ends {turn[-40:]!r} and where generation stops cannot be "
                       f"trained; {_CALL_FIX}")


# What a user can do about a call turn the template does not close: nothing the template did not write is appended.
_CALL_FIX = ("pass a template that closes its call turns (--template FILE.jinja), or --prompt-format tool-prompt, which "
             "writes calls as ```json``` text in turns the template closes (a call syntax of its own, not the model's)")


def _kind(msgs: list[TemplateMessage], g: int) -> str:
    """The kind of the generation that ends with message g (stops.KINDS)."""
    return kind_of(msgs[g].calls, g == len(msgs) - 1)


def check_pieces(ctx: RenderContext, full: str, span: tuple[int, int], m: TemplateMessage, where: str) -> None:
    got = full[span[0]:span[1]]
    pieces = _expected_pieces(m.msg)
    stop = next((hit for p in pieces if ctx.stop_re and (hit := ctx.stop_re.search(p))), None)
    if stop is not None:
        raise RenderError("mask_mismatch", f"{where}: message {m.src} contains the end-of-turn token "
                          f"{stop.group(0)!r}: the model would stop there, so no mask is right")
    missing = [p for p in pieces if p not in got]
    if missing:
        reasoning = [m.msg.get(f) for f in ("reasoning_content", "thinking", "reasoning")]
        hint = (": the template shows reasoning only on the last turn; pass --reasoning drop to train this record "
                "without it" if any(isinstance(r, str) and r.strip() == missing[0] for r in reasoning) else
                ": the template does not show text next to a tool call; pass --call-content drop to train the call alone"
                if m.msg.get("tool_calls") and missing[0] in str(m.msg.get("content")) else "")
        raise RenderError("mask_mismatch", f"{where}: message {m.src}: the trained text {got!r} lacks {missing[0]!r} "
                          f"(the template drops it){hint}")


def spans_by_header(ctx: RenderContext, msgs: list[TemplateMessage], tools, where: str) -> tuple[str, list[tuple[int, int]]] | None:
    """One render: the k-th assistant turn starts after the k-th occurrence of the template's generation
    header. Used only when the header occurs exactly once per assistant turn, every span closes before the
    next header, and each span holds its message's content; otherwise None (the caller proves by prefixes)."""
    plain = [m.msg for m in msgs]
    full = render_or_raise(ctx, plain, tools, False, where, "the whole record")
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
        g = group_end(msgs, j, where)
        nxt = k + 1 + (g - j)  # the header of the next turn that is not part of this generation
        try:
            full, _, end = close_turn(ctx, full, starts[k], _kind(msgs, g), msgs[j].src, where)
            if nxt < len(starts) and end > starts[nxt] - len(header):
                return None
            for m in msgs[j:g + 1]:
                check_pieces(ctx, full, (starts[k], end), m, where)
        except RenderError:
            return None
        spans.append((starts[k], end))
    return full, spans


def group_end(msgs: list[TemplateMessage], j: int, where: str) -> int:
    """Index of the last message of the generation that starts at message j (continuations included)."""
    g = j
    while g + 1 < len(msgs) and msgs[g + 1].cont:
        g += 1
        if msgs[g].trained != msgs[j].trained:
            raise RenderError("template_cannot_express", f"{where}: message {msgs[j].src} is one generation with the "
                              "next, but only one of them is trained")
    return g


def spans_by_prefix(ctx: RenderContext, msgs: list[TemplateMessage], tools, where: str) -> tuple[str, list[tuple[int, int]]]:
    """The proof: for each trained message j, `messages[:j]` + generation prompt must be a prefix of the full
    render (or its header found right after where they part, see `find_header`); the span runs to the first
    stop token; and `messages[:j+1]` rendered alone must give the same text (or end with it)."""
    plain = [m.msg for m in msgs]
    full = render_or_raise(ctx, plain, tools, False, where, "the whole record")
    spans: list[tuple[int, int]] = []
    for j, m in enumerate(msgs):
        if not m.trained or m.cont:
            continue
        g = group_end(msgs, j, where)
        prompt = render_or_raise(ctx, plain[:j], tools, True, where, f"the prompt before message {m.src}")
        history = None
        if full.startswith(prompt):
            start = len(prompt)
        else:
            history = render_or_raise(ctx, plain[:j], tools, False, where, f"the history before message {m.src}")
            start = find_header(full, prompt, history)
        if start is None or (spans and start < spans[-1][1]):
            raise RenderError("not_prefix_stable", f"{where}: the generation prompt before message {m.src} is not a "
                              "prefix of the full render, so the trained text cannot be located exactly")
        full, body_end, end = close_turn(ctx, full, start, _kind(msgs, g), m.src, where)
        # The same message rendered as the last turn: its body must equal the one in the full text, or end
        # with it when the template gives only the last turn a preamble (Qwen3's empty <think></think>).
        alone = render_or_raise(ctx, plain[:g + 1], tools, False, where, f"message {m.src} as the last turn")
        a_start = len(prompt) if alone.startswith(prompt) else find_header(alone, prompt, history or "")
        last_kind = kind_of(msgs[g].calls, True)
        last_stop = ctx.stops.of(last_kind)
        alone_stop = alone.find(last_stop, a_start or 0) if last_stop else -1
        if alone_stop < 0 and a_start is not None and last_kind in ctx.stops.multi_call_only:
            # The stop close_turn found in `full` is a later turn's: this one is never closed.
            raise unclosed_call(ctx, _kind(msgs, g), alone[a_start:], m.src, where)
        got, want = full[start:body_end], alone[a_start or 0:alone_stop if alone_stop >= 0 else len(alone)]
        if a_start is None or not (got == want or (got and want.endswith(got))):
            why = ("the template does not close this turn with an end-of-turn token" if got.startswith(want)
                   else "the template renders it differently inside the conversation")
            raise RenderError("mask_mismatch", f"{where}: message {m.src}: {why}: {want!r} when last, {got!r} in the "
                              "full text")
        for part in msgs[j:g + 1]:
            check_pieces(ctx, full, (start, end), part, where)
        spans.append((start, end))
    return full, spans
