"""The tokens at which a model trained on a chat template stops generating, per kind of message (`template_stop_tokens`).

A trained span ends with the token the model emits to stop generating *that kind* of message, and nothing the
template writes after it is trained (generation has stopped; Gemma's `\\n` after `<end_of_turn>`). The kinds
(KINDS): a final answer (the record's last message), an answer followed by another turn, a message ending in
tool calls followed by their results, and one that is the last message. harmony stops a final answer with
`<|return|>`, a history answer with `<|end|>` and a call with `<|call|>`; ChatML stops all of them at `<|im_end|>`.

Found by probe renders, never from a fixed list: a tiny conversation per kind is rendered, and the text the
template writes after the message's own text (`tail`) is read token by token, using the added tokens of the
tokenizer in use (so a stop is always whole tokens of it):
- a token that closes a pair the message itself opened (`</tool_call>` after `<tool_call>`, `<|END_RESPONSE|>`
  after `<|START_RESPONSE|>`, `<｜tool▁call▁end｜>` after `<｜tool▁call▁begin｜>`) is the message's own syntax: skipped;
- a token that opens something (`start`/`begin`/`bos` in its name, or a token of the generation header) means
  the next turn has begun and the template wrote no stop: there is none (DeepSeek-V3's call turns,
  Command-R's `Action:` turns);
- the first other token is the stop.
A template that writes after the last message only what it writes before the stop when another turn follows
(GLM: nothing after an answer, `</tool_call>` after a call; the model ends its turn by emitting the next role token
`<|user|>` / `<|observation|>`) gets that stop appended after the last message (`StopTokens.open_last`): the
template's own token for that message, written where the template writes it, never the eos.
Calls are probed with one call, then two: DeepSeek-V3's template writes its call turn's close inside its loop over
the calls, so only a turn with two or more calls is closed (`StopTokens.multi_call_only`: such records are declined
naming that, never closed by a token the template did not write).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from .profile import PROBE_TOOLS, probe_call, profile_template, render_shaped, render_text, special_kwargs, try_render

# kind -> what it is, as messages name it.
KINDS = {
    "answer": "a final answer (the last message)",
    "history": "an answer followed by another turn",
    "call": "a tool-call message followed by its results",
    "call_last": "a tool-call message as the last message",
}
_OPENER_WORDS = {"start", "begin", "bos", "bom"}


@dataclass(frozen=True)
class StopTokens:
    """The stop token per kind of message (KINDS), None where the template writes none; `open_last`: the kinds
    (answer, call_last) whose stop the template writes only when another turn follows, to be appended;
    `multi_call_only`: the call kinds it closes only when the message holds two or more calls; `tails`: what the
    template writes after each kind (for messages and `--check-template`)."""

    answer: str | None = None
    history: str | None = None
    call: str | None = None
    call_last: str | None = None
    open_last: frozenset[str] = frozenset()
    multi_call_only: frozenset[str] = frozenset()  # call kinds whose stop the template writes only after 2+ calls
    tails: dict[str, str] = field(default_factory=dict, compare=False)

    def of(self, kind: str) -> str | None:
        return getattr(self, kind)

    def tokens(self) -> list[str]:
        """Every distinct stop token, in KINDS order. Example (ChatML): ["<|im_end|>"]."""
        return list(dict.fromkeys(t for k in KINDS if (t := self.of(k)) is not None))


def kind_of(has_calls: bool, is_last: bool) -> str:
    return ("call_last" if is_last else "call") if has_calls else ("answer" if is_last else "history")


def added_tokens(tokenizer) -> tuple[str, ...]:
    """The tokenizer's added tokens (special or not): the only text a stop token can be."""
    vocab = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    return tuple(sorted(vocab))


def template_stop_tokens(tokenizer) -> StopTokens:
    """The stop tokens of `tokenizer`'s chat template, per kind of message, found by probe renders (module doc).

    The one answer to "where does this model stop": the renderer ends trained spans with them and the export
    writes them into generation_config.json. Example: Qwen2.5's ChatML gives `<|im_end|>` for every kind;
    gpt-oss gives answer `<|return|>`, history `<|end|>`, call `<|call|>`.
    """
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        return StopTokens()
    return stop_tokens_of(template, tuple(sorted(special_kwargs(tokenizer).items())), added_tokens(tokenizer))


def _name_words(token: str) -> list[str]:
    name = token.strip("<>[]|｜").lower()
    return [w for w in re.split(r"[_▁\s:|/-]+", name) if w]


def _is_opener(token: str, header_tokens: set[str]) -> bool:
    words = _name_words(token)
    return token in header_tokens or any(w in _OPENER_WORDS or w.startswith(("start", "begin")) for w in words)


def _closes_own_pair(token: str, body_tokens: set[str]) -> bool:
    """`token` closes a pair opened in the message's own text: `</x>` after `<x>`, `..END..` after `..START..`."""
    inner = token.strip("<>[]|｜")
    names = {t.strip("<>[]|｜").lower() for t in body_tokens}
    if inner.startswith("/") and inner[1:].lower() in names:
        return True
    low = inner.lower()
    for opener in ("start", "begin"):
        if re.search(r"(^|[_▁])end($|[_▁])", low) and re.sub(r"(^|[_▁])end($|[_▁])", rf"\g<1>{opener}\g<2>", low) in names:
            return True
    return False


def read_stop(tail: str, body: str, token_re: re.Pattern | None, header_tokens: set[str]) -> str | None:
    """The stop token in `tail` (the text after a message's own text) given `body` (the message's text after its
    turn opener), by the rules of the module doc; None if the template wrote none."""
    if token_re is None:
        return None
    body_tokens = set(token_re.findall(body))
    for token in token_re.findall(tail):
        if _closes_own_pair(token, body_tokens):
            continue
        return None if _is_opener(token, header_tokens) else token
    return None


@lru_cache(maxsize=64)
def stop_tokens_of(template: str, special_items: tuple, added: tuple[str, ...]) -> StopTokens:
    """`template_stop_tokens` for a template, its bos/eos kwargs and the tokenizer's added tokens (cached)."""
    from .errors import RenderError
    from .shape import template_messages

    special = dict(special_items)
    token_re = re.compile("|".join(map(re.escape, sorted(added, key=len, reverse=True)))) if added else None
    prof = profile_template(template, special_items)
    no_tools = [] if prof.needs_tool_list else None
    user, answer, after = ({"role": "user", "content": c} for c in ("probe_user", "probe_v1", "probe_end"))
    answer["role"] = "assistant"
    plain, gen = try_render(template, special, [user], no_tools), None
    try:
        gen = render_text(template, [user], no_tools, True, special)
    except Exception:  # noqa: BLE001 (a template that rejects the probe: no header tokens)
        pass
    header = gen[len(plain):] if plain is not None and gen is not None and gen.startswith(plain) else ""
    header_tokens = set(token_re.findall(header)) if token_re else set()

    call, two = probe_call(1), {**probe_call(1), "id": "probecall2"}  # both end with the argument value probe_v1
    result = {"role": "tool", "tool_call_id": "probecall1", "name": "probe_fn", "content": "probe_end"}
    tools = PROBE_TOOLS
    # Calls are probed with one call, then two: DeepSeek-V3's template closes a call turn only after a second call.
    probes = [("answer", None, [user, answer]), ("history", None, [user, answer, after])]
    for calls in ([call], [call, two]):
        calling = {"role": "assistant", "content": None, "tool_calls": calls}
        results = [{**result, "tool_call_id": c["id"]} for c in calls]
        probes += [("call", tools, [user, calling, *results]), ("call_last", tools, [user, calling])]
    found: dict[str, str | None] = {}
    tails: dict[str, str] = {}
    unclosed: set[str] = set()  # kinds whose one-call probe rendered, with no stop after it
    for kind, kind_tools, messages in probes:
        if found.get(kind) is not None:
            continue
        if kind in tails:
            unclosed.add(kind)
        try:
            msgs, kw_tools = template_messages({"id": "probe", "tools": kind_tools or [], "messages": messages},
                                               template, prof, "probe")
        except RenderError:
            found[kind] = None
            continue
        try:
            text = render_shaped(template, prof, special, [m.msg for m in msgs], kw_tools, False)
        except Exception:  # noqa: BLE001 (a probe the template rejects: no stop for this kind)
            text = None
        u = text.find("probe_user") if text else -1
        nxt = text.find("probe_end", u) if text and kind in ("history", "call") else -1
        end = text.rfind("probe_v1", 0, nxt if nxt >= 0 else len(text)) if text else -1
        if u < 0 or end < 0 or (kind in ("history", "call") and nxt < 0):
            found[kind] = None
            continue
        end += len("probe_v1")
        # The message's own text starts after its turn's opener (the first opening token after the user's text).
        body_start = next((m.end() for m in token_re.finditer(text, u, end) if _is_opener(m.group(0), header_tokens)),
                          u) if token_re else u
        tail = text[end:nxt if nxt >= 0 else len(text)]
        tails[kind] = tail
        found[kind] = read_stop(tail, text[body_start:end], token_re, header_tokens)
    open_last = set()
    for last, followed in (("answer", "history"), ("call_last", "call")):
        stop = found.get(followed)
        # The template leaves the last turn open (GLM): after it, it writes exactly what it writes before the
        # next-turn token when a turn follows (nothing, or `</tool_call>`), so that token goes right there.
        if found.get(last) is None and stop is not None and last in tails and \
                tails.get(followed, "").startswith(tails[last] + stop):
            found[last] = stop
            open_last.add(last)
    multi = frozenset(k for k in unclosed if found.get(k) is not None and k not in open_last)
    return StopTokens(**{k: found.get(k) for k in KINDS}, open_last=frozenset(open_last), multi_call_only=multi,
                      tails=tails)
