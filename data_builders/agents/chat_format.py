"""How a model is prompted and read back: its chat template (or a prompt format), stop strings, call syntax.

`ChatFormat.of(tokenizer, prompt_format)` measures once what generation needs, the same way training rendered:
- `prompt(messages, tools)` is the text before the model's next turn, shaped by `render.template_messages` (the
  renderer's own record -> template mapping) and rendered with the generation prompt, so a model is prompted
  exactly as it was trained (`render_with_mask` puts the trained text right after this prompt).
- `stops` are the template's end-of-turn strings (the template's stop tokens (`render.template_stop_tokens`), GLM role tokens, eos;
  `Observation:` for ReAct, so the model does not invent a tool's answer).
- `syntax` is the tool-call syntax the model was trained to write, measured by rendering a probe call the way
  training does and keeping the first syntax (the profile's own text syntax first) that reads it back.
- `parse(text, tools)` turns a generation (cut at the first stop) into an assistant message: content and
  canonical tool calls, or the raw text with `parse_error` set (see `policy.PARSE_ERROR`).
Nothing here imports torch: it is text in, text out, and tested on every fixture template.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ..errors import TrajtuneError
from ..render import (
    TemplateProfile,
    profile_template,
    render_text,
    special_kwargs,
    template_messages,
    template_stop_tokens,
)
from ..tokenizer import ROLE_CONCAT_RE
from ..tool_calls import SYNTAXES, parse_tool_calls
from ..trajectory import Message, Tool
from .policy import PARSE_ERROR

# The syntax each built-in prompt format teaches (prompt_formats.py writes calls this way).
PROMPT_FORMAT_SYNTAX = {"tool-prompt": "json_block", "react": "react", "chatglm3": "chatglm3"}

_PROBE_TOOLS: list[Tool] = [{"type": "function", "function": {
    "name": "probe_lookup", "description": "Probe tool.",
    "parameters": {"type": "object", "properties": {"probe_key": {"type": "string"}}, "required": ["probe_key"]}}}]
_EMPTY_THINK = re.compile(r"^\s*<think>\s*</think>\s*")
_PROBE_CALL = {"name": "probe_lookup", "arguments": {"probe_key": "probe value 1"}}


@dataclass(frozen=True)
class ChatFormat:
    """One model's prompting and reading rules (see the module docstring). Build with `ChatFormat.of`."""

    template: str  # the template that renders prompts (a prompt format's own for chatglm3)
    special: dict[str, str]  # bos_token/eos_token/... as apply_chat_template passes them
    profile: TemplateProfile
    prompt_format: str | None
    syntax: str | None  # None: no known syntax reads this template's calls back (tools then need a prompt format)
    stops: tuple[str, ...]  # longest first, so a longer stop wins where two start at the same place
    where: str  # the template's name, for messages

    @classmethod
    def of(cls, tokenizer: Any, prompt_format: str | None = None) -> ChatFormat:
        """Measure `tokenizer`'s chat template (with `prompt_format`: tool-prompt | react | chatglm3 | None)."""
        from ..render import template_name
        from ..render.prompt_formats import format_template

        where = template_name(tokenizer)
        template = tokenizer.chat_template
        if prompt_format is not None:
            format_template(prompt_format)  # validates the name
            if prompt_format == "chatglm3":
                template = format_template(prompt_format)
            where = f"{where} (prompt format {prompt_format})"
        if not isinstance(template, str) or not template:
            raise TrajtuneError(f"{where} has no chat template; give the model directory a tokenizer with one")
        special = special_kwargs(tokenizer)
        profile = profile_template(template, tuple(sorted(special.items())))
        role_tokens = {"<|user|>", "<|observation|>"} if ROLE_CONCAT_RE.search(template) else set()
        # The template's own stop tokens (the renderer's one answer, per kind of message), GLM's next-role tokens.
        stops = set(template_stop_tokens(tokenizer).tokens()) | role_tokens
        if tokenizer.eos_token:
            stops.add(tokenizer.eos_token)
        if prompt_format == "react":
            stops.add("Observation:")
        fmt = cls(template, special, profile, prompt_format, None, tuple(sorted(stops, key=len, reverse=True)), where)
        return dataclasses.replace(fmt, syntax=_measure_syntax(fmt))

    def prompt(self, messages: list[Message], tools: list[Tool] | None = None) -> str:
        """The text before the model's next assistant turn: `messages` (canonical) rendered with the generation
        prompt. TrajtuneError when the template cannot show them (the message names the fix)."""
        if tools and self.syntax is None:
            raise TrajtuneError(f"{self.where}: the template's tool calls cannot be read back in any known syntax "
                                f"({', '.join(SYNTAXES)}); use prompt_format=tool-prompt, react or chatglm3")
        return self.render(messages, tools, True)

    def render(self, messages: list[Message], tools: list[Tool] | None, generation_prompt: bool) -> str:
        """`messages` as this template shows them (shaped by `render.template_messages`, as training shapes them)."""
        record: dict[str, Any] = {"tools": list(tools or []), "messages": list(messages)}
        if self.prompt_format is not None:
            from ..render import apply_prompt_format

            record, _ = apply_prompt_format(record, self.prompt_format)  # type: ignore[arg-type]
        msgs, kw_tools = template_messages(record, self.template, self.profile, self.where)  # type: ignore[arg-type]
        try:
            return render_text(self.template, [m.msg for m in msgs], kw_tools, generation_prompt, self.special)
        except Exception as e:  # jinja's raise_exception: a conversation this template refuses
            raise TrajtuneError(f"{self.where}: the chat template refused the conversation: {type(e).__name__}: "
                                f"{e}") from None

    def cut(self, text: str, extra: tuple[str, ...] = ()) -> tuple[str, bool]:
        """(`text` up to its first stop string, of `stops` and `extra`; whether a stop was found)."""
        hits = [i for s in self.stops + extra if (i := text.find(s)) >= 0]
        return (text[:min(hits)], True) if hits else (text, False)

    def parse(self, text: str, tools: list[Tool] | None = None) -> Message:
        """A generation (already cut at its stop) -> an assistant message. Calls are canonical (arguments are
        objects, ids call_0, ...) and checked against `tools`; text that fails to read as calls comes back whole
        as content, with `parse_error` = {"type", "message"} for the rollout to answer."""
        text = _EMPTY_THINK.sub("", text, count=1)  # Qwen3's empty <think></think> before an answer says nothing
        if not tools or self.syntax is None:
            return {"role": "assistant", "content": self._answer(text.strip())}
        content, calls = "", []
        # GLM writes text, then `<|assistant|>name` + arguments for each call, in one generation.
        pieces = text.split("<|assistant|>") if self.syntax in ("glm4", "chatglm3") else [text]
        if len(pieces) > 1:
            content, pieces = pieces[0], pieces[1:]
        for piece in pieces:
            out = parse_tool_calls(piece, self.syntax, tools)
            if out.error is not None:
                return {"role": "assistant", "content": text, PARSE_ERROR: {  # type: ignore[misc]
                    "type": out.error.kind, "message": str(out.error)}}
            content = "\n".join(filter(None, [content.strip(), out.content]))
            calls += out.calls
        if not calls:
            return {"role": "assistant", "content": self._answer(content)}
        calls = [{**c, "id": f"call_{k}"} for k, c in enumerate(calls)]
        return {"role": "assistant", "content": self._thought(content) or None, "tool_calls": calls}

    def _thought(self, content: str) -> str:
        # ReAct writes `Thought: <content>` before an action (prompt_formats.apply_prompt_format).
        if self.prompt_format == "react" and content.startswith("Thought:"):
            return content[len("Thought:"):].strip()
        return content

    def _answer(self, content: str) -> str:
        # ReAct writes a final answer as `Final Answer: <content>`; what comes before it is the last thought.
        if self.prompt_format == "react" and "Final Answer:" in content:
            return content.rpartition("Final Answer:")[2].strip()
        return content


def _measure_syntax(fmt: ChatFormat) -> str | None:
    """The call syntax the model was trained to write: render a probe conversation before and after a call (as
    training renders it), cut the call's text at the first stop, and keep the first syntax that reads back exactly
    that call: the prompt format's, the profile's text syntax, then every other."""
    history: list[Message] = [{"role": "user", "content": "probe question"}]
    call: Message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": _PROBE_CALL}]}  # type: ignore[typeddict-item]
    try:
        prompt = fmt.render(history, _PROBE_TOOLS, True)
        full = fmt.render(history + [call], _PROBE_TOOLS, False)
    except TrajtuneError:  # RenderError included: a template with no tools (only a prompt format lets it call)
        return None
    if not full.startswith(prompt):
        return None
    written = fmt.cut(full[len(prompt):])[0]
    candidates = [PROMPT_FORMAT_SYNTAX.get(fmt.prompt_format or ""), fmt.profile.text_syntax, *SYNTAXES]
    for syntax in dict.fromkeys(c for c in candidates if c):
        out = parse_tool_calls(written, syntax, _PROBE_TOOLS)
        if out.error is None and [c["function"] for c in out.calls] == [_PROBE_CALL]:
            return syntax
    return None
