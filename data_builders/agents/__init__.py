"""Agents: policies that act (oracle, random, openai:, hf:), the rollout loop, and the local generation engine.

Entry points: `make_policy(spec, env=None, **options)` and `rollout(env, policy, task)` /
`rollout_batch(env_factory, policy, tasks)`. The engine (`engine.Engine`) serves the `hf:` policy, eval's local
backend and `trajtune serve`; `chat_format.ChatFormat` holds how a model is prompted and read back. Nothing here
imports torch until an `hf:` policy is made.
"""

from __future__ import annotations

from .policy import PARSE_ERROR, Policy, make_policy  # noqa: F401  (the wing's API)
from .rollout import rollout, rollout_batch  # noqa: F401
