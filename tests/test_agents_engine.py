"""The local generation engine on a tiny random Llama with a Qwen2.5-template BPE: batching, stops, the hook.

Greedy generation of a batch (left-padded, KV cache) must give each row exactly what it gives alone; each row
stops on its own at a stop string or an end-of-turn token; a logits processor passed per call steers generation;
and the `hf:` policy steps many rollout episodes with one generate call per turn.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TEMPLATES
from test_agents_rollout import FACTS, LookupEnv

from trajtune.data_builders.agents import make_policy, rollout_batch
from trajtune.data_builders.agents.engine import Engine, GenerationOptions, recorded_prompt_format
from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.tokenizer import train_bpe_tokenizer
from trajtune.data_builders.trajectory import validate_record
from trajtune.trainer.modeling import make_tiny_llama

CONVERSATIONS = [
    [{"role": "user", "content": "What is the value of k1?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me the values of k2 and k3, "
                                                                              "then say which one is larger."}],
    [{"role": "user", "content": "hi"}],
]
OPTS = GenerationOptions(max_new_tokens=24)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    texts = ["What is the value of k1? The value is v7. I will look it up.",
             '<tool_call>\n{"name": "lookup", "arguments": {"key": "k1"}}\n</tool_call>'] * 40
    tok = train_bpe_tokenizer(texts, vocab_size=400, template=(TEMPLATES / "qwen2.5-instruct.jinja").read_text())
    return make_tiny_llama(str(tmp_path_factory.mktemp("tiny")), len(tok), tok)


@pytest.fixture(scope="module")
def engine(model_dir) -> Engine:
    return Engine(model_dir)


@pytest.fixture(scope="module")
def alone(engine) -> list:
    return [engine.generate([engine.format.prompt(c)], OPTS)[0] for c in CONVERSATIONS]


class ForceText:
    """A logits processor forcing rows `rows` to generate the token ids `ids`, then whatever the model likes."""

    def __init__(self, ids: list[int], rows: set[int] | None = None):
        self.ids, self.rows, self.width, self.last = ids, rows, 0, -2

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cur = input_ids.shape[1]
        if cur != self.last + 1:  # a new generate call: its prompt ends here
            self.width = cur
        self.last, step = cur, cur - self.width
        if step < len(self.ids):
            for r in range(scores.shape[0]) if self.rows is None else self.rows:
                scores[r] = float("-inf")
                scores[r, self.ids[step]] = 0.0
        return scores


def test_batched_greedy_equals_one_by_one(engine, alone):
    prompts = [engine.format.prompt(c) for c in CONVERSATIONS]
    lengths = [len(engine.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert len(set(lengths)) == 3  # the batch really pads
    batched = engine.generate(prompts, OPTS)
    assert [(g.text, g.completion_tokens, g.prompt_tokens) for g in batched] == \
        [(g.text, g.completion_tokens, n) for g, n in zip(alone, lengths)]
    assert all(g.finish_reason == "length" and g.completion_tokens == 24 for g in batched)  # random weights
    assert len({g.text for g in batched}) == 3
    chunked = engine.generate(prompts, GenerationOptions(max_new_tokens=24, batch_size=2))  # 2 + 1, in order
    assert [g.text for g in chunked] == [g.text for g in alone]


def test_sampling_is_seeded(engine, alone):
    prompts = [engine.format.prompt(c) for c in CONVERSATIONS]

    def sample(seed: int) -> list[str]:
        return [g.text for g in engine.generate(prompts, GenerationOptions(max_new_tokens=24, temperature=1.5,
                                                                           seed=seed))]

    first = sample(0)
    assert sample(0) == first and sample(1) != first and first != [g.text for g in alone]


def test_each_row_stops_at_its_own_stop_string(engine, alone):
    tok = engine.tokenizer
    first = tok(alone[0].text, add_special_tokens=False)["input_ids"]
    # A stop string the model writes naturally in row 0: a multi-character ASCII token past its start.
    stop = next(s for i in first[2:] if len(s := tok.decode([i])) >= 2 and s.isascii() and s.isprintable())
    got = engine.generate([engine.format.prompt(c) for c in CONVERSATIONS], GenerationOptions(max_new_tokens=24,
                                                                                             stop=(stop,)))
    assert got[0].finish_reason == "stop" and got[0].text == alone[0].text[:alone[0].text.find(stop)]
    for g, full in zip(got, alone):
        assert g.text == (full.text[:full.text.find(stop)] if stop in full.text else full.text)


def test_end_of_turn_token_ends_one_row_and_the_hook_steers(engine, alone):
    tok = engine.tokenizer
    ids = tok(alone[1].text, add_special_tokens=False)["input_ids"][:3] + [tok.convert_tokens_to_ids("<|im_end|>")]
    got = engine.generate([engine.format.prompt(c) for c in CONVERSATIONS], OPTS, logits_processor=[
        ForceText(ids, rows={1})])
    assert (got[1].text, got[1].finish_reason, got[1].completion_tokens) == (tok.decode(ids[:3]), "stop", 4)
    assert [g.text for g in (got[0], got[2])] == [alone[0].text, alone[2].text]  # the other rows run on


def test_hf_policy_rolls_out_many_episodes_one_generate_call_per_turn(model_dir, monkeypatch):
    call = '<tool_call>\n{"name": "lookup", "arguments": {"key": "k1"}}\n</tool_call><|im_end|>'
    policy = make_policy(f"hf:{model_dir}", max_new_tokens=40)
    policy.logits_processor = [ForceText(policy.engine.tokenizer(call, add_special_tokens=False)["input_ids"])]
    sizes: list[int] = []
    batch = policy.engine._generate_batch
    monkeypatch.setattr(policy.engine, "_generate_batch", lambda prompts, *a: sizes.append(len(prompts)) or
                        batch(prompts, *a))
    tasks = LookupEnv().tasks()[:3]
    out = rollout_batch(LookupEnv, policy, tasks, max_turns=2)
    assert sizes == [3, 3]
    for traj in out:
        assert validate_record(traj) == traj and traj["meta"]["policy"] == f"hf:{model_dir}"
        calls = [m["tool_calls"][0]["function"] for m in traj["messages"] if m.get("tool_calls")]
        assert calls == [{"name": "lookup", "arguments": {"key": "k1"}}] * 2
        results = [json.loads(m["content"]) for m in traj["messages"] if m["role"] == "tool"]
        assert results == [{"key": "k1", "value": FACTS["k1"]}] * 2 and traj["meta"]["end"] == "max_turns"


def test_export_records_the_prompt_format(tmp_path):
    model = tmp_path / "final"
    model.mkdir()
    assert recorded_prompt_format(model) is None
    data = tmp_path / "built"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"prompt_format": "react"}))
    (model / "trajtune.json").write_text(json.dumps({"config": {"data": str(data)}}))
    assert recorded_prompt_format(model) == "react"  # from the run's data manifest
    (model / "trajtune.json").write_text(json.dumps({"prompt_format": "tool-prompt", "config": {"data": str(data)}}))
    assert recorded_prompt_format(model) == "tool-prompt"  # the export's own record wins
    (model / "trajtune.json").write_text("{not json")
    with pytest.raises(TrajtuneError, match="trajtune.json: not readable JSON"):
        recorded_prompt_format(model)


def test_generation_options_are_checked():
    with pytest.raises(TrajtuneError, match="unknown generation option.*max_tokens"):
        GenerationOptions.of({"max_tokens": 5}, "hf:x")
    with pytest.raises(TrajtuneError, match="temperature >= 0"):
        GenerationOptions.of({"temperature": -1}, "hf:x")
    assert GenerationOptions.of({"stop": "END"}, "hf:x").stop == ("END",)
