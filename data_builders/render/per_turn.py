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

That is two renders per turn, of ever longer prefixes: O(turns^2) template work a record. Where the template is
prefix-stable and writes a turn alike last and in history (Qwen2.5 forced per turn), the same texts are cut out of
one render of the whole record (`cut_texts`): allowed only for templates on which it gives exactly `turn_texts`'
texts on the whole battery (`check.turn_cut_ok`, decided once per template), and per record only when the checks
of the one-render header path pass (else the record is rendered per turn). Its contexts and targets, all slices
of that one render, are tokenized from one encoding of it (`encode.ids_of_slices`), cut only where the tokenizer
itself cuts (at added tokens): the same ids as encoding each apart.

`render_samples(records, tokenizer, prompt_format, turns)` is the build's entry point: one list of samples per
record (joint: one sample), or the RenderError. `turns="auto"` is joint where the template is prefix-stable
(`template_turns`, decided once per template on the battery), per-turn otherwise, and per-turn for a record the
joint proof rejects as history-dependent (FALLBACK reasons).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..trajectory import Trajectory
from .encode import encode_masked, ids_by_segments, ids_of_slices
from .errors import RenderError
from .mask import Rendered, prepare_record, render_batch, render_with_mask
from .options import RenderOptions
from .shape import TemplateMessage
from .spans import RenderContext, check_pieces, close_turn, common_prefix, group_end, render_or_raise, spans_by_header
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


def cut_texts(ctx: RenderContext, msgs: list[TemplateMessage], tools, where: str) -> tuple[list[tuple[str, str]], str] | None:
    """`turn_texts` cut out of one render: ((context, target) of each trained generation, the render `full`), where
    each context is `full` up to its turn's generation header and each target the turn's span there; or None on any
    doubt (the caller renders per turn). Only for templates that pass `check.turn_cut_ok`: on those the generation
    prompt is the render up to the turn's header and a turn is written alike last and in history, which one render
    cannot show. Per record: the header path's checks (`spans_by_header`: one header per assistant turn, each span
    closed before the next header and holding its message's text), and each turn's stop token the one it ends with
    as the last message (what the model generates)."""
    if not ctx.header:
        return None
    try:
        found = spans_by_header(ctx, msgs, tools, where)
    except RenderError:  # a template that cannot render the whole record may still render each turn's prefixes
        return None
    if found is None:
        return None
    full, spans = found
    for j, m in enumerate(msgs):
        if m.trained and not m.cont:
            g = group_end(msgs, j, where)  # (spans_by_header has checked the group)
            calls = msgs[g].calls
            if ctx.stops.of(kind_of(calls, g == len(msgs) - 1)) != ctx.stops.of(kind_of(calls, True)):
                return None  # e.g. a call ends with <|eom_id|> before its result, with another token when last
    return [(full[:s], full[s:e]) for s, e in spans], full


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
                 options: RenderOptions | None = None, exact: bool = False) -> list[Rendered]:
    """One Rendered per trained generation of `record`: text = context + target, the target's tokens trained.
    Raises RenderError as `render_with_mask` does. `exact`: every turn rendered apart (`turn_texts`), never cut
    out of one render; the samples are the same either way. Example: a 2-turn chat gives 2 samples, the second's
    context holding the first turn as history."""
    result = _encode_records([_texts_of(record, tokenizer, prompt_format, options, exact)], tokenizer)[0]
    if isinstance(result, RenderError):
        raise result
    return result.rendered()


@dataclass
class TurnTexts:
    """A record's per-turn texts: (context, target) per trained generation, the name errors give the template, and
    `full`, the one render every context is a prefix of (`cut_texts`), or None where each turn was rendered apart."""

    pairs: list[tuple[str, str]]
    where: str
    full: str | None = None


def turn_texts_of(record: Trajectory, tokenizer, prompt_format: str | None = None,
                  options: RenderOptions | None = None, exact: bool = False) -> TurnTexts:
    """The record's per-turn texts: cut out of one render where the template allows it (`cut_texts`) and the record
    passes its checks, else rendered per turn (`turn_texts`; always so with `exact`). Raises RenderError."""
    from .check import turn_cut_ok

    ctx, msgs, tools, where = prepare_record(record, tokenizer, prompt_format, options)
    cut = None if exact or not turn_cut_ok(ctx) else cut_texts(ctx, msgs, tools, where)
    if cut is not None:
        return TurnTexts(cut[0], where, cut[1])
    return TurnTexts(turn_texts(ctx, msgs, tools, where), where)


def _texts_of(record: Trajectory, tokenizer, prompt_format: str | None,
              options: RenderOptions | None = None, exact: bool = False) -> TurnTexts | RenderError:
    try:
        return turn_texts_of(record, tokenizer, prompt_format, options, exact)
    except RenderError as e:
        return e


def _encode_records(texts: list[TurnTexts | RenderError], tokenizer) -> list[TurnSamples | RenderError]:
    """Each record's (context, target) pairs tokenized, context and target apart, exactly as each text encoded on
    its own: a record cut out of one render from one encoding of it (`_cut_ids`); other contexts with each piece
    between added tokens encoded once (`ids_by_segments`: they repeat the earlier turns), other targets whole with
    their mask (`encode_masked`)."""
    ok = [t for t in texts if not isinstance(t, RenderError)]
    pairs = [p for t in ok for p in t.pairs]
    wheres = [t.where for t in ok for _ in t.pairs]
    contexts, targets = _cut_ids(tokenizer, ok)
    left = [i for i, c in enumerate(contexts) if c is None]
    by_segments = ids_by_segments(tokenizer, [pairs[i][0] for i in left]) if left else []
    if by_segments is not None:
        for i, ids in zip(left, by_segments):
            contexts[i] = [ids]
        left = []  # (else the tokenizer cannot be cut at added tokens: these contexts are encoded whole)
    whole = [i for i, g in enumerate(targets) if g is None]
    encoded = encode_masked(tokenizer, [(pairs[i][1], [(0, len(pairs[i][1]))], wheres[i]) for i in whole]
                            + [(pairs[i][0], [], wheres[i]) for i in left])
    for i, g in zip(whole, encoded):
        targets[i] = g
    for i, c in zip(left, encoded[len(whole):]):
        contexts[i] = c if isinstance(c, RenderError) else [c[0]]
    at = iter(zip(contexts, targets))
    out: list[TurnSamples | RenderError] = []
    for t in texts:
        if isinstance(t, RenderError):
            out.append(t)
            continue
        got = [next(at) for _ in t.pairs]
        error = next((x for c, g in got for x in (c, g) if isinstance(x, RenderError)), None)
        out.append(error or _turn_samples(t.pairs, got))  # (an error cannot happen with these spans; kept exact)
    return out


def _cut_ids(tokenizer, texts: list[TurnTexts]) -> tuple[list, list]:
    """(contexts, targets), one per pair of `texts`: for a record cut out of one render, its contexts' ids as pieces
    to join and its targets' (ids, mask), from one encoding of that render (`ids_of_slices`); None for the others,
    for a target whose ids do not spell its bytes (`encode_masked` places its mask), and where the tokenizer does
    not allow cutting at added tokens."""
    n = sum(len(t.pairs) for t in texts)
    contexts: list = [None] * n
    targets: list = [None] * n
    cut = [t for t in texts if t.full is not None]
    spans = [[span for c, g in t.pairs for span in ((0, len(c)), (len(c), len(c) + len(g)))] for t in cut]
    sliced = iter((ids_of_slices(tokenizer, [t.full for t in cut], spans) if cut else None) or [])
    at = 0
    for t in texts:
        got = next(sliced, None) if t.full is not None else None
        if got is not None:
            for k in range(len(t.pairs)):  # a slice: a piece encoded on its own, a view of the render's ids, a piece
                (head, (a, b), tail, _), (t_head, (ta, tb), t_tail, spelled) = got.slices[2 * k:2 * k + 2]
                contexts[at + k] = [head, got.ids[a:b], tail]
                if spelled:  # then encode_masked trains every token
                    target_ids = np.concatenate([np.array(t_head, np.int32), got.ids[ta:tb], np.array(t_tail, np.int32)])
                    targets[at + k] = (target_ids, np.ones(len(target_ids), np.int8))
        at += len(t.pairs)
    return contexts, targets


def _turn_samples(pairs: list[tuple[str, str]], got: list[tuple[list, tuple[list[int], list[int]]]]) -> TurnSamples:
    """The samples back to back: each its context's pieces joined, then its target's ids, trained by its mask."""
    pieces: list = []
    lens, trained, at = [], [], 0  # each sample's length; each target's (start, mask); tokens so far
    for context, (ids, mask) in got:
        n = sum(map(len, context))
        pieces += [p if isinstance(p, np.ndarray) else np.array(p, np.int32) for p in (*context, ids) if len(p)]
        trained.append((at + n, mask))
        lens.append(n + len(ids))
        at += lens[-1]
    all_ids = np.concatenate(pieces)
    all_mask = np.zeros(at, np.int8)
    for start, mask in trained:
        all_mask[start:start + len(mask)] = mask
    return TurnSamples(pairs, all_ids, all_mask, lens)


# ---------------------------------------------------------------------------------------------------------
# Joint or per-turn


@dataclass
class TurnSamples:
    """A record's samples, one per trained generation, back to back (what the build stores, samples.py): sample k
    is `lens[k]` tokens of `ids` with their `mask` (1 on its target), after those of the samples before it; its
    text is `pairs[k]`, context then target."""

    pairs: list[tuple[str, str]]
    ids: np.ndarray  # int32
    mask: np.ndarray  # int8
    lens: list[int]

    def rendered(self) -> list[Rendered]:
        """The samples as `Rendered`s: text = context + target, the target's characters the trained span."""
        out, at = [], 0
        for (context, target), n in zip(self.pairs, self.lens):
            out.append(Rendered(context + target, self.ids[at:at + n].tolist(), self.mask[at:at + n].tolist(),
                                [(len(context), len(context) + len(target))]))
            at += n
        return out


@dataclass
class RecordSamples:
    """A record's training samples: its one joint render (`joint`), or one per trained generation (`turns`)."""

    joint: Rendered | None = None
    turns: TurnSamples | None = None

    @property
    def per_turn(self) -> bool:
        return self.turns is not None

    @property
    def samples(self) -> list[Rendered]:
        return self.turns.rendered() if self.turns is not None else [self.joint]


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
        return [r if isinstance(r, RenderError) else RecordSamples(joint=r)
                for r in render_batch(records, tokenizer, prompt_format, options)]
    return [r if isinstance(r, RenderError) else RecordSamples(turns=r)
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
