"""Filters, dedup keys, decontamination and mixture sampling: pure functions on hand-made records."""

import json

import numpy as np
import pytest

from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.filters import (
    DecontamIndex,
    dialogue_text,
    duplicates,
    exact_key,
    first_index,
    has_trained_message,
    minhash_bands,
)
from trajtune.data_builders.mix import SourceSpec, parse_source_spec, sample_to_target, token_targets
from trajtune.data_builders.trajectory import validate_record

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}}}}


def record(user="What's the weather in Beijing?", answer="It is 26 C in Beijing.", args=None, **extra):
    return validate_record({"id": extra.pop("id", "r"), "tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": user},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": args or {"city": "Beijing", "unit": "C"}}}]},
        {"role": "tool", "content": '{"temp_c": 26}'},
        {"role": "assistant", "content": answer, **extra}]})


def test_exact_key_ignores_edge_whitespace_and_argument_key_order():
    assert exact_key(record()) == exact_key(record(user="  What's the weather in Beijing?\n"))
    assert exact_key(record()) == exact_key(record(args={"unit": "C", "city": "Beijing"}))


def test_exact_key_sees_text_and_argument_changes():
    assert exact_key(record()) != exact_key(record(answer="It is 27 C in Beijing."))
    assert exact_key(record()) != exact_key(record(args={"city": "Shanghai", "unit": "C"}))


def test_has_trained_message_follows_the_loss_rule():
    assert has_trained_message(record())
    untrained = record(loss=False)
    untrained["messages"][1]["loss"] = False
    assert not has_trained_message(untrained)


def test_first_index_points_every_duplicate_at_its_first_occurrence():
    assert first_index(np.array([7, 3, 7, 3, 9], dtype=np.uint64)).tolist() == [0, 1, 0, 1, 4]
    assert first_index(np.zeros(0, dtype=np.uint64)).tolist() == []


def test_duplicates_agrees_with_first_index_over_the_masked_keys():
    rng = np.random.default_rng(0)
    for trial in range(300):
        pool = rng.integers(-(2**62), 2**62, size=int(rng.integers(1, 60)))  # few distinct keys: many repeats
        keys = pool[rng.integers(0, len(pool), size=int(rng.integers(0, 300)))]
        among = rng.random(len(keys)) < 0.7
        rows = np.flatnonzero(among)
        first = first_index(keys[rows])
        dup = first != np.arange(len(rows))
        later, earliest = duplicates(keys, among)
        assert later.tolist() == rows[dup].tolist() and earliest.tolist() == rows[first[dup]].tolist(), trial
        first = first_index(keys)
        later, earliest = duplicates(keys)
        assert later.tolist() == np.flatnonzero(first != np.arange(len(keys))).tolist(), trial
        assert earliest.tolist() == first[later].tolist(), trial
    # keys a masked-out row shares never make a kept row a duplicate
    assert [x.tolist() for x in duplicates(np.array([5, 5, 6, 5]), np.array([False, True, True, True]))] == [[3], [1]]


LONG = ("the agent listed the files in the working directory then opened the configuration and found that the "
        "database port was set to an unusual value so it changed the port restarted the service and verified that "
        "the health check passed before reporting back to the user with a summary of every change it made today")


def test_minhash_bands_match_near_duplicates_and_not_unrelated_text():
    a = minhash_bands(LONG)
    near = minhash_bands(LONG.replace("unusual", "strange"))  # one word of 60 changed
    other = minhash_bands("completely different words about cooking pasta with tomatoes basil garlic and olive oil " * 3)
    assert len(a) == 16 and a == minhash_bands(LONG)
    assert set(a) & set(near)
    assert not set(a) & set(other)


def test_decontamination_finds_planted_overlap_and_reports_eval_ids(tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    items = [{"id": "eval_7", "messages": [{"role": "user", "content": LONG}]},
             {"id": "eval_8", "question": "how many moons does jupiter have according to the latest survey of the sky"}]
    eval_file.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    index = DecontamIndex([eval_file], n=13)
    planted = record(user="Please do this: " + " ".join(LONG.split()[10:30]) + ". Thanks!")
    assert index.overlaps(planted) == ["eval_7"]
    planted_in_other_shape = record(answer="Jupiter: how many moons does jupiter have according to the latest survey of the sky")
    assert index.overlaps(planted_in_other_shape) == ["eval_8"]
    assert index.overlaps(record()) == []
    assert "Beijing" in dialogue_text(record())


def test_decontamination_with_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TrajtuneError, match="does not exist"):
        DecontamIndex([tmp_path / "nope.jsonl"])


# ---------------------------------------------------------------------------------------------------------
# Mixture


def test_source_spec_syntax():
    assert parse_source_spec("a.jsonl:0.2") == SourceSpec("a.jsonl", weight=0.2)
    assert parse_source_spec("dir/b.jsonl:x2") == SourceSpec("dir/b.jsonl", epochs=2.0)
    assert parse_source_spec("c.jsonl") == SourceSpec("c.jsonl", epochs=1.0)
    assert parse_source_spec("d.jsonl:x0.5").epochs == 0.5
    for bad in ("a.jsonl:0", "a.jsonl:x0"):
        with pytest.raises(TrajtuneError):
            parse_source_spec(bad)


def test_token_targets_weighted_only_uses_the_scarcest_source_once():
    specs = [SourceSpec("agent", weight=0.2), SourceSpec("general", weight=0.8)]
    assert token_targets(specs, [1000, 100_000]) == pytest.approx([1000, 4000])
    assert token_targets(specs, [1000, 2000]) == pytest.approx([500, 2000])


def test_token_targets_with_epochs_make_weights_fractions_of_the_total():
    specs = [SourceSpec("agent", epochs=1.0), SourceSpec("general", weight=0.8)]
    assert token_targets(specs, [1000, 100]) == pytest.approx([1000, 4000])  # general up-sampled 40x
    with pytest.raises(TrajtuneError, match="sum to < 1"):
        token_targets([SourceSpec("a", epochs=1.0), SourceSpec("b", weight=1.0)], [10, 10])


def test_mixture_within_two_percent_on_10k_records():
    rng = np.random.default_rng(0)
    agent = rng.lognormal(6.5, 0.8, 2_000).astype(np.int64) + 1  # trained tokens per record
    general = rng.lognormal(5.5, 0.9, 8_000).astype(np.int64) + 1
    specs = [SourceSpec("agent", weight=0.2), SourceSpec("general", weight=0.8)]
    targets = token_targets(specs, [int(agent.sum()), int(general.sum())])
    got = [int(a[sample_to_target(a, t, np.random.default_rng([0, i]))].sum())
           for i, (a, t) in enumerate(zip([agent, general], targets))]
    share = got[0] / sum(got)
    assert abs(share - 0.2) <= 0.02 * 0.2, share
    for g, t in zip(got, targets):
        assert abs(g - t) <= 0.02 * t


def test_sampling_is_deterministic_and_takes_whole_epochs_first():
    trained = np.array([10, 20, 30, 40])
    a = sample_to_target(trained, 250, np.random.default_rng(3))
    b = sample_to_target(trained, 250, np.random.default_rng(3))
    assert a.tolist() == b.tolist()
    assert np.bincount(a, minlength=4).min() >= 2  # 250 = 2 full epochs (200) + 50 more
    assert abs(int(trained[a].sum()) - 250) <= 20


def test_exact_key_tells_apart_records_that_differ_only_in_loss_flags():
    from trajtune.data_builders.filters import exact_key
    from trajtune.data_builders.trajectory import validate_record

    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    no_loss = {"messages": [chat["messages"][0], {**chat["messages"][1], "loss": False}]}
    assert exact_key(validate_record(chat)) != exact_key(validate_record(no_loss))
    assert exact_key(validate_record(chat)) == exact_key(validate_record({**chat, "id": "other"}))


def test_decontamination_finds_an_eval_item_shorter_than_n_inside_a_longer_record(tmp_path):
    from trajtune.data_builders.filters import DecontamIndex
    from trajtune.data_builders.trajectory import validate_record

    evals = tmp_path / "eval.jsonl"
    evals.write_text('{"id": "q1", "question": "What is the weather in Beijing today please"}\n'
                     '{"id": "q2", "question": "Hello there"}\n')  # too short (2 words) to mean anything
    index = DecontamIndex([evals], n=13)
    record = validate_record({"messages": [
        {"role": "user", "content": "Quick one. What is the weather in Beijing today, please? Thanks a lot, hello there."},
        {"role": "assistant", "content": "Sunny."}]})
    assert index.overlaps(record) == ["q1"]
    clean = validate_record({"messages": [{"role": "user", "content": "What is the weather in Paris today please"},
                                          {"role": "assistant", "content": "Rain."}]})
    assert index.overlaps(clean) == []


def test_decontamination_of_canonical_eval_records_includes_tool_call_arguments(tmp_path):
    from trajtune.data_builders.filters import DecontamIndex
    from trajtune.data_builders.trajectory import validate_record

    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}]
    call = {"type": "function", "function": {"name": "lookup", "arguments": {
        "q": "one two three four five six seven eight nine ten eleven twelve thirteen"}}}
    eval_record = {"id": "e1", "tools": tools, "messages": [{"role": "user", "content": "go"},
                                                             {"role": "assistant", "content": None, "tool_calls": [call]}]}
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps(eval_record) + "\n")
    train = validate_record({**eval_record, "id": "t1"})
    assert DecontamIndex([evals], n=13).overlaps(train) == ["e1"]
