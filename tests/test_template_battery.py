"""The template battery (issue 12, phase 1): the corpus, the shapes, the checker, and today's baseline.

`bench/template_battery.py` grades every template (tests/templates + the 13 shared fixtures) x every shape of
`template_battery.py` from the trained tokens alone. Pinned here, as stable facts only:
- every cell correct today stays correct (BASELINE: `c`; `-` declined and `w` wrong may change);
- no cell is wrong (KNOWN_WRONG is empty since phase 2), none crashes;
- the issue's targets, as `trajtune build` trains (--turns auto): >= 90% of the bare cells correct, and every
  declined cell names the option (a `--flag`) that would render it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest
import template_battery as tb
from conftest import ROOT

from trajtune.data_builders.render import render_with_mask

# template -> one letter per shape, in SHAPES order (multi_turn_system, single_call, parallel_calls, second_round,
# loss_false, reasoning, content_and_call): c correct, w wrong, - declined. Measured as `trajtune build` trains
# (--turns auto), after --reasoning auto and the per-turn classes (issue 12, phase 3).
BASELINE = {
    "bare": """
    bytedance-seed-oss-36b-instruct      ccccccc
    chatglm3-6b                          ccccccc
    command-a-03-2025                    cccccc-
    command-r-plus-tool_use              c---cc-
    command-r-v01                        ccccccc
    command-r-v01-tool_use               c---cc-
    command-r7b-12-2024                  ccccccc
    command-r7b-12-2024-tool_use         cccccc-
    deepseek-r1                          ccc-ccc
    deepseek-r1-0528-qwen3-8b            c-c-cc-
    deepseek-r1-distill-qwen-32b         c-c-cc-
    deepseek-v3                          c-c-cc-
    deepseek-v3.1                        ccccc-c
    devstral-small-2507                  ccccccc
    exaone-3.5-7.8b-instruct             ccccccc
    exaone-deep-2.4b                     ccccccc
    falcon2-11b                          -------
    firefunction-v1                      ccccccc
    firefunction-v2                      -------
    functionary-medium-v2.2              ccccccc
    functionary-medium-v3.1              ccccccc
    functionary-medium-v3.2              ccccccc
    gemma-2-2b-it                        ccccccc
    gemma-3-1b-it                        ccccccc
    gemma-3-it                           ccccccc
    gemma-7b-it                          ccccccc
    glm-4-9b-chat                        ccccccc
    glm-4.5                              ccccccc
    glm-5.1                              ccccccc
    gpt-oss-120b                         ccccccc
    granite-3.0-8b-instruct              ccccccc
    granite-3.2-8b-instruct              ccccccc
    granite-3.3-instruct                 ccccccc
    granite-4.0                          ccccccc
    hammer2.1                            c---cc-
    hermes-2-pro-tool_use                cccccc-
    hermes-3-llama-3.1-70b               ccccccc
    internlm2-chat-7b                    ccccccc
    jamba-large-1.6                      ccccccc
    kimi-k2-instruct                     ccccccc
    kimi-k2-thinking                     ccccccc
    lfm2                                 c---cc-
    lfm2.5                               ccccccc
    llama-2-chat                         ccccccc
    llama-3-8b-instruct                  ccccccc
    llama-3.1-instruct                   cccccc-
    llama-3.1-nemotron-70b-instruct      cccccc-
    llama-3.2-11b-vision-instruct        cccccc-
    llama-3.2-3b-instruct                cccccc-
    llama-4-scout-17b-16e-instruct       ccccccc
    minicpm3-4b                          ccccccc
    mistral-7b-instruct-v0.1             ccccccc
    mistral-7b-instruct-v0.2             ccccccc
    mistral-7b-instruct-v0.2-v1-system   ccccccc
    mistral-7b-instruct-v0.3             cccccc-
    mistral-large-instruct-2411          ccccccc
    mistral-nemo-instruct-2407           ccccccc
    mistral-small-24b-instruct-2501      ccccccc
    mistral-small-3.2-24b-instruct-2506  ccccccc
    nemotron-3-nano                      ccccccc
    nemotron-mini-4b-instruct            c---cc-
    nvidia-nemotron-nano-9b-v2           ccccc--
    olmo-2-1124-7b-instruct              ccccccc
    openchat-3.5-0106                    ccccccc
    phi-3-medium-4k-instruct             ccccccc
    phi-3-mini-4k-instruct               ccccccc
    phi-3.5-mini-instruct                ccccccc
    phi-4                                ccccccc
    phi-4-mini-instruct                  ccccccc
    phi-4-mini-reasoning                 ccccccc
    phi-4-reasoning                      ccccccc
    qwen2.5-instruct                     ccccccc
    qwen2.5-vl-7b-instruct               ccccccc
    qwen3                                ccccccc
    qwen3-coder-30b-a3b-instruct         ccccccc
    qwen3-instruct-2507                  ccccccc
    qwen3.5-4b                           ccccccc
    qwq-32b                              ccccccc
    smollm2-135m-instruct                ccccccc
    smollm3-3b                           ccccccc
    trl-qwen2_5_training                 ccccccc
    """,
    "model": """
    bytedance-seed-oss-36b-instruct  ccccccc
    command-a-03-2025                cccccc-
    command-r-plus-tool_use          c---cc-
    command-r-v01                    ccccccc
    command-r-v01-tool_use           c---cc-
    command-r7b-12-2024              ccccccc
    command-r7b-12-2024-tool_use     cccccc-
    exaone-3.5-7.8b-instruct         ccccccc
    exaone-deep-2.4b                 ccccccc
    gemma-2-2b-it                    ccccccc
    gemma-3-1b-it                    ccccccc
    gemma-3-it                       ccccccc
    gemma-7b-it                      ccccccc
    gpt-oss-120b                     ccccccc
    llama-4-scout-17b-16e-instruct   ccccccc
    olmo-2-1124-7b-instruct          ccccccc
    openchat-3.5-0106                ccccccc
    """,
}

# Wrong masks: none. (Phase 1 pinned 20 here as strict xfails; phase 2 fixed them: stop tokens from the template
# (Gemma's <eos>, Seed-OSS's </s>, gpt-oss's <|end|>, all appended though never rendered) and native calls found
# by their argument values (Qwen3-Coder/Qwen3.5 <function=..><parameter=..>, GLM-4.5/5.1 <arg_key>/<arg_value>).)
KNOWN_WRONG: dict[tuple[str, str, str], str] = {}


def _baseline(mode: str) -> dict[tuple[str, str], str]:
    out = {}
    for line in BASELINE[mode].strip().splitlines():
        name, letters = line.split()
        out.update({(name, shape): letter for shape, letter in zip(tb.SHAPES, letters, strict=True)})
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[str, dict[str, dict[tuple[str, str], dict]]]:
    """The bench script run once, as a user runs it: (its stdout, mode -> (template, shape) -> cell)."""
    out = tmp_path_factory.mktemp("battery") / "cells.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "template_battery.py"), "--json", str(out)],
                         capture_output=True, text=True, check=True)
    cells = json.loads(out.read_text())
    return run.stdout, {mode: {(c["template"], c["shape"]): c for c in rows} for mode, rows in cells.items()}


# ---------------------------------------------------------------------------------------------------------
# The corpus


def test_corpus_has_40_real_templates_each_with_its_source_and_none_twice():
    files = sorted(tb.CORPUS.glob("*.jinja"))
    assert len(files) >= 40
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\S+\.jinja) \|.*@ ([0-9a-f]{40}) :", (
        tb.CORPUS / "SOURCES.md").read_text(), re.M)}
    assert sorted(rows) == [p.name for p in files]  # every file listed once, with a full commit
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in [*files, *tb.SHARED_TEMPLATES.glob("*.jinja")]]
    assert len(set(digests)) == len(digests)
    names = " ".join(p.stem for p in files)
    for family in ("qwq", "deepseek-r1-distill", "deepseek-v3.1", "gemma-2", "gemma-3", "mistral-7b-instruct-v0.1",
                   "mistral-7b-instruct-v0.2", "mistral-nemo", "mistral-small", "command-r-", "command-r-plus",
                   "gpt-oss", "llama-3.2", "nemotron", "functionary", "firefunction", "qwen3", "phi-3", "phi-4",
                   "granite", "seed-oss", "hammer", "minicpm3", "glm", "internlm", "falcon", "smollm", "kimi"):
        assert family in names, family


# ---------------------------------------------------------------------------------------------------------
# The shapes and the checker


def test_every_piece_of_text_in_every_shape_carries_its_own_marker():
    seen: list[str] = []
    for name in tb.SHAPES:
        record = tb.shape_record(name)
        texts = [t["function"]["description"] for t in record["tools"]]
        for m in record["messages"]:
            texts += [m.get("content") or "", m.get("reasoning_content") or ""]
            texts += [x for c in m.get("tool_calls") or [] for x in (c["function"]["name"], c["function"]["arguments"]["query"])]
        for text in filter(None, texts):
            assert tb.MARKER_RE.search(text), (name, text)
            seen += tb.MARKER_RE.findall(text)
    assert len(seen) == len(set(seen))  # unique across the battery: a trained marker names its message
    assert {"multi_turn_system", "single_call", "parallel_calls", "second_round", "loss_false", "reasoning"} <= set(tb.SHAPES)
    must, never = tb.expected_markers(tb.shape_record("loss_false"))
    assert "UNTRX1" in never and "ASTX7" in must
    must, _ = tb.expected_markers(tb.shape_record("reasoning"))
    assert {"RSNX1", "RSNX2"} <= must


@pytest.mark.parametrize("runs, problem", [
    (["ASTX1 ok.<|im_end|>"], ""),
    (["<|channel|>analysis<|message|>RSNX1<|end|><|start|>assistant<|channel|>final<|message|>ASTX1<|return|>"], ""),
    ([], "not trained: ASTX1"),
    (["USRX1 hi<|im_end|>", "ASTX1 ok.<|im_end|>"], "trained: USRX1"),
    (["ASTX1 ok.<end_of_turn>\n<eos>"], "trained after the end-of-turn token '<end_of_turn>'"),
    (["ASTX1 ok."], "does not end with an end-of-turn token"),
    (["<|im_start|>assistant\nASTX1 ok.<|im_end|>"], "the generation header is trained"),
    (["\n<|im_end|>", "ASTX1 ok.<|im_end|>"], "holds no message text"),
])
def test_checker_names_each_kind_of_wrong_mask(runs, problem):
    got = tb.check_runs(runs, {"ASTX1"} | ({"RSNX1"} if "RSNX1" in "".join(runs) else set()), {"USRX1"}, None,
                        "<|im_start|>assistant\n")
    assert (got == "") if not problem else (problem in got), got


def test_checker_refuses_calls_in_a_syntax_the_template_does_not_write():
    record = tb.shape_record("single_call")
    native = '<tool_call>\n<function=lookup_fnx1>\n<parameter=query>\nARGX1\n</parameter>\n</function>\n</tool_call>'
    same = [native + "<|im_end|>", "ASTX3 here you go.<|im_end|>"]
    assert tb.check_call_syntax(same, record, native) == ""
    json_call = ['<tool_call>\n{"name": "lookup_fnx1", "arguments": {"query": "ARGX1"}}\n</tool_call><|im_end|>']
    assert "the template writes" in tb.check_call_syntax(json_call, record, native)
    assert tb.check_call_syntax(json_call, record, None) == ""  # a template that ignores tool_calls: nothing to check


def test_checker_reads_the_mask_from_the_tokens_not_the_spans():
    tok = tb.bare_tokenizer(tb.SHARED_TEMPLATES / "qwen2.5-instruct.jinja")
    assert tb.grade("qwen2.5-instruct", "single_call", tok).verdict == "correct"
    record = tb.shape_record("single_call")
    r = render_with_mask(record, tok)
    must, never = tb.expected_markers(record)
    enc = tok.backend_tokenizer.encode(r.text, add_special_tokens=False)
    assert enc.ids == r.input_ids
    a = enc.char_to_token(r.text.index("USRX3"))  # train the user's marker too: the mask is now wrong
    mask = r.loss_mask[:a] + [1] * 5 + r.loss_mask[a + 5:]
    runs = tb.trained_runs(tok, r.input_ids, mask)
    assert "trained: USRX3" in tb.check_runs(runs, must, never, tok.eos_token, tb.generation_header(tok))


# ---------------------------------------------------------------------------------------------------------
# Today's baseline


def test_bench_prints_the_table_and_totals_for_every_template(bench):
    stdout, cells = bench
    for mode in ("bare", "model"):
        assert {t for t, _ in cells[mode]} == {t for t, _ in _baseline(mode)}  # a new template needs its baseline row
        assert re.search(rf"totals \({mode}\): {len(cells[mode])} cells: correct \d+", stdout)
    assert all(f"\n{t} " in stdout for t, _ in cells["bare"])


@pytest.mark.parametrize("mode", ["bare", "model"])
def test_cells_correct_today_stay_correct(bench, mode):
    _, cells = bench
    lost = [(k, cells[mode][k]["verdict"], cells[mode][k]["detail"] or cells[mode][k]["message"][:120])
            for k, letter in _baseline(mode).items() if letter == "c" and cells[mode][k]["verdict"] != "correct"]
    assert not lost


def test_no_cell_is_wrong_or_crashes_beyond_the_known_list(bench):
    _, cells = bench
    bad = [(mode, *k, c["verdict"], c["detail"]) for mode, by in cells.items() for k, c in by.items()
           if c["verdict"] == "crashed" or (c["verdict"] == "wrong" and (mode, *k) not in KNOWN_WRONG)]
    assert not bad


def test_the_targets_hold_as_the_build_trains(bench):
    _, cells = bench
    bare = list(cells["bare"].values())
    assert sum(c["verdict"] == "correct" for c in bare) >= 0.90 * len(bare)
    mute = [(mode, *k, c["message"][:160]) for mode, by in cells.items() for k, c in by.items()
            if c["verdict"] == "declined" and not re.search(r"--[a-z]", c["message"])]
    assert not mute
