"""Built-in tool prompt formats, for models whose own chat template has no tools (`--prompt-format F`).

- `tool-prompt`: tools are listed as Markdown in the system prompt (prompt_formats/tool-prompt.jinja); a
  call is a ```json {"name": ..., "parameters": {...}}``` block; a tool result comes back as a user turn.
- `react`: AgentInstruct's ReAct (prompt_formats/react.jinja): the assistant writes `Thought:` then
  `Action:` / `Action Input:`, results come back as `Observation:` user turns, the answer is `Final Answer:`.
  One action per step, so parallel calls become call/observation pairs.
- `chatglm3`: ChatGLM3-6B's tool format, a whole chat template (prompt_formats/chatglm3.jinja) that replaces
  the tokenizer's: tools as JSON on the system turn, `<|assistant|>name` + ```python tool_call(k=v)```,
  results as `<|observation|>` turns.

`apply_prompt_format(record, name)` returns the record rewritten for the format (tool-prompt and react:
no tools, no tool_calls, no tool role left, so any chat template renders it) and the chat template to use
instead of the tokenizer's (None = keep the tokenizer's). Loss flags travel with their messages.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import TrajtuneError
from ..trajectory import Message, Trajectory

FORMATS_DIR = Path(__file__).resolve().parent / "prompt_formats"
PROMPT_FORMATS = {
    "tool-prompt": "tools as Markdown in the system prompt, calls as ```json``` blocks, results as user turns",
    "react": "Thought / Action / Action Input / Observation (AgentInstruct), results as user turns",
    "chatglm3": "ChatGLM3-6B's tool format (<|observation|> turns), as a whole chat template",
}


AUTO = "auto"  # the default: the template's own tools where it has them, else tool-prompt


def resolve_prompt_format(tokenizer, prompt_format: str | None, options=None) -> str | None:
    """The prompt format to render with: None/"none" -> None (the template alone); "auto" -> None where the
    template shows tools or calls itself (or --call-syntax names its syntax), else "tool-prompt"; a name -> it.
    Example: with Llama-2's template (no tools), "auto" gives "tool-prompt"; with Qwen2.5's, None."""
    if prompt_format in (None, "none"):
        return None
    if prompt_format != AUTO:
        format_template(prompt_format)  # validates the name
        return prompt_format
    key = (tokenizer, getattr(tokenizer, "chat_template", None), options)
    if _LAST_AUTO[0] is not None and all(a is b or a == b for a, b in zip(_LAST_AUTO[0], key)):
        return _LAST_AUTO[1]  # the build asks once per record, with one tokenizer
    _LAST_AUTO[:] = [key, _auto(tokenizer, options)]
    return _LAST_AUTO[1]


_LAST_AUTO: list = [None, None]  # ((tokenizer, template, options), answer)


def _auto(tokenizer, options) -> str | None:
    from .profile import profile_template, special_kwargs

    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return None
    kwargs = dict(options.template_kwargs) if options is not None else {}
    prof = profile_template(template, tuple(sorted({**special_kwargs(tokenizer), **kwargs}.items())))
    own = prof.tools_where != "none" or prof.native_calls or prof.text_syntax or (options and options.call_syntax)
    return None if own else "tool-prompt"


def announce_prompt_format(tokenizer, prompt_format: str | None, options=None) -> str | None:
    """The line to print on stderr when "auto" picks a built-in prompt format (None when it keeps the template)."""
    chosen = resolve_prompt_format(tokenizer, prompt_format, options)
    if prompt_format != AUTO or chosen is None:
        return None
    name = getattr(tokenizer, "name_or_path", "") or "the chat template"
    return (f"{name} has no tools of its own: --prompt-format auto renders tools and calls with the built-in "
            f"{chosen!r} format ({PROMPT_FORMATS[chosen]}); pass --prompt-format none to keep the template alone")


@lru_cache(maxsize=8)
def format_template(name: str) -> str:
    """The text of prompt_formats/<name>.jinja."""
    if name not in PROMPT_FORMATS:
        raise TrajtuneError(f"unknown prompt format {name!r}; choose auto, none or one of {', '.join(PROMPT_FORMATS)}")
    return (FORMATS_DIR / f"{name}.jinja").read_text()


def _system_prompt(name: str, system: str, tools: list) -> str:
    from .profile import compiled_template

    return compiled_template(format_template(name)).render(system=system, tools=tools).strip()


def _loss(src: Message, out: dict) -> dict:
    """`out` with what travels with its message: the loss flag, and the reasoning (placed or declined later, by
    the template's own rules: a prompt format never drops it)."""
    for key in ("loss", "reasoning_content"):
        if key in src and (key == "loss" or out.get("role") == "assistant"):
            out[key] = src[key]
    return out


def apply_prompt_format(record: Trajectory, name: str) -> tuple[Trajectory, str | None]:
    """`record` rewritten for prompt format `name`, and the chat template that replaces the tokenizer's (or None).

    Example: `apply_prompt_format(rec, "react")[0]["messages"][0]["content"]` starts with the ReAct prompt."""
    from .shape import format_calls, interleave_results

    format_template(name)  # validates the name
    where = f"record {record.get('id', '?')} (prompt format {name})"
    tools = record.get("tools") or []
    messages = record["messages"]
    one_call = name in ("react", "chatglm3")
    pairs = interleave_results(list(messages)) if one_call else list(enumerate(messages))

    if name == "chatglm3":
        out: list[dict] = []
        for _, m in pairs:
            calls = m.get("tool_calls") or []
            if m["role"] == "assistant" and calls:
                fn_name, _, body = format_calls(calls, "chatglm3", where).partition("\n")
                call = _loss(m, {"role": "assistant", "metadata": fn_name, "content": body})
                if m.get("content"):  # text, then `<|assistant|>name` for the call, in one generation (as ChatGLM3)
                    out.append(_loss(m, {"role": "assistant", "content": m["content"]}))
                    call.pop("reasoning_content", None)  # the reasoning opens the generation: with the text
                    call["continues_turn"] = True
                out.append(call)
            elif m["role"] == "tool":
                out.append(_loss(m, {"role": "observation", "content": m.get("content") or ""}))
            else:
                out.append(_loss(m, {"role": m["role"], "content": m.get("content") or ""}))
        # Tools stay on the record: the renderer puts them on the system turn, where chatglm3.jinja reads them.
        return {**record, "messages": out}, format_template(name)

    out = []
    system = ""
    for _, m in pairs:
        role, content = m["role"], m.get("content") or ""
        calls = m.get("tool_calls") or []
        if role == "system" and not out and not system:
            system = content
            continue
        if role == "assistant" and calls:
            if name == "react":
                text = format_calls(calls, "react", where)
                text = f"Thought: {content}\n{text}" if content else text
            else:
                text = format_calls(calls, "json_block", where)
                text = f"{content}\n{text}" if content else text
            out.append(_loss(m, {"role": "assistant", "content": text}))
        elif role == "assistant" and name == "react" and tools:
            out.append(_loss(m, {"role": "assistant", "content": f"Final Answer: {content}"}))
        elif role == "tool":
            text = f"Observation: {content}" if name == "react" else f"Result of {m.get('name') or 'the tool'}:\n{content}"
            out.append(_loss(m, {"role": "user", "content": text}))
        else:
            out.append(_loss(m, {"role": role, "content": content}))
    if tools:
        system = _system_prompt(name, system, tools)
    if system:
        out.insert(0, {"role": "system", "content": system})
    return {**record, "tools": [], "messages": out}, None

