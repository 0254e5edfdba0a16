"""`trajtune render`: show how a chat template renders trajectories and exactly which text is trained.

`trajtune render --data FILE.jsonl (--tokenizer DIR | --template FILE.jinja) [--prompt-format F] [--index I]
[--json]` (and the render options shared with `trajtune build`: --template-kwargs, --call-syntax, --reasoning,
--call-content) prints each record's rendered text with the trained text highlighted (green on a terminal, inside
`[[...]]` when piped or under NO_COLOR), or with `--json` one line per record `{"id", "text", "trained_spans",
"input_ids", "loss_mask"}`. A record the template cannot express makes the command exit 1 with the reason.
`trajtune render --check-template T.jinja` says how trajtune renders a new template: joint or per-turn (prefix
stability), the stop token per kind of message, the folds and conventions it needs, the prompt format auto picks,
then a verdict per case of the built-in battery (plain chat, single call, parallel calls, content + call in one
turn, two tool rounds, loss=false, reasoning), each decline with the option that would fix it: the way to vet a
new model's template before a long run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Input
    p.add_argument("--data", help="canonical trajectories (JSONL) to render")
    p.add_argument("--tokenizer", help="a tokenizer directory or a hub id in the Hugging Face cache (its chat "
                   "template is used unless --template is given)")
    p.add_argument("--template", help="a chat template (.jinja); alone, a byte-level tokenizer is built for it")
    add_render_options(p)
    p.add_argument("--index", type=int, default=None, help="render only the record at this 0-based index")
    # Output
    p.add_argument("--json", action="store_true", help="one JSON line per record: id, text, trained_spans, "
                   "input_ids, loss_mask")
    p.add_argument("--check-template", dest="check_template", metavar="T",
                   help="run the built-in battery on template T (.jinja) and print a verdict per case")


def add_render_options(p: argparse.ArgumentParser, default_prompt_format: str | None = "auto") -> None:
    """The flags that say how a record becomes text (shared with `trajtune build`; data_builders/render/options.py).
    `trajtune build` passes default_prompt_format=None: its defaults come from BuildConfig, under its config file."""
    from ..data_builders.render.options import CALL_CONTENT, REASONING

    p.add_argument("--prompt-format", dest="prompt_format", default=default_prompt_format,
                   help="tool prompt format: auto (the template's own tools where it has them, else tool-prompt), "
                        "none, tool-prompt, react or chatglm3 (default: auto)")
    p.add_argument("--template-kwargs", dest="template_kwargs", nargs="+", metavar="KEY=VALUE",
                   help="variables passed to the chat template (chat_template_kwargs), e.g. enable_thinking=false")
    p.add_argument("--call-syntax", dest="call_syntax", metavar="NAME",
                   help="call syntax of a template that ignores tool_calls and whose syntax cannot be inferred "
                        "(hermes, llama3, mistral, pythonic, ...)")
    p.add_argument("--reasoning", choices=list(REASONING), default=default_prompt_format and "auto",
                   help="reasoning_content: auto (where the template reads it; on a template with no place for it, "
                        "inline), inline (<think>...</think> before the answer, in the content) or drop "
                        "(default: auto)")
    p.add_argument("--call-content", dest="call_content", choices=list(CALL_CONTENT),
                   help="text next to a tool call on a template that shows only one of them: drop (default: decline)")


def render_options(args: argparse.Namespace):
    """The RenderOptions of the parsed flags."""
    from ..data_builders.render.options import RenderOptions, parse_template_kwargs

    return RenderOptions(parse_template_kwargs(args.template_kwargs), args.call_syntax, args.reasoning or "auto",
                         args.call_content)


def _named(tok, path: str | None):
    """Name the tokenizer after its template file, so errors say which template declined."""
    if path:
        tok.name_or_path = Path(path).name
    return tok


def _highlighted(text: str, spans: list[tuple[int, int]], colour: bool):
    """The text with its trained spans on green, or, without colour (a pipe, a file, NO_COLOR), inside [[ ]]."""
    from rich.text import Text

    if not colour:
        pieces, at = [], 0
        for s, e in spans:
            pieces += [text[at:s], "[[", text[s:e], "]]"]
            at = e
        return Text("".join(pieces) + text[at:])  # a Text, so rich reads no markup or :emoji: in the record
    out = Text(text)
    for s, e in spans:
        out.stylize("bold black on green", s, e)
    return out


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..data_builders.errors import TrajtuneError
    from ..data_builders.render import RenderError, check_template, render_with_mask
    from ..data_builders.render.check import describe_template
    from ..data_builders.render.prompt_formats import announce_prompt_format, resolve_prompt_format
    from ..data_builders.render.recipe import reasoning_notice
    from ..data_builders.tokenizer import load_tokenizer
    from ..data_builders.trajectory import InvalidRecord, iter_lines, parse_line, validate_record

    console = Console(highlight=False, soft_wrap=True)
    colour = console.color_system is not None and not console.no_color  # off when piped unless FORCE_COLOR
    if args.check_template:
        tok = _named(load_tokenizer(args.tokenizer, args.check_template), args.check_template)
        options = render_options(args)
        rows = check_template(tok, args.prompt_format, options)
        for line in describe_template(tok, rows, args.prompt_format, options):
            console.print(line, markup=False)
        for name, verdict, detail in rows:
            color = "yellow" if verdict == "declined" else "green"
            console.print(f"[{color}]{verdict:8}[/{color}] [bold]{name}[/bold]: ", end="")
            console.print(repr(detail), markup=False)
        return 0 if all(v != "declined" for _, v, _ in rows) else 1
    if not args.data:
        raise TrajtuneError("give --data FILE.jsonl (or --check-template T.jinja)")
    tok = _named(load_tokenizer(args.tokenizer, args.template), args.template or args.tokenizer)
    options = render_options(args)
    if note := announce_prompt_format(tok, args.prompt_format, options):
        print(f"render: {note}", file=sys.stderr)
    reasoning_note = reasoning_notice(tok, resolve_prompt_format(tok, args.prompt_format, options), options)
    failed, idx = 0, -1
    for idx, (line_no, raw) in enumerate(iter_lines(args.data)):
        if args.index is not None and idx != args.index:
            continue
        try:
            record = validate_record(parse_line(raw))
            if reasoning_note and any(m.get("reasoning_content") for m in record["messages"]):
                print(f"render: {reasoning_note}", file=sys.stderr)
                reasoning_note = None  # once
            r = render_with_mask(record, tok, args.prompt_format, options=options)
        except (InvalidRecord, RenderError) as e:
            print(f"{args.data}:{line_no}: cannot render: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"id": record.get("id"), "text": r.text, "trained_spans": [list(s) for s in r.trained_spans],
                              "input_ids": r.input_ids, "loss_mask": r.loss_mask}, ensure_ascii=False))
        else:
            console.rule(f"{record.get('id', idx)}  ({len(r.input_ids)} tokens, {sum(r.loss_mask)} trained)")
            console.print(_highlighted(r.text, r.trained_spans, colour))
    if args.index is not None and failed == 0 and idx < args.index:
        raise TrajtuneError(f"--index {args.index}: {args.data} has only {idx + 1} records")
    return 1 if failed else 0
