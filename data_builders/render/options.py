"""How a record becomes text beyond what the chat template decides: the render options (`RenderOptions`).

Each is a CLI flag of `trajtune render` and `trajtune build` (and a BuildConfig key): `--template-kwargs k=v`
(passed to the template as apply_chat_template's chat_template_kwargs: enable_thinking, reasoning_effort, ...),
`--call-syntax NAME` (the call syntax of a template that ignores `tool_calls` and whose syntax cannot be
inferred: Seed-OSS, Hammer, MiniCPM3), `--reasoning auto|inline|drop` (where `reasoning_content` goes) and
`--call-content drop` (for templates that cannot show text next to a tool call). `--reasoning auto`, the
default, puts reasoning where the template reads it and, on a template with no place for it, writes it inline
as `<think>...</think>` (the convention of R1-style distilled data), announced on stderr (`reasoning_notice`).
Records the template cannot express otherwise are declined with a message naming the option: nothing is
dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import TrajtuneError

REASONING = {"auto": "where the template reads it; on a template with no place for it, inline",
             "inline": "written as <think>REASONING</think> before the answer, in the content",
             "drop": "left out of the trained text"}
CALL_CONTENT = {"drop": "the text next to a tool call is left out; the call alone is trained"}


@dataclass(frozen=True)
class RenderOptions:
    template_kwargs: tuple[tuple[str, Any], ...] = ()  # sorted (key, value) pairs
    call_syntax: str | None = None  # a key of tool_calls.SYNTAXES
    reasoning: str = "auto"  # a key of REASONING
    call_content: str | None = None  # a key of CALL_CONTENT

    def __post_init__(self) -> None:
        from ..tool_calls import SYNTAXES

        if self.call_syntax is not None and self.call_syntax not in SYNTAXES:
            raise TrajtuneError(f"--call-syntax {self.call_syntax!r}: choose one of {', '.join(SYNTAXES)}")
        if self.reasoning not in REASONING:
            raise TrajtuneError(f"--reasoning {self.reasoning!r}: choose one of {', '.join(REASONING)}")
        if self.call_content is not None and self.call_content not in CALL_CONTENT:
            raise TrajtuneError(f"--call-content {self.call_content!r}: choose one of {', '.join(CALL_CONTENT)}")


def parse_template_kwargs(items: list[str] | dict | None) -> tuple[tuple[str, Any], ...]:
    """`["enable_thinking=false", "reasoning_effort=high"]` (or a dict, from a config file) -> sorted pairs; each
    value is read as JSON where it is JSON (false, 3, "x", [..]), else kept as the string given."""
    if not items:
        return ()
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            key, eq, value = item.partition("=")
            if not eq or not key.isidentifier():
                raise TrajtuneError(f"--template-kwargs {item!r}: give KEY=VALUE, e.g. enable_thinking=false")
            try:
                pairs.append((key, json.loads(value)))
            except json.JSONDecodeError:
                pairs.append((key, value))
    return tuple(sorted((k, _frozen(v)) for k, v in pairs))


def _frozen(value: Any) -> Any:
    """Hashable (the template profile is cached per kwargs): lists become tuples, dicts sorted item tuples."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        raise TrajtuneError("--template-kwargs: an object value is not supported; give strings, numbers or lists")
    return value
