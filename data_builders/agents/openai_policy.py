"""The `openai:<base_url>` policy: any OpenAI-compatible chat-completions endpoint, through the official client.

vLLM's server, `trajtune serve` and hosted APIs speak the same shape: canonical messages go out (arguments
serialized to JSON strings, as the wire format wants), and the reply's `tool_calls` come back canonical
(arguments parsed into objects). A reply that cannot be read (arguments that are not a JSON object, a call
without a name, no choices at all) becomes an assistant message holding the raw text, flagged `PARSE_ERROR`,
never a crash; the rollout shows the agent what was wrong. An endpoint that cannot be reached after the client's
retries is a TrajtuneError naming the URL (a run should stop rather than write a thousand empty episodes).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import TrajtuneError
from ..trajectory import Message, Tool
from .policy import Policy, bad_reply

OPTIONS = {
    "served_model": "the model name the endpoint serves (default: its only model, from /models)",
    "api_key_env": "environment variable holding the API key (default OPENAI_API_KEY; unset: a local server's "
                   "placeholder key)",
    "temperature": "sampling temperature (default 0: deterministic where the server allows)",
    "max_tokens": "most tokens per reply (default 1024)",
    "timeout": "seconds per request (default 60)",
    "retries": "retries of a failed or timed-out request, with the client's backoff (default 2)",
    "seed": "the request's seed, for servers that honour it (default: none)",
}


def wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Canonical messages in the chat-completions wire shape (arguments as JSON strings, no trajtune keys)."""
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"], "content": m.get("content")}
        if m.get("tool_calls"):
            msg["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
                "name": c["function"]["name"],
                "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}} for c in m["tool_calls"]]
        if m["role"] == "tool":
            msg["tool_call_id"] = m.get("tool_call_id", "")
        if msg["content"] is None and m["role"] != "assistant":
            msg["content"] = ""
        out.append(msg)
    return out


def canonical_reply(choice_message: Any) -> Message:
    """A chat-completions reply message (the client's object or a dict) -> a canonical assistant message, or
    a `bad_reply` holding its raw text when its calls cannot be read."""
    raw = choice_message.model_dump() if hasattr(choice_message, "model_dump") else dict(choice_message)
    content = raw.get("content")
    content = content if isinstance(content, str) else ("" if content is None else json.dumps(content))
    calls_in = raw.get("tool_calls") or []
    if not calls_in:
        return {"role": "assistant", "content": content}
    raw_text = "\n".join(filter(None, [content, json.dumps(calls_in, ensure_ascii=False, default=str)]))
    calls = []
    for k, call in enumerate(calls_in):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            return bad_reply(raw_text, "not_a_call", f"tool call {k} has no function name")
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                return bad_reply(raw_text, "bad_json", f"arguments of {fn['name']} are not JSON ({e.msg} at char "
                                 f"{e.pos})")
        if not isinstance(args, dict):
            return bad_reply(raw_text, "bad_arguments", f"arguments of {fn['name']} must be a JSON object, got "
                             f"{type(args).__name__}")
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else f"call_{k}"
        calls.append({"id": call_id, "type": "function", "function": {"name": fn["name"], "arguments": args}})
    return {"role": "assistant", "content": content or None, "tool_calls": calls}


class OpenAIPolicy(Policy):
    """`openai:<base_url>` (e.g. `openai:http://127.0.0.1:8000/v1`) with the options of OPTIONS."""

    def __init__(self, base_url: str, served_model: str | None = None, api_key_env: str | None = None,
                 temperature: float = 0.0, max_tokens: int = 1024, timeout: float = 60.0, retries: int = 2,
                 seed: int | None = None) -> None:
        try:
            import openai
        except ImportError:
            raise TrajtuneError("the openai: policy needs the openai package: pip install 'trajtune[agents]' "
                                "(or pip install openai)") from None
        if not base_url.startswith(("http://", "https://")):
            raise TrajtuneError(f"openai:{base_url}: the base URL must start with http:// or https:// "
                                "(e.g. openai:http://127.0.0.1:8000/v1)")
        key = os.environ.get(api_key_env or "OPENAI_API_KEY")
        if api_key_env and not key:
            raise TrajtuneError(f"openai:{base_url}: the environment variable {api_key_env} (api_key_env) is not set")
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "EMPTY", timeout=timeout, max_retries=retries)
        self.base_url, self.served_model = base_url, served_model
        self.request = {"temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            self.request["seed"] = seed
        self.name = f"openai:{base_url}"

    def _model(self) -> str:
        if self.served_model is None:
            ids = [m.id for m in self._call(self.client.models.list).data]
            if len(ids) != 1:
                raise TrajtuneError(f"{self.name}: the endpoint serves {len(ids)} models ({', '.join(ids[:10])}); "
                                    "choose one with served_model")
            self.served_model = ids[0]
        return self.served_model

    def _call(self, fn, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (self._openai.APIConnectionError, self._openai.APITimeoutError) as e:
            raise TrajtuneError(f"{self.name}: cannot reach the endpoint ({type(e).__name__}: {e}) after the "
                                "client's retries; is the server up at that URL?") from None
        except self._openai.APIStatusError as e:
            raise TrajtuneError(f"{self.name}: the endpoint answered HTTP {e.status_code}: {str(e)[:300]}") from None

    def act(self, messages: list[Message], tools: list[Tool]) -> Message:
        request: dict[str, Any] = {"model": self._model(), "messages": wire_messages(messages), **self.request}
        if tools:
            request["tools"] = tools
        resp = self._call(self.client.chat.completions.create, **request)
        try:
            message = resp.choices[0].message
        except (AttributeError, IndexError, TypeError):  # a 200 whose body is not a chat completion
            text = resp if isinstance(resp, str) else json.dumps(getattr(resp, "model_dump", lambda: str(resp))(),
                                                                  default=str)
            return bad_reply(str(text), "bad_response", "the endpoint's reply has no choices[0].message")
        return canonical_reply(message)
