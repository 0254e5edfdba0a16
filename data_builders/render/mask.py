"""`render_with_mask` and `render_batch`: a canonical record -> text, ids, 0/1 loss mask and trained character spans.

Trained = exactly what the model generates at inference (DESIGN.md): for each trained assistant message, the
text after the generation prompt through the end-of-turn token. The steps: a prompt format if asked
(prompt_formats.py), the record shaped the way the template wants it (shape.py, from the profile measured by
profile.py), the trained spans located and proven (spans.py), the text tokenized once and masked (encode.py).
Anything the template cannot express or mask exactly is a RenderError, never a silent wrong mask.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TrajtuneError
from ..trajectory import Trajectory
from .encode import encode_masked
from .errors import RenderError
from .options import RenderOptions
from .profile import template_name
from .prompt_formats import resolve_prompt_format
from .shape import TemplateMessage, template_messages
from .spans import RenderContext, render_context, spans_by_header, spans_by_prefix


@dataclass
class Rendered:
    text: str  # the full rendered conversation
    input_ids: list[int]
    loss_mask: list[int]  # 1 = trained token, same length as input_ids
    trained_spans: list[tuple[int, int]]  # character offsets into text, [start, end)


def render_with_mask(record: Trajectory, tokenizer, prompt_format: str | None = None,
                     exhaustive: bool = False, options: RenderOptions | None = None) -> Rendered:
    """Render `record` (canonical, validated) with `tokenizer`'s chat template and mask what is trained.

    Returns the text, ids, a mask (1 = trained token) and the trained character spans. Raises RenderError
    (with `.reason`) when the template cannot express the record or the mask cannot be proven exact.
    With `exhaustive=True` every trained message is located by prefix rendering (2 extra renders each);
    otherwise templates that pass `fast_path_ok` use one render and their own generation header (see
    `spans_by_header`), falling back to prefix rendering on any doubt. `prompt_format` "auto": the template's
    own tools where it has them, else tool-prompt (`resolve_prompt_format`); `options`: options.py.
    Example: `render_with_mask(rec, byte_level_tokenizer(qwen_template)).trained_spans` -> [(412, 440)].
    """
    full, spans, where = _render_spans(record, tokenizer, prompt_format, exhaustive, options)
    result = encode_masked(tokenizer, [(full, spans, where)])[0]
    if isinstance(result, RenderError):
        raise result
    return Rendered(full, *result, spans)


def render_batch(records: list[Trajectory], tokenizer, prompt_format: str | None = None,
                 options: RenderOptions | None = None) -> list[Rendered | RenderError]:
    """`render_with_mask` of each record, with the texts tokenized ENCODE_CHUNK per call (the build's path:
    tokenizing is most of a record's cost, and one call per chunk saves the per-call overhead).

    Item i is exactly `render_with_mask(records[i], ...)`'s result, or the RenderError it raises; any other
    error (no chat template, a slow tokenizer) is raised, as it is no record's fault.
    """
    out: list[Rendered | RenderError | None] = []
    todo: list[tuple[int, str, list[tuple[int, int]], str]] = []  # (index in out, text, spans, where)
    for record in records:
        try:
            full, spans, where = _render_spans(record, tokenizer, prompt_format, False, options)
        except RenderError as e:
            out.append(e)
            continue
        todo.append((len(out), full, spans, where))
        out.append(None)
    for (i, full, spans, _), result in zip(todo, encode_masked(tokenizer, [t[1:] for t in todo])):
        out[i] = result if isinstance(result, RenderError) else Rendered(full, *result, spans)
    return out  # type: ignore[return-value]  (every None was replaced)


def prepare_record(record: Trajectory, tokenizer, prompt_format: str | None = None,
                   options: RenderOptions | None = None) -> tuple[RenderContext, list[TemplateMessage], list | None, str]:
    """The record as the template wants it: (render context, shaped messages, the `tools=` to pass, the name errors
    give the template). Shared by the joint render here and per_turn.py. Raises RenderError when the template
    cannot express the record or nothing in it is trained."""
    options = options or RenderOptions()
    template = tokenizer.chat_template
    where = template_name(tokenizer)
    prompt_format = resolve_prompt_format(tokenizer, prompt_format, options)
    if prompt_format is not None:
        from .prompt_formats import apply_prompt_format

        record, override = apply_prompt_format(record, prompt_format)
        if override is not None:
            template, where = override, f"{where} (prompt format {prompt_format})"
    if not isinstance(template, str) or not template:
        raise TrajtuneError(f"{where} has no chat template; pass --template FILE.jinja")
    ctx = render_context(template, tokenizer, options.template_kwargs)
    msgs, tools = template_messages(record, template, ctx.profile, where, options)
    if not any(m.trained for m in msgs):
        raise RenderError("nothing_trained", f"{where}: record {record.get('id', '?')} has no trained message")
    for m in msgs:
        if m.trained and m.msg["role"] != "assistant":
            raise RenderError("template_cannot_express", f"{where}: message {m.src} ({m.msg['role']}) has loss=true; "
                              "only assistant messages can be trained")
    return ctx, msgs, tools, where


def _render_spans(record: Trajectory, tokenizer, prompt_format: str | None = None, exhaustive: bool = False,
                  options: RenderOptions | None = None) -> tuple[str, list[tuple[int, int]], str]:
    """The text and trained spans of `render_with_mask` (no tokens), and the name errors give the template."""
    ctx, msgs, tools, where = prepare_record(record, tokenizer, prompt_format, options)
    if ctx.profile.opens_thought and any(m.trained and m.msg.get("reasoning_content") for m in msgs):
        # The template shows a thought only where the generation prompt opens it: one render cannot hold it.
        raise RenderError("not_prefix_stable", f"{where}: a trained message has reasoning, which this template shows "
                          "only after its generation prompt opens a thought; render per turn (--turns per-turn, or "
                          "auto)")
    found = None
    if not exhaustive and ctx.fast:
        found = spans_by_header(ctx, msgs, tools, where)
    full, spans = found if found is not None else spans_by_prefix(ctx, msgs, tools, where)
    return full, spans, where
