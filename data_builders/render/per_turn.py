"""Per-turn rendering: each trained assistant message becomes its own sample, exact by construction.

Templates that render history differently from a generation (QwQ and the DeepSeek-R1 distills drop `<think>`
from earlier turns and open it in the generation prompt, gpt-oss ends a final answer with `<|return|>` only
when it is last) cannot be masked in one render. Per turn, they need no proof of prefix stability: for trained
message `i`, the sample is

    context = apply_chat_template(messages[:i], add_generation_prompt=True)    (never trained)
    target  = what the model generates for message i, through its stop token   (trained)

which is what the model sees and writes at inference. The target is read off the template's own render of
`messages[:i+1]` (message i last): after the context, or, where the template writes the history differently once
a turn follows it (Hermes' newline after a result, harmony dropping a call's analysis before a final answer),
after the last generation header past the text it shares with the context; where the generation prompt opens a thought (`<think>\\n`)
that the template does not write for a finished message (QwQ, R1 distills), the target is the thought
(`reasoning_content`, or the part of the content before `</think>`, empty if none), `\\n</think>\\n\\n`, then
the answer as the template writes it; where it writes a message that has no reasoning with an empty thought
(`<think></think>ANSWER`, Nemotron 3), the target is that thought's close and the answer, as written
(`</think>ANSWER`). Context and target are tokenized apart (the context exactly as
`apply_chat_template(..., tokenize=True)` gives it), so no token can straddle them.

`render_samples(records, tokenizer, prompt_format, turns)` is the build's entry point: one list of samples per
record (joint: one sample), or the RenderError. `turns="auto"` is joint where the template is prefix-stable
(`template_turns`, decided once per template on the battery), per-turn otherwise, and per-turn for a record the
joint proof rejects as history-dependent (FALLBACK reasons).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ..trajectory import Trajectory
from .encode import encode_masked, ids_by_segments
from .errors import RenderError
from .mask import Rendered, prepare_record, render_batch, render_with_mask
from .options import RenderOptions
from .shape import TemplateMessage
from .spans import RenderContext, check_pieces, close_turn, common_prefix, group_end, render_or_raise
from .stops import kind_of

TURNS = ("auto", "joint", "per-turn")
# Joint-render failures that per-turn rendering can resolve: history rendered unlike a generation, or a token
# across a span edge (per turn, context and target are tokenized apart).
FALLBACK = ("not_prefix_stable", "mask_mismatch", "token_straddles_boundary")

# A thought the generation prompt opens (`<think>\n` after the assistant header), and how it is closed.
_OPEN_THOUGHT = re.compile(r"<(think|thought)>(\n?)$")


def turn_texts(ctx: RenderContext, msgs: list[TemplateMessage], tools, where: str) -> list[tuple[str, str]]:
    """(context, target) of each trained generation of the shaped record (see the module docstring)."""
    plain = [m.msg for m in msgs]
    out = []
    for j, m in enumerate(msgs):
        if not m.trained or m.cont:
            continue
        g = group_end(msgs, j, where)  # a generation may span several messages (GLM: text, then a call)
        prompt = render_or_raise(ctx, plain[:j], tools, True, where, f"the prompt before message {m.src}")
        alone = render_or_raise(ctx, plain[:g + 1], tools, False, where, f"message {m.src} as the last turn")
        history = None
        start = len(prompt) if alone.startswith(prompt) else None
        if start is None:  # history written differently when a turn follows (Hermes, harmony): after the last header
            history = render_or_raise(ctx, plain[:j], tools, False, where, f"the history before message {m.src}")
            header = prompt[len(history):] if prompt.startswith(history) else ""
            at = alone.rfind(header) if header else -1
            # Only a header not wholly inside the text alone shares with the prompt opens this message: one inside it
            # is an earlier turn's (DeepSeek-R1 writes a second call turn without its header).
            start = at + len(header) if at >= 0 and at + len(header) > len(common_prefix(alone, prompt)) else None
        kind = kind_of(msgs[g].calls, True)  # every target is what the model generates as the last message
        if start is not None:
            rendered = alone
            alone, _, end = close_turn(ctx, alone, start, kind, m.src, where)
            target = _with_cut_thought(ctx, plain, j, g, tools, rendered, alone[start:end], where)
        else:
            target = _thought_target(ctx, alone, prompt, history or "", msgs[j:g + 1], kind, where)
        for part in msgs[j:g + 1]:
            check_pieces(ctx, target, (0, len(target)), part, where)
        out.append((prompt, target))
    return out


def _with_cut_thought(ctx: RenderContext, plain: list[dict], j: int, g: int, tools, rendered: str, target: str,
                      where: str) -> str:
    """The target of a template that cuts the thought (`<think>...</think>` opening the content, as --reasoning
    inline writes it) out of every assistant message, the last one too (DeepSeek-R1): the model still generates
    that thought, then what the template writes. Only where the template's render does not depend on the cut
    part (message j rendered without it gives the same text); otherwise `target` as it is (the check declines)."""
    content = plain[j].get("content")
    if not isinstance(content, str) or not content.startswith("<think>") or "</think>" not in content:
        return target
    thought, close, rest = content.partition("</think>")
    if thought.removeprefix("<think>").strip() in target:
        return target  # the template keeps it
    cut = [*plain[:j], {**plain[j], "content": rest}, *plain[j + 1:g + 1]]
    if render_or_raise(ctx, cut, tools, False, where, f"message {j} without its thought") != rendered:
        return target
    return thought + close + target


def _thought_target(ctx: RenderContext, alone: str, prompt: str, history: str, parts: list[TemplateMessage],
                    kind: str, where: str) -> str:
    """The target where the generation prompt opens a thought the template does not write for a finished
    message: the thought, its close tag, then the answer as the template renders it (its leading newlines
    dropped: the close writes them). Anything else cannot be located: RenderError not_prefix_stable."""
    src = parts[0].src
    header = prompt[len(history):] if prompt.startswith(history) else ""
    opened = _OPEN_THOUGHT.search(header)
    base = header[:opened.start()] if opened else ""  # the header without the opened thought
    tail = alone[len(history):]
    if opened is None or not alone.startswith(history) or not tail.startswith(base):
        part = len(common_prefix(alone, prompt))
        raise RenderError("not_prefix_stable", f"{where}: message {src} rendered as the last turn does not start "
                          f"with the generation prompt {header!r}: after the text they share, the template writes "
                          f"{alone[part:part + 40]!r} where the prompt writes {prompt[part:part + 40]!r}, so what the "
                          "model generates after that prompt is not in its render; no per-turn sample either. Pass a "
                          "template that writes the turn's header (--template FILE.jinja), or --prompt-format "
                          "tool-prompt")
    tag = opened.group(1)
    close = f"</{tag}>"
    at = len(history) + len(base)
    alone, _, end = close_turn(ctx, alone, at, kind, src, where)
    answer = alone[at:end].lstrip("\n")
    thought = _thought_of(parts[0].msg, tag)
    empty = f"<{tag}>{close}"
    if not thought and answer.startswith(empty) and close not in answer[len(empty):]:
        # The template writes this message with an empty thought (Nemotron 3: `<think></think>ANSWER`): after the
        # prompt's opened thought the model writes just its close, then the answer, all as the template writes them.
        return answer[len(f"<{tag}>"):]
    if close in answer:
        raise RenderError("mask_mismatch", f"{where}: message {src}: the template writes {close} after the "
                          f"generation prompt opened <{tag}>: the model's thought cannot be told apart")
    if close in thought:
        raise RenderError("mask_mismatch", f"{where}: message {src}: its reasoning contains {close}, where the "
                          "model would end its thought")
    return f"{thought}\n{close}\n\n{answer}" if opened.group(2) else f"{thought}{close}{answer}"


def _thought_of(msg: dict, tag: str) -> str:
    """The message's reasoning: `reasoning_content`, else the content before `</think>` (without `<think>`)."""
    if isinstance(msg.get("reasoning_content"), str) and msg["reasoning_content"].strip():
        return msg["reasoning_content"].strip("\n")
    content = msg.get("content")
    if isinstance(content, str) and f"</{tag}>" in content:
        return content.split(f"</{tag}>", 1)[0].replace(f"<{tag}>", "").strip("\n")
    return ""


# ---------------------------------------------------------------------------------------------------------
# Samples: texts -> ids and masks


def render_turns(record: Trajectory, tokenizer, prompt_format: str | None = None,
                 options: RenderOptions | None = None) -> list[Rendered]:
    """One Rendered per trained generation of `record`: text = context + target, the target's tokens trained.
    Raises RenderError as `render_with_mask` does. Example: a 2-turn chat gives 2 samples, the second's context
    holding the first turn as history."""
    result = _encode_records([_texts_of(record, tokenizer, prompt_format, options)], tokenizer)[0]
    if isinstance(result, RenderError):
        raise result
    return result


def _texts_of(record: Trajectory, tokenizer, prompt_format: str | None,
              options: RenderOptions | None = None) -> tuple[list[tuple[str, str]], str] | RenderError:
    try:
        ctx, msgs, tools, where = prepare_record(record, tokenizer, prompt_format, options)
        return turn_texts(ctx, msgs, tools, where), where
    except RenderError as e:
        return e


def _encode_records(texts: list, tokenizer) -> list[list[Rendered] | RenderError]:
    """Each record's (context, target) pairs tokenized, context and target apart. Contexts repeat the earlier
    turns, so where the tokenizer allows it each piece between added tokens is encoded once (`ids_by_segments`,
    the same ids as encoding each context whole); targets are encoded whole, with their mask."""
    pairs = [p for t in texts if not isinstance(t, RenderError) for p in t[0]]
    wheres = [t[1] for t in texts if not isinstance(t, RenderError) for _ in t[0]]
    contexts = ids_by_segments(tokenizer, [c for c, _ in pairs]) if pairs else []
    items = [(target, [(0, len(target))], where) for (_, target), where in zip(pairs, wheres)]
    if contexts is None:  # encoded whole, every one
        items += [(context, [], where) for (context, _), where in zip(pairs, wheres)]
    encoded = encode_masked(tokenizer, items)
    if contexts is None:
        contexts = [c if isinstance(c, RenderError) else c[0] for c in encoded[len(pairs):]]
    at = iter(zip(pairs, contexts, encoded))
    out: list[list[Rendered] | RenderError] = []
    for t in texts:
        if isinstance(t, RenderError):
            out.append(t)
            continue
        samples: list[Rendered] | RenderError = []
        for (context, target), c, g in (next(at) for _ in t[0]):
            if isinstance(samples, RenderError):
                continue
            if isinstance(c, RenderError) or isinstance(g, RenderError):  # cannot happen with these spans; kept exact
                samples = c if isinstance(c, RenderError) else g
                continue
            samples.append(Rendered(context + target, c + g[0], [0] * len(c) + g[1],
                                    [(len(context), len(context) + len(target))]))
        out.append(samples)
    return out


# ---------------------------------------------------------------------------------------------------------
# Joint or per-turn


@dataclass
class RecordSamples:
    """A record's training samples: its one joint render, or one per trained generation (`per_turn`)."""

    samples: list[Rendered]
    per_turn: bool


def render_samples(records: list[Trajectory], tokenizer, prompt_format: str | None = None,
                   turns: str = "auto", options: RenderOptions | None = None) -> list[RecordSamples | RenderError]:
    """Each record's training samples, or the RenderError that declines it. `turns`: "joint", "per-turn" or
    "auto" (see the module docstring); under auto, a record declined both ways reports the per-turn error."""
    if turns not in TURNS:
        raise ValueError(f"turns must be one of {TURNS}, got {turns!r}")
    if turns == "auto":
        turns = template_turns(tokenizer, prompt_format, options)
        if turns == "joint":
            out = render_samples(records, tokenizer, prompt_format, "joint", options)
            redo = [i for i, r in enumerate(out) if isinstance(r, RenderError) and r.reason in FALLBACK]
            for i, samples in zip(redo, render_samples([records[i] for i in redo], tokenizer, prompt_format, "per-turn",
                                                           options)):
                out[i] = samples
            return out
    if turns == "joint":
        return [r if isinstance(r, RenderError) else RecordSamples([r], False)
                for r in render_batch(records, tokenizer, prompt_format, options)]
    return [r if isinstance(r, RenderError) else RecordSamples(r, True)
            for r in _encode_records([_texts_of(r, tokenizer, prompt_format, options) for r in records], tokenizer)]


def template_turns(tokenizer, prompt_format: str | None = None, options: RenderOptions | None = None) -> str:
    """"joint" if the template is prefix-stable, else "per-turn": per-turn where some battery case (check.py)
    renders per turn but fails the joint proof. Decided once per template, special tokens and prompt format."""
    from .profile import special_kwargs

    return _template_turns(tokenizer.chat_template, tuple(sorted(special_kwargs(tokenizer).items())),
                           tokenizer.eos_token or "", prompt_format, options or RenderOptions(), tokenizer)


@lru_cache(maxsize=16)
def _template_turns(template, special_items: tuple, eos: str, prompt_format: str | None, options: RenderOptions,
                    tokenizer) -> str:
    import copy

    from ..trajectory import validate_record
    from .check import BATTERY

    for record in BATTERY.values():
        if any(m.get("reasoning_content") for m in record["messages"]):
            continue  # templates that strip history thoughts (Qwen3) fail only such records: those fall back one by one
        record = validate_record(copy.deepcopy(record))
        try:
            render_turns(record, tokenizer, prompt_format, options)
        except RenderError:
            continue
        try:
            render_with_mask(record, tokenizer, prompt_format, exhaustive=True, options=options)
        except RenderError as e:
            if e.reason in FALLBACK:
                return "per-turn"
    return "joint"
