"""The template battery: conversation shapes with markers, and a checker that grades every (template x shape) cell.

Every piece of text in a shape carries a distinctive marker: `SYSX1` in system text, `USRX1` in user text, `ASTX1`
in assistant text, `RSNX1` in reasoning, `ARGX1` in call arguments, `lookup_fnx1` as a function name, `DESCX1` in
a tool's description, `TOOLX1` in a tool result, `UNTRX1` in an assistant turn with `loss: false`. So the checker
can tell from the trained tokens alone (the runs of `loss_mask == 1`, decoded) whether exactly the right things are
trained, without trusting the renderer's own account of its spans:

- `correct`: every marker of every trained assistant message is trained (its text, reasoning, call names and
  argument values); no other marker is; each trained run ends with an end-of-turn token and has nothing after the
  first one (harmony's `<|end|>` between two messages of one generation excepted); no run starts with the
  generation header; and where the template writes tool calls itself, the trained calls are written its way
  (each name and argument value in the same context as in `apply_chat_template`'s own render).
- `wrong`: a mask was returned and one of those fails. The class that must be empty.
- `declined`: `render_with_mask` raised a TrajtuneError (RenderError: `.reason`); the reason is recorded.
- `crashed`: it raised anything else (a bug: bad input must be a TrajtuneError).

A `correct` cell may still render lossily: `lost` lists the markers of untrained text (system, user, tool) that do
not appear in the rendered text at all (a template that silently drops the system message).

`measure(paths, mode)` grades every template x shape with one of two byte-level tokenizers: "bare", made from the
template alone (`load_tokenizer(None, path)`, what `--template T.jinja` gives a user), or "model", with the real
model's bos/eos and turn tokens where those differ from the bare tokenizer's guess (MODEL_TOKENS).
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "templates"  # the repo's corpus (SOURCES.md)
SHARED_TEMPLATES = HERE.parents[1] / "shared" / "fixtures" / "templates"

MARKER_RE = re.compile(r"[A-Z]{3,4}X\d+|[a-z]+_fnx\d+")

# End-of-turn / end-of-message tokens of real model families (checked against the corpus): a trained run must end
# with one (or with the tokenizer's eos), and none may occur earlier in it. Text, so it works with any tokenizer.
END_OF_TURN = (
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
    "<|END_OF_TURN_TOKEN|>", "</s>", "<|endoftext|>", "<｜end▁of▁sentence｜>", "<|end_of_text|>", "<|end_of_turn|>",
    "<|user|>", "<|observation|>", "<seed:eos>", "<|eom|>", "<|eot|>", "[|endofturn|]", "<|stop|>", "<SPECIAL_12>",
    "<eos>",
)
# A stop inside one generation: harmony ends the analysis message with <|end|> and goes on with the final one.
_CONTINUES = re.compile(r"<\|end\|><\|start\|>assistant")


# ---------------------------------------------------------------------------------------------------------
# Shapes


def _tool(name: str, k: int) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": f"DESCX{k} tool.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "What to find."}},
                       "required": ["query"]}}}


def _call(k: int, name: str, arg: str) -> dict:
    return {"id": f"call_{k}", "type": "function", "function": {"name": name, "arguments": {"query": arg}}}


def _result(k: int, text: str) -> dict:
    return {"role": "tool", "tool_call_id": f"call_{k}", "content": f'{{"found": "{text}"}}'}


def _sys(k: int) -> dict:
    return {"role": "system", "content": f"SYSX{k} You are a careful assistant."}


def _user(k: int) -> dict:
    return {"role": "user", "content": f"USRX{k} please help."}


def _asst(k: int, **extra) -> dict:
    return {"role": "assistant", "content": f"ASTX{k} here you go.", **extra}


def _calls(*calls: dict, content: str | None = None) -> dict:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


# name -> canonical record. Markers are unique across the battery, so a cell's trained text names what it trained.
SHAPES: dict[str, dict] = {
    "multi_turn_system": {"messages": [_sys(1), _user(1), _asst(1), _user(2), _asst(2)]},
    "single_call": {"tools": [_tool("lookup_fnx1", 1)], "messages": [
        _sys(2), _user(3), _calls(_call(1, "lookup_fnx1", "ARGX1")), _result(1, "TOOLX1"), _asst(3)]},
    "parallel_calls": {"tools": [_tool("lookup_fnx2", 2), _tool("convert_fnx3", 3)], "messages": [
        _sys(3), _user(4), _calls(_call(2, "lookup_fnx2", "ARGX2"), _call(3, "convert_fnx3", "ARGX3")),
        _result(2, "TOOLX2"), _result(3, "TOOLX3"), _asst(4)]},
    "second_round": {"tools": [_tool("search_fnx4", 4), _tool("search_fnx5", 5)], "messages": [
        _sys(4), _user(5), _calls(_call(4, "search_fnx4", "ARGX4")), _result(4, "TOOLX4"), _asst(5),
        _user(6), _calls(_call(5, "search_fnx5", "ARGX5")), _result(5, "TOOLX5"), _asst(6)]},
    "loss_false": {"messages": [  # no system message: the plain chat most data is
        _user(7), {"role": "assistant", "content": "UNTRX1 not this one.", "loss": False},
        _user(8), _asst(7)]},
    # `reasoning_content` (not yet in the canonical schema's Message type, but kept by validate_record, written by
    # the llamafactory_v1 converter and passed to templates by the renderer): the thought the model writes first.
    "reasoning": {"messages": [
        _user(9), _asst(8, reasoning_content="RSNX1 think first."),
        _user(10), _asst(9, reasoning_content="RSNX2 think again.")]},
    "content_and_call": {"tools": [_tool("lookup_fnx6", 6)], "messages": [
        _sys(5), _user(11), _calls(_call(6, "lookup_fnx6", "ARGX6"), content="ASTX10 let me look."),
        _result(6, "TOOLX6"), _asst(11)]},
}


def shape_record(name: str) -> dict:
    """The validated canonical record of shape `name` (a fresh copy)."""
    from trajtune.data_builders.trajectory import validate_record

    return validate_record({"id": name, **copy.deepcopy(SHAPES[name])})


def expected_markers(record: dict) -> tuple[set[str], set[str]]:
    """(markers that must be trained, markers that must not be): a trained assistant message's content, reasoning,
    call names and argument values must; everything else (system, user, tool, descriptions, untrained turns)
    must not."""
    from trajtune.data_builders.trajectory import message_trained

    must, never = set(), set()
    for t in record.get("tools") or []:
        never.update(MARKER_RE.findall(t["function"].get("description", "")))
    for m in record["messages"]:
        texts = [m.get("content") or "", m.get("reasoning_content") or ""]
        for c in m.get("tool_calls") or []:
            texts += [c["function"]["name"], *map(str, c["function"]["arguments"].values())]
        found = {x for t in texts for x in MARKER_RE.findall(t)}
        (must if m["role"] == "assistant" and message_trained(m) else never).update(found)
    return must, never


# ---------------------------------------------------------------------------------------------------------
# Checker


@dataclass
class Cell:
    template: str
    shape: str
    mode: str  # the tokenizer: "bare" (from the template alone) or "model" (the model's own special tokens)
    verdict: str  # correct | wrong | declined | crashed
    detail: str = ""  # wrong: what is wrong; declined: the reason key; crashed: the exception
    message: str = ""  # declined / crashed: the error's text
    lost: list[str] = field(default_factory=list)  # untrained markers missing from the rendered text
    trained: list[str] = field(default_factory=list)  # the decoded trained runs


def trained_runs(tokenizer, input_ids: list[int], loss_mask: list[int]) -> list[str]:
    """The text of each maximal run of trained tokens (what the loss sees), decoded."""
    runs, cur = [], []
    for i, keep in zip(input_ids, loss_mask):
        if keep:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer.decode(run) for run in runs]


def generation_header(tokenizer) -> str:
    """What add_generation_prompt adds after one user turn ("" if that cannot be measured)."""
    msgs = [{"role": "user", "content": "hi"}]
    try:
        plain = tokenizer.apply_chat_template(msgs, tokenize=False)
        gen = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that cannot render one user turn: no header check
        return ""
    return gen[len(plain):] if gen.startswith(plain) else ""


def check_runs(runs: list[str], must: set[str], never: set[str], eos: str | None, header: str) -> str:
    """"" if the trained runs are exactly right, else what is wrong (the first problem found)."""
    found = {x for r in runs for x in MARKER_RE.findall(r)}
    if missing := sorted(must - found):
        return f"not trained: {', '.join(missing)}"
    if extra := sorted(found & never):
        return f"trained: {', '.join(extra)}"
    stops = sorted({*END_OF_TURN, *([eos] if eos else [])}, key=len, reverse=True)  # longest first, as tokens match
    stop_re = re.compile("|".join(map(re.escape, stops)))
    for r in runs:
        if not MARKER_RE.search(r):
            return f"a trained run holds no message text: {r!r}"
        if header.strip() and r.startswith(header):
            return f"the generation header is trained: {r[:60]!r}"
        body = _CONTINUES.sub("", r)
        first = stop_re.search(body)
        if first is None:
            return f"a trained run does not end with an end-of-turn token: ...{r[-40:]!r}"
        if first.end() != len(body):
            return f"trained after the end-of-turn token {first.group(0)!r}: ...{r[-40:]!r}"
    return ""


def native_render(tokenizer, record: dict) -> list[str] | None:
    """The record rendered by the template itself (apply_chat_template, no trajtune shaping), or None when no form of
    it renders every call: arguments as a dict or a JSON string, a call-only turn's content "" or None. Two renders
    where ids matter: with the record's ids, and with Kimi K2's documented `functions.NAME:INDEX` ids (its
    template writes the id where the name goes)."""
    # Argument values, not names: a template that ignores tool_calls still names every tool in its tool list.
    values = [str(v) for m in record["messages"] for c in m.get("tool_calls") or [] for v in c["function"]["arguments"].values()]
    calls = [c["id"] for m in record["messages"] for c in m.get("tool_calls") or []]
    names = {c["id"]: c["function"]["name"] for m in record["messages"] for c in m.get("tool_calls") or []}
    kimi = {i: f"functions.{names[i]}:{k}" for k, i in enumerate(calls)}
    for as_string, content in ((False, ""), (False, None), (True, ""), (True, None)):
        texts = []
        for ids in ({}, kimi):
            msgs = []
            for m in record["messages"]:
                m = {k: v for k, v in m.items() if k != "loss"}
                if m.get("tool_calls"):
                    m["content"] = m.get("content") or content
                    m["tool_calls"] = [{**c, "id": ids.get(c["id"], c["id"]), "function": {
                        **c["function"], "arguments": json.dumps(c["function"]["arguments"]) if as_string
                        else c["function"]["arguments"]}} for c in m["tool_calls"]]
                if "tool_call_id" in m:
                    m["tool_call_id"] = ids.get(m["tool_call_id"], m["tool_call_id"])
                msgs.append(m)
            try:
                texts.append(tokenizer.apply_chat_template(msgs, tools=record.get("tools") or None, tokenize=False))
            except Exception:  # this form is not the template's: try the next
                break
        if texts and all(v in texts[0] for v in values):
            return texts
    return None


def check_call_syntax(runs: list[str], record: dict, native: list[str] | str | None) -> str:
    """"" unless the template writes tool calls itself (`native`) and a trained call is written another way: each
    call name and argument value in the trained text must sit in the same few characters of context as in the
    template's own render (Qwen3-Coder writes `<function=NAME>`, GLM-4.5 `<arg_value>V`: training JSON instead
    teaches the model a syntax it was never taught to emit)."""
    if native is None:
        return ""
    natives = [native] if isinstance(native, str) else native
    pieces = [x for m in record["messages"] if message_trained_call(m) for c in m["tool_calls"]
              for x in (c["function"]["name"], *map(str, c["function"]["arguments"].values()))]
    for r in runs:
        for piece in pieces:
            i = r.find(piece)
            if i < 0:
                continue
            left, right = r[max(0, i - 6):i + len(piece)], r[i:i + len(piece) + 3]
            if not any(left in n and right in n for n in natives):
                j = natives[0].rfind(piece)  # the last one: the call, not the tool list
                return (f"call trained as {r[max(0, i - 12):i + len(piece) + 4]!r}; the template writes "
                        f"{natives[0][max(0, j - 12):j + len(piece) + 4]!r}")
    return ""


def message_trained_call(m: dict) -> bool:
    from trajtune.data_builders.trajectory import message_trained

    return m["role"] == "assistant" and bool(m.get("tool_calls")) and message_trained(m)


def grade(template_name: str, shape: str, tokenizer, header: str | None = None, mode: str = "bare",
          prompt_format: str | None = "auto", turns: str = "joint") -> Cell:
    """Render shape `shape` with `tokenizer` (its chat_template) through `render_with_mask` and grade the mask. The
    prompt format is the CLI's default, auto: a template with no tools renders them with the built-in tool-prompt.
    `turns` other than "joint": the build's samples (`render_samples`, one per trained turn where per-turn), whose
    trained runs are graded together as one record's."""
    from trajtune.data_builders.errors import TrajtuneError
    from trajtune.data_builders.render import render_with_mask
    from trajtune.data_builders.render.per_turn import render_samples

    record = shape_record(shape)
    try:
        got = render_with_mask(record, tokenizer, prompt_format) if turns == "joint" else \
            render_samples([record], tokenizer, prompt_format, turns=turns)[0]
        if isinstance(got, TrajtuneError):
            raise got
        samples = [got] if turns == "joint" else got.samples
    except TrajtuneError as e:
        return Cell(template_name, shape, mode, "declined", getattr(e, "reason", "error"), str(e))
    except Exception as e:  # noqa: BLE001 (a crash is a finding, reported as such)
        return Cell(template_name, shape, mode, "crashed", type(e).__name__, str(e))
    must, never = expected_markers(record)
    runs = [run for r in samples for run in trained_runs(tokenizer, r.input_ids, r.loss_mask)]
    header = generation_header(tokenizer) if header is None else header
    problem = check_runs(runs, must, never, tokenizer.eos_token, header)
    if not problem and any(m.get("tool_calls") for m in record["messages"]):
        problem = check_call_syntax(runs, record, native_render(tokenizer, record))
    text = "".join(r.text for r in samples)
    lost = sorted(m for m in never if m not in text and not m.startswith("DESCX"))
    return Cell(template_name, shape, mode, "wrong" if problem else "correct", problem, lost=lost, trained=runs)


# ---------------------------------------------------------------------------------------------------------
# Measurement


def corpus_paths(include_shared: bool = True) -> list[Path]:
    """The repo's corpus (tests/templates) and, if present, the 13 shared fixtures; sorted by name."""
    paths = sorted(CORPUS.glob("*.jinja"))
    if include_shared and SHARED_TEMPLATES.is_dir():
        paths += sorted(SHARED_TEMPLATES.glob("*.jinja"))
    return sorted(paths, key=lambda p: p.stem)


def bare_tokenizer(path: Path):
    """The tokenizer `--template PATH` gives a user: byte-level, with the special tokens it finds in the template."""
    from trajtune.data_builders.tokenizer import load_tokenizer

    tok = load_tokenizer(None, path)
    tok.name_or_path = path.stem  # errors name the template
    return tok


# Where the bare tokenizer's guess differs from the real model's tokenizer (tokenizer_config.json): (bos, eos, other
# special tokens the turns are built of). With these, a template is measured as a user with the model's own
# tokenizer meets it: Gemma's eos is <eos>, but its turns end with <end_of_turn> (issue 12, class 1).
MODEL_TOKENS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "gemma-": ("<bos>", "<eos>", ("<start_of_turn>", "<end_of_turn>")),
    "command-": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", ()),
    "gpt-oss-": ("<|startoftext|>", "<|return|>", ()),
    "bytedance-seed-oss-": ("<seed:bos>", "<seed:eos>", ()),
    "llama-4-": ("<|begin_of_text|>", "<|eot|>", ()),
    "exaone-": ("[BOS]", "[|endofturn|]", ("[|system|]", "[|user|]", "[|assistant|]")),
    "openchat-": ("<s>", "<|end_of_turn|>", ()),
    "olmo-2-": ("<|endoftext|>", "<|endoftext|>", ()),  # the bare guess makes <|user|> its eos
}


def model_tokenizer(path: Path):
    """A byte-level tokenizer with the real model's bos/eos and turn tokens (MODEL_TOKENS), or None where the bare
    tokenizer already has them."""
    from trajtune.data_builders.tokenizer import byte_level_tokenizer

    prefix = next((k for k in MODEL_TOKENS if path.stem.startswith(k)), None)
    if prefix is None:
        return None
    bos, eos, extra = MODEL_TOKENS[prefix]
    tok = byte_level_tokenizer(path.read_text(), [bos, eos, *extra])
    tok.bos_token, tok.eos_token = bos, eos
    tok.name_or_path = path.stem
    return tok


TOKENIZERS = {"bare": bare_tokenizer, "model": model_tokenizer}


def measure(paths: list[Path], mode: str = "bare", shapes: list[str] | None = None, turns: str = "joint") -> list[Cell]:
    """Grade every template x shape with the `mode` tokenizer (TOKENIZERS); templates it has none for are skipped.
    `turns`: as `grade`'s ("auto": what `trajtune build` trains)."""
    cells = []
    for path in paths:
        tok = TOKENIZERS[mode](path)
        if tok is None:
            continue
        header = generation_header(tok)
        cells += [grade(path.stem, s, tok, header, mode, turns=turns) for s in shapes or SHAPES]
    return cells


def totals(cells: list[Cell]) -> Counter:
    return Counter(c.verdict for c in cells)
