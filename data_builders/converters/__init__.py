"""Converters from public dataset formats to canonical trajectories: the registry, `detect`, `convert_file`.

One module per format, each with `NAME`, `looks_like(record) -> bool` (used by `--from auto`),
`convert(record, rid, ctx) -> Trajectory` (raises `InvalidRecord`; its output has passed `validate_record`)
and, where a format needs files beside the data (BFCL answers, Seal-Tools APIs, a --tools list), `prepare(ctx)`.
`detect` looks at the first records of a file and picks the most specific format that any of them matches, in
the order of FORMATS. `convert_file` streams one file through one converter into a `Ledger`: every record is
kept or quarantined with its file, line and reason; bad data never raises.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import TrajtuneError
from ..trajectory import InvalidRecord, Ledger, Tool, Trajectory
from .common import FileContext
from .reader import iter_records

# Most specific first: `detect` takes the first format that matches any sampled record.
FORMATS: dict[str, str] = {
    "bfcl": "BFCL question files {id, question, function|involved_classes} (+ possible_answer/)",
    "seal_tools": "Seal-Tools {id, query, calling} with tool.jsonl beside it",
    "xlam": "xLAM / APIGen {id, query, tools, answers} with JSON-string tools and answers",
    "simple": "{instruction, function_call: {name, parameters}} with --tools FILE",
    "toolbench": "ToolBench answers {answer_generation} or queries {query, api_list}",
    "glaive": "glaive-function-calling-v2 raw {system, chat} text",
    "toolace": "ToolACE ShareGPT with the function list in `system`",
    "hermes": "Hermes function-calling ShareGPT with <tools>/<tool_call>/<tool_response>",
    "agentinstruct": "AgentInstruct ShareGPT with per-turn loss flags",
    "chatglm3": "ChatGLM3 finetune {tools, conversations: [{role, ...}]}",
    "sharegpt": "ShareGPT {conversations: [{from, value}]}, incl. LLaMA-Factory function_call/observation + tools",
    "llamafactory_v1": "LLaMA-Factory v1 messages with typed content parts and/or loss_weight",
    "glm4": "GLM-4 finetune messages with system tools and observation",
    "openai": "OpenAI chat {tools|functions, messages} (canonical files too)",
}
SAMPLE = 20  # records `detect` looks at


def get(name: str) -> ModuleType:
    """The converter module for a format name; TrajtuneError listing the names for an unknown one."""
    if name not in FORMATS:
        raise TrajtuneError(f"unknown format {name!r}; choose one of: auto, {', '.join(FORMATS)}")
    return importlib.import_module(f".{name}", __name__)


def _is_record(obj: dict[str, Any]) -> bool:
    return any(get(name).looks_like(obj) for name in FORMATS)


def records(path: str | Path) -> Any:
    """(line, raw, record-or-InvalidRecord) for each record of a file; see reader.iter_records."""
    return iter_records(Path(path), _is_record)


def detect(path: str | Path) -> tuple[str, str]:
    """(format, why) for a file, from its first records. TrajtuneError saying what was seen if none fits.

    >>> detect("openai_chat_tools.jsonl")  # doctest: +SKIP
    ('openai', '3 of the first 3 records look like OpenAI chat ...')
    """
    sample: list[dict[str, Any]] = []
    for _, _, obj in records(path):
        if isinstance(obj, dict):
            sample.append(obj)
            if len(sample) == SAMPLE:
                break
    if not sample:
        raise TrajtuneError(
            f"{path}: cannot detect the format: no JSON object among its first records "
            "(empty, not UTF-8 or not JSON); pass --from FORMAT to convert it and quarantine the rest"
        )
    for name, description in FORMATS.items():
        hits = sum(1 for r in sample if get(name).looks_like(r))
        if hits:
            return name, f"{hits} of the first {len(sample)} records look like {description}"
    keys = ", ".join(sorted(sample[0])[:12])
    hint = (
        " (it looks like a Seal-Tools API list, which the data files use, not records)"
        if "api_name" in sample[0]
        else ""
    )
    raise TrajtuneError(
        f"{path}: cannot detect the format: the first record has keys [{keys}], which match none of "
        f"{', '.join(FORMATS)}{hint}; pass --from FORMAT if you know it"
    )


def convert_file(
    path: str | Path,
    fmt: str,
    ledger: Ledger,
    write: Callable[[Trajectory], None],
    tools: list[Tool] | None = None,
) -> None:
    """Convert every record of `path` with format `fmt`: kept records go to `write`, the rest to `ledger`.

    Constant memory for JSONL input. Record ids default to `<file stem>:<line>`.
    """
    module = get(fmt)
    path = Path(path)
    ctx = FileContext(path=path, tools=tools)
    if hasattr(module, "prepare"):
        module.prepare(ctx)
    stem, name = path.stem, str(path)
    convert = module.convert
    for line, raw, obj in records(path):
        try:
            if isinstance(obj, InvalidRecord):
                raise obj
            record = convert(obj, f"{stem}:{line}", ctx)
        except InvalidRecord as e:
            ledger.reject(name, line, e, raw)
            continue
        except Exception as e:  # a shape no converter rule foresaw: still data, so quarantine it, never crash
            ledger.reject(name, line, InvalidRecord("unsupported", f"{fmt} converter: {type(e).__name__}: {e}"), raw)
            continue
        write(record)
        ledger.keep()
