"""`trajtune convert`: public datasets -> canonical trajectories (JSONL), with a quarantine and a summary.

    trajtune convert data/*.jsonl --from auto --out train.jsonl --quarantine bad.jsonl [--strict] [--tools FILE]

Every input record is kept (validated, written to --out) or quarantined (`{"file", "line", "reason",
"detail", "raw"}` in --quarantine) and counted; the summary at the end reconciles read = kept + quarantined.
With `--from auto` each file's format is detected, and said, before anything is written. An INPUT directory
stands for the *.json / *.jsonl files directly inside it (sorted by name). Exit status: 0, or 1 with --strict
when anything was quarantined, or 2 for a usage problem (missing file, undetectable format) and when no record
at all was kept (the summary and the fix are printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data_builders.converters import FORMATS

    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="dataset files (.jsonl streams; .json is loaded whole), or directories of them (*.json, *.jsonl inside)",
    )
    parser.add_argument(
        "--from",
        dest="fmt",
        default="auto",
        choices=["auto", *FORMATS],
        help="input format, or auto to detect it per file (default: auto)",
    )
    parser.add_argument("--out", required=True, help="output JSONL of canonical trajectories")
    parser.add_argument("--quarantine", default=None, help="JSONL file for the records that could not be kept")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any record was quarantined")
    parser.add_argument(
        "--tools",
        default=None,
        help="JSON list of OpenAI tools for formats that name calls but not tools (simple, seal_tools)",
    )


def load_tools(path: str):
    """The --tools file as normalised OpenAI tools; TrajtuneError for anything else."""
    from ..data_builders.converters.common import tools_from_specs
    from ..data_builders.errors import TrajtuneError
    from ..data_builders.trajectory import InvalidRecord, validate_record

    try:
        with open(path, encoding="utf-8") as f:
            specs = json.load(f)
    except OSError as e:
        raise TrajtuneError(f"--tools {path}: cannot read it ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrajtuneError(f"--tools {path}: not a JSON file ({e})") from None
    if isinstance(specs, dict) and "tools" in specs:
        specs = specs["tools"]
    try:
        tools = tools_from_specs(specs, f"--tools {path}")
        return validate_record({"tools": tools, "messages": [{"role": "user", "content": ""}]})["tools"]
    except InvalidRecord as e:
        raise TrajtuneError(
            f"--tools {path}: {e.detail}; expected a JSON list of OpenAI tools "
            '([{"type": "function", "function": {"name", "description", "parameters"}}])'
        ) from None


def run(args: argparse.Namespace) -> int:
    from ..data_builders import converters
    from ..data_builders.errors import TrajtuneError
    from ..data_builders.trajectory import Ledger, dumps

    inputs = input_files(args.inputs)
    tools = load_tools(args.tools) if args.tools else None
    # Decide every file's format before writing anything, so a bad file costs nothing.
    plan = []
    for p in inputs:
        if args.fmt == "auto":
            fmt, why = converters.detect(p)
            print(f"{p}: {fmt} ({why})", file=sys.stderr)
        else:
            fmt = args.fmt
        plan.append((p, fmt))

    out_path = Path(args.out)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(out_path, "w", encoding="utf-8")
        quarantine = open(args.quarantine, "w", encoding="utf-8") if args.quarantine else None
    except OSError as e:
        raise TrajtuneError(f"cannot write {e.filename}: {e.strerror}") from None
    ledger = Ledger(quarantine=quarantine)
    try:
        with out:

            def write(record) -> None:
                out.write(dumps(record) + "\n")

            for p, fmt in plan:
                before_read, before_kept = ledger.read, ledger.kept
                converters.convert_file(p, fmt, ledger, write, tools)
                read, kept = ledger.read - before_read, ledger.kept - before_kept
                print(f"{p}: {fmt}: read {read}, kept {kept}, quarantined {read - kept}", file=sys.stderr)
    finally:
        if quarantine is not None:
            quarantine.close()

    summary = ledger.summary()
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(summary["by_reason"].items())) or "none"
    print(f"read {summary['read']} = kept {summary['kept']} + quarantined {summary['quarantined']} ({reasons})")
    print(f"wrote {out_path}" + (f"; quarantine {args.quarantine}" if args.quarantine else ""))
    if not summary["kept"]:
        raise TrajtuneError(nothing_kept(summary, plan, args.quarantine))
    return 1 if args.strict and summary["quarantined"] else 0


def input_files(inputs: list[str]) -> list[str]:
    """The files to convert: each INPUT file as given, a directory's *.json / *.jsonl files (sorted, not
    recursive). TrajtuneError for a path that does not exist or a directory without such files."""
    from ..data_builders.errors import TrajtuneError

    files: list[str] = []
    for p in inputs:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.iterdir() if f.suffix in (".json", ".jsonl") and f.is_file())
            if not found:
                raise TrajtuneError(f"input {p}: is a directory with no *.json or *.jsonl files directly in it "
                                    "(subdirectories are not searched); pass the data files or their directory")
            print(f"{p}: directory: {len(found)} files (*.json, *.jsonl)", file=sys.stderr)
            files.extend(found)
        elif path.is_file():
            files.append(p)
        else:
            raise TrajtuneError(f"input {p}: no such file or directory")
    return files


def nothing_kept(summary: dict, plan: list[tuple[str, str]], quarantine: str | None) -> str:
    """The error for a run that kept no record: the reason counts and what to try."""
    if not summary["read"]:
        return "no record was read: the input files hold no records (empty files?)"
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(summary["by_reason"].items(), key=lambda x: -x[1]))
    formats = ", ".join(sorted({fmt for _, fmt in plan}))
    see = f"see {quarantine} for each record's line and reason" if quarantine else \
        "rerun with --quarantine FILE to see each record's line and reason"
    return (f"no record was kept: all {summary['read']} quarantined ({reasons}). Wrong format? The input "
            f"was read as {formats}; pass --from FORMAT (trajtune convert --help lists them) if that is not it; {see}")
