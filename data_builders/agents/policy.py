"""Policies: what acts in an environment. One small interface, four kinds, one factory.

A `Policy` has a `name` (written to `meta.policy`) and `act(messages, tools) -> assistant message`: content
and/or canonical `tool_calls` (arguments are objects). `act_batch([(messages, tools), ...])` answers many
conversations at once (default: one by one; `hf:` generates them as one batch). A reply whose calls could not be
read (text that looks like a call but does not parse, an unknown tool, arguments failing the schema) comes back
as the raw text with `PARSE_ERROR` set; the rollout answers it with an error observation and never writes that
key into a trajectory.

`make_policy(spec, env=None, **options)`:
- `oracle`: the environment's scripted solver (`env.oracle_act`); `rollout_batch` binds each episode's env.
- `random`: a baseline: a random tool with arguments sampled from its schema, or a short random answer;
  a pure function of (`seed`, conversation), so batching and order never change it.
- `openai:<base_url>`: any OpenAI-compatible endpoint (vLLM, `trajtune serve`, a hosted model), see
  `openai_policy.py`.
- `hf:<path>`: a local model through the generation engine (`engine.py`).
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from ..errors import TrajtuneError
from ..tool_call_readers import RawCall, ReadFailure, check_call
from ..trajectory import Message, Tool, normalise_tools

# Set on an assistant message whose calls could not be read: {"type": ParseError kind, "message": ...}.
PARSE_ERROR = "parse_error"

POLICY_KINDS = {
    "oracle": "the environment's scripted solver",
    "random": "random tools with schema-sampled arguments, or a short random answer (options: seed, answer_prob)",
    "openai:<base_url>": "an OpenAI-compatible endpoint (options: served_model, api_key_env, temperature, "
                         "max_tokens, timeout, retries)",
    "hf:<path>": "a local model through the generation engine (options: prompt_format, dtype, device, "
                 "logits_processor, and the generation options of engine.GenerationOptions)",
}


class Policy:
    """The interface: `name`, `act`, `act_batch`; `bind(env)` gives the policy for one episode's environment."""

    name: str = "policy"

    def act(self, messages: list[Message], tools: list[Tool]) -> Message:
        """The next assistant message for the conversation `messages`, with `tools` offered."""
        raise NotImplementedError

    def act_batch(self, items: list[tuple[list[Message], list[Tool]]]) -> list[Message]:
        """`act` of each (messages, tools), in order."""
        return [self.act(messages, tools) for messages, tools in items]

    def bind(self, env: Any) -> Policy:
        """The policy acting in `env` for one episode (the oracle needs its env; others are the same object)."""
        return self

    def close(self) -> None:
        return None


def bad_reply(text: str, kind: str, message: str) -> Message:
    """An assistant message holding `text` whose calls could not be read (`PARSE_ERROR` = kind + message)."""
    return {"role": "assistant", "content": text, PARSE_ERROR: {"type": kind, "message": message}}  # type: ignore[misc]


def check_reply(reply: Message, tools: list[Tool]) -> Message:
    """`reply` if every call names one of `tools` with arguments its schema accepts (the checks of
    `parse_tool_calls`); otherwise the calls written out as JSON text in a `bad_reply`, so that the trajectory stays
    canonical and the agent is told what was wrong."""
    calls = reply.get("tool_calls") or []
    if not calls or PARSE_ERROR in reply:
        return reply
    specs = {t["function"]["name"]: t["function"]["parameters"] for t in normalise_tools(tools)}
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        try:
            if not isinstance(fn, dict):
                raise ReadFailure("not_a_call", f"a tool call must hold a function, got {call!r}"[:200], 0)
            check_call(RawCall(0, fn.get("name"), fn.get("arguments")), specs)
        except ReadFailure as fail:
            text = "\n".join(filter(None, [reply.get("content") or "", json.dumps(
                [c.get("function", c) if isinstance(c, dict) else c for c in calls], ensure_ascii=False, default=str)]))
            return bad_reply(text, fail.error.kind, fail.error.message)
    return reply


# ---------------------------------------------------------------------------------------------------------
# oracle and random


class OraclePolicy(Policy):
    """`env.oracle_act(messages)`: the environment's scripted solver (raises `envs.Unsolvable` where it cannot)."""

    name = "oracle"

    def __init__(self, env: Any = None) -> None:
        self.env = env

    def act(self, messages: list[Message], tools: list[Tool]) -> Message:
        if self.env is None:
            raise TrajtuneError("the oracle policy has no environment: make it with make_policy('oracle', env=ENV), "
                                "or run it through rollout / rollout_batch, which bind each episode's environment")
        return self.env.oracle_act(messages)

    def bind(self, env: Any) -> Policy:
        return OraclePolicy(env)


_WORDS = ("alpha", "blue", "cat", "delta", "echo", "forty", "green", "house", "ice", "jazz", "kilo", "lima",
          "moon", "nine", "ocean", "paris", "quartz", "river", "stone", "tokyo", "umbra", "violet", "water", "zero")


class RandomPolicy(Policy):
    """A baseline: with probability `answer_prob` a short random answer, else one random tool with arguments
    sampled from its JSON Schema (required properties always, optional ones half the time). The choice is a pure
    function of `seed` and the conversation, so a run is reproducible however episodes are batched."""

    name = "random"

    def __init__(self, seed: int = 0, answer_prob: float = 0.2) -> None:
        if not 0.0 <= answer_prob <= 1.0:
            raise TrajtuneError(f"random policy: answer_prob must be in [0, 1], got {answer_prob}")
        self.seed, self.answer_prob = seed, answer_prob

    def act(self, messages: list[Message], tools: list[Tool]) -> Message:
        digest = hashlib.sha256(json.dumps([self.seed, messages], sort_keys=True, default=str).encode()).digest()
        rng = random.Random(digest)
        if not tools or rng.random() < self.answer_prob:
            return {"role": "assistant", "content": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))}
        fn = rng.choice(normalise_tools(tools))["function"]
        args = sample_value(fn["parameters"], rng)
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": fn["name"], "arguments": args}}]}


def sample_value(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A random value of JSON Schema `schema` (enum, const, type with min/max, arrays, nested objects; any
    other keyword is ignored, so a sample can still fail a pattern or format, as a random agent's would)."""
    if not isinstance(schema, dict):
        return rng.choice(_WORDS)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return sample_value(rng.choice(schema[key]), rng, depth)
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = rng.choice(kind) if kind else "string"
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        return {k: sample_value(v, rng, depth + 1) for k, v in props.items()
                if k in required or (depth < 3 and rng.random() < 0.5)}
    if kind == "array":
        n = 0 if depth >= 3 else rng.randint(schema.get("minItems", 0), max(schema.get("minItems", 0), 2))
        return [sample_value(schema.get("items", {}), rng, depth + 1) for _ in range(n)]
    if kind == "integer":
        lo, hi = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return rng.randint(lo, max(lo, hi))
    if kind == "number":
        lo, hi = float(schema.get("minimum", 0.0)), float(schema.get("maximum", 100.0))
        return round(rng.uniform(lo, max(lo, hi)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(_WORDS)


# ---------------------------------------------------------------------------------------------------------
# hf: a local model through the engine


class HFPolicy(Policy):
    """A local model: each `act_batch` is one batched generation of the engine (left padding, KV cache)."""

    def __init__(self, path: str, logits_processor: list | None = None, **options: Any) -> None:
        from .engine import Engine, GenerationOptions

        engine_keys = {"prompt_format", "dtype", "device"}
        self.engine = Engine(path, **{k: v for k, v in options.items() if k in engine_keys})
        self.options = GenerationOptions.of({k: v for k, v in options.items() if k not in engine_keys},
                                            f"hf:{path}")
        self.logits_processor = logits_processor  # applied to every generation (e.g. grammar-constrained calls)
        self.name = f"hf:{path}"

    def act(self, messages: list[Message], tools: list[Tool]) -> Message:
        return self.act_batch([(messages, tools)])[0]

    def act_batch(self, items: list[tuple[list[Message], list[Tool]]]) -> list[Message]:
        return self.engine.chat(items, self.options, self.logits_processor)


# ---------------------------------------------------------------------------------------------------------
# The factory


def _options(spec: str, options: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TrajtuneError(f"policy {spec}: unknown option(s) {', '.join(unknown)}; it takes "
                            f"{', '.join(sorted(allowed)) or 'none'}")
    return options


def make_policy(spec: str, env: Any = None, **options: Any) -> Policy:
    """The policy for `spec` (a key of POLICY_KINDS), e.g. `make_policy("hf:runs/sft/final", max_new_tokens=256)`.
    Unknown kinds or options are a TrajtuneError listing the choices."""
    if spec == "oracle":
        _options(spec, options, set())
        return OraclePolicy(env)
    if spec == "random":
        return RandomPolicy(**_options(spec, options, {"seed", "answer_prob"}))
    kind, _, target = spec.partition(":")
    if kind == "openai" and target:
        from .openai_policy import OPTIONS, OpenAIPolicy

        return OpenAIPolicy(target, **_options(spec, options, set(OPTIONS)))
    if kind == "hf" and target:
        from .engine import ENGINE_OPTIONS, GenerationOptions

        return HFPolicy(target, **_options(spec, options, {*ENGINE_OPTIONS, "logits_processor",
                                                           *GenerationOptions.keys()}))
    raise TrajtuneError(f"unknown policy {spec!r}; choose one of: "
                        + "; ".join(f"{k} ({v})" for k, v in POLICY_KINDS.items()))
