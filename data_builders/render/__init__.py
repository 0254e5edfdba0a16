"""The render wing: a canonical trajectory -> the model's own chat template's text, token ids and a verified loss mask.

Entry points: `render_with_mask(record, tokenizer)` and `render_batch(records, tokenizer)` (the build's path).
Trained = exactly what the model generates at inference (DESIGN.md): for each trained assistant message, the
text after the generation prompt through the end-of-turn token. Files, in the order a record passes them:

    profile.py         how a template wants tools, calls and results, measured once by probe renders
    prompt_formats.py  built-in tool prompts for templates without tools (prompt_formats/*.jinja)
    shape.py           the record -> the messages this template wants (`template_messages`)
    stops.py           the tokens generation stops at (`template_stop_tokens`, also used by the export)
    spans.py           where each trained message lies: the prefix proof and the one-render header path
    encode.py          tokenize once, mask the tokens of the trained spans (`encode_masked`)
    mask.py            `render_with_mask`, `render_batch`
    check.py           the template battery (`trajtune render --check-template`), the fast-path gate
    errors.py          `RenderError` and its `REASONS`
"""

from .check import BATTERY, check_template
from .errors import REASONS, RenderError
from .mask import Rendered, render_batch, render_with_mask
from .profile import (
    TemplateProfile,
    profile_template,
    render_text,
    special_kwargs,
    template_name,
    try_render,
    with_call,
)
from .prompt_formats import PROMPT_FORMATS, apply_prompt_format
from .shape import format_calls, interleave_results, template_messages
from .stops import KINDS, StopTokens, template_stop_tokens

__all__ = [
    "BATTERY", "KINDS", "PROMPT_FORMATS", "REASONS", "RenderError", "Rendered", "StopTokens", "TemplateProfile",
    "apply_prompt_format", "check_template", "format_calls", "interleave_results", "profile_template",
    "render_batch", "render_text", "render_with_mask", "special_kwargs", "template_messages", "template_name",
    "template_stop_tokens", "try_render", "with_call",
]
