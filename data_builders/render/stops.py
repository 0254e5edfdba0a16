"""The tokens at which a model trained on a chat template stops generating (`template_stop_tokens`)."""

from __future__ import annotations

import re

from .profile import profile_template, special_kwargs, try_render, with_call

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
