"""Each public format converts from its real fixture: `--from auto` picks the right converter for every file,
records keep their source ids (else `<stem>:<line>`), and the few fixture rows that are genuinely broken are
quarantined with the reason that says why, never dropped."""

import json
from pathlib import Path

import pytest
from conftest import FIXTURES

from trajtune.data_builders import converters
from trajtune.data_builders.converters import bfcl, common, glaive, seal_tools
from trajtune.data_builders.trajectory import Ledger, validate_record

DATASETS = FIXTURES / "datasets"

# file -> (format auto picks, kept, {reason: quarantined})
EXPECTED = {
    "agentinstruct_os_reconstructed.jsonl": ("agentinstruct", 2, {}),
    "chatglm3_finetune_tool_format.json": ("chatglm3", 2, {}),
    # row 1's function JSON is elided ("...") by the card it was copied from
    "glaive_function_calling_v2_raw.jsonl": ("glaive", 1, {"bad_tools": 1}),
    "glm4_finetune_readme_samples.json": ("glm4", 3, {}),
    # row 2 calls with literal "\\n" and the name inside the arguments, as the card prints it
    "hermes_function_calling_v1_card_samples.jsonl": ("hermes", 3, {"unsupported": 1}),
    "llamafactory_glaive_toolcall_sharegpt.json": ("sharegpt", 3, {}),
    "llamafactory_v1_reason_tool_use.jsonl": ("llamafactory_v1", 2, {}),
    "llamafactory_v1_sft_demo_loss_weight.jsonl": ("llamafactory_v1", 2, {}),
    "openai_chat_tools.jsonl": ("openai", 3, {}),
    "sharegpt_fastchat_dummy.json": ("sharegpt", 3, {}),
    # the second record passes postal_code 10001 (a number) where the schema says string
    "toolace_system_and_converted_conversations.json": ("toolace", 1, {"args_schema": 1}),
    "toolbench_G1_query_sample.json": ("toolbench", 1, {}),
    "toolbench_answer_G1_10_openai_functions.json": ("toolbench", 1, {}),
    "xlam_function_calling_60k_samples.jsonl": ("xlam", 2, {}),
}


def convert(path, fmt=None, tools=None):
    fmt = fmt or converters.detect(path)[0]
    out, ledger = [], Ledger()
    converters.convert_file(path, fmt, ledger, out.append, tools)
    return out, ledger.summary()


def by_id(records):
    return {r["id"]: r for r in records}


def test_every_dataset_fixture_is_expected():
    files = sorted(p.name for p in DATASETS.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl"))
    assert files == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_fixture_converts_with_auto(name):
    fmt, kept, rejected = EXPECTED[name]
    assert converters.detect(DATASETS / name)[0] == fmt
    records, summary = convert(DATASETS / name)
    assert (summary["kept"], summary["by_reason"]) == (kept, rejected)
    for r in records:
        assert r["source"] == fmt and r["id"]
        assert validate_record(r) == r  # already canonical: validating again changes nothing


def test_openai_legacy_functions_become_tools_and_tool_calls():
    records = by_id(convert(DATASETS / "openai_chat_tools.jsonl")[0])
    legacy = records["legacy_functions_weather"]
    assert legacy["tools"][0]["function"]["name"] == "get_current_weather"
    call = legacy["messages"][1]["tool_calls"][0]
    assert call["function"] == {"name": "get_current_weather", "arguments": {"location": "Boston, MA"}}
    assert legacy["messages"][2] == {
        "role": "tool",
        "name": "get_current_weather",
        "content": '{"temperature": "22", "unit": "celsius", "description": "Sunny"}',
        "tool_call_id": call["id"],
    }
    parallel = records["qwen25_parallel_calls_no_ids_args_as_dict"]["messages"]
    assert [m["tool_call_id"] for m in parallel[3:]] == [c["id"] for c in parallel[2]["tool_calls"]]
    assert records["mistral_v03_tool_call_with_id_and_tool_call_id"]["messages"][3]["tool_call_id"] == "abcdef123"


def test_sharegpt_function_call_and_observation_pair_up():
    records = convert(DATASETS / "llamafactory_glaive_toolcall_sharegpt.json")[0]
    second = records[1]
    assert second["id"] == "llamafactory_glaive_toolcall_sharegpt:39"  # the line where the element starts
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"] * 3
    assert second["messages"][1]["tool_calls"][0]["function"]["arguments"] == {
        "shape": "rectangle",
        "dimensions": [5, 3],
    }
    assert [t["function"]["name"] for t in second["tools"]] == ["calculate_area", "calculate_discount"]
    assert records[2]["tools"] == []


def test_agentinstruct_keeps_loss_flags_and_react_text():
    first = by_id(convert(DATASETS / "agentinstruct_os_reconstructed.jsonl")[0])["os_1"]
    assistant = [m for m in first["messages"] if m["role"] == "assistant"]
    assert [m.get("loss") for m in assistant] == [False, False, False, True, True, True]
    assert "loss" not in first["messages"][0]  # null means default
    assert "Act: bash" in assistant[0]["content"] and "tool_calls" not in assistant[0]


def test_glaive_quoted_arguments_become_an_object():
    prose, specs = glaive.parse_system('SYSTEM: Use them -\n{"name": "a"}\n\n{"name": "b", "parameters": {}}\n')
    assert (prose, [s["name"] for s in specs]) == ("Use them -", ["a", "b"])
    call = glaive.parse_call("""{"name": "f", "arguments": '{"k": "v", "n": [1]}'}""", "x")
    assert validate_record({"tools": [{"name": "f"}], "messages": [{"role": "assistant", "tool_calls": [call]}]})[
        "messages"
    ][0]["tool_calls"][0]["function"]["arguments"] == {"k": "v", "n": [1]}
    first = convert(DATASETS / "glaive_function_calling_v2_raw.jsonl")[0][0]
    assert first["messages"][0]["role"] == "system" and "{" not in first["messages"][0]["content"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["base_currency", "target_currency"]
    assert not first["messages"][-1]["content"].endswith("<|endoftext|>")


def test_xlam_types_become_json_schema():
    first = by_id(convert(DATASETS / "xlam_function_calling_60k_samples.jsonl")[0])["0"]
    params = first["tools"][0]["function"]["parameters"]
    assert params["properties"]["type"]["type"] == "string" and "required" not in params  # it has a default
    assert [c["function"]["arguments"] for c in first["messages"][1]["tool_calls"]] == [
        {"type": "beta"},
        {"type": "game"},
    ]
    assert common.type_schema("List[int], optional") == ({"type": "array", "items": {"type": "integer"}}, True)
    assert common.type_schema("Callable") == ({}, False)


def test_hermes_python_literal_calls_and_tool_responses():
    first = convert(DATASETS / "hermes_function_calling_v1_card_samples.jsonl")[0][0]
    assert [t["function"]["name"] for t in first["tools"]] == ["search_flights"]
    call = first["messages"][2]["tool_calls"][0]["function"]
    assert call["name"] == "search_flights" and call["arguments"]["flexible_cancellation"] is True
    tool = first["messages"][3]
    assert tool["name"] == "search_flights" and json.loads(tool["content"])["flights"][0]["flight_number"] == "AA118"


def test_chatglm3_tool_step_is_a_call_then_its_observation():
    first = convert(DATASETS / "chatglm3_finetune_tool_format.json")[0][0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "assistant", "tool", "assistant"]
    assert first["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"location": "beijing", "unit": "celsius"}
    assert first["messages"][3]["content"] == '{"temperature": 22}'


def test_glm4_json_content_of_a_defined_tool_is_a_call():
    second = convert(DATASETS / "glm4_finetune_readme_samples.json")[0][1]
    assert [t["function"]["name"] for t in second["tools"]] == ["get_recommended_books"]
    assert "tools" not in second["messages"][0]
    assert second["messages"][2]["tool_calls"][0]["function"]["arguments"] == {
        "interests": ["history", "science fiction"]
    }
    assert second["messages"][3]["role"] == "tool"


def test_toolace_maps_lossy_call_names_back_by_last_word_and_arguments():
    first = convert(DATASETS / "toolace_system_and_converted_conversations.json")[0][0]
    assert first["meta"]["renamed_calls"][0] == ["API", "Market Trends API"]
    assert first["tools"][0]["function"]["parameters"]["type"] == "object"  # was BFCL-style "dict"


def test_toolbench_answer_uses_the_longest_prefix_and_finish():
    answer = convert(DATASETS / "toolbench_answer_G1_10_openai_functions.json")[0][0]
    calls = [m["tool_calls"][0]["function"]["name"] for m in answer["messages"] if m.get("tool_calls")]
    assert calls == ["transitaires_for_transitaires", "transitaire_for_transitaires", "Finish"]
    query = convert(DATASETS / "toolbench_G1_query_sample.json")[0][0]
    assert (query["id"], [t["function"]["name"] for t in query["tools"]]) == (
        "1",
        ["checkhealth_for_squake", "projects_for_squake"],
    )


def test_llamafactory_v1_parts_reasoning_and_loss_weight():
    first = convert(DATASETS / "llamafactory_v1_reason_tool_use.jsonl")[0][0]
    call_msg = first["messages"][2]
    assert call_msg["content"] is None and call_msg["reasoning_content"].startswith("Alright")
    assert call_msg["tool_calls"][0]["function"]["arguments"] == {"title": "Inception"}
    second = convert(DATASETS / "llamafactory_v1_reason_tool_use.jsonl")[0][1]
    parallel = [m for m in second["messages"] if m["role"] == "tool"]
    assert len(parallel) == 5 and all(m["name"] == "circle_area" for m in parallel)
    demo = convert(DATASETS / "llamafactory_v1_sft_demo_loss_weight.jsonl")[0][0]
    assert [(m["role"], m["loss"]) for m in demo["messages"]] == [("user", False), ("assistant", True)]


BFCL = {  # file -> kept, quarantined
    "BFCL_v3_simple.json": (40, {}),
    "BFCL_v3_multiple.json": (40, {}),
    "BFCL_v3_parallel.json": (40, {}),
    # parallel_multiple_21 passes the expression "data['sales']" where an array is required
    "BFCL_v3_parallel_multiple.json": (39, {"args_schema": 1}),
    "BFCL_v3_irrelevance.json": (40, {}),
    "BFCL_v3_multi_turn_base.json": (10, {}),
}


@pytest.mark.parametrize("name", sorted(BFCL))
def test_bfcl_files_convert_with_possible_answers(name):
    assert converters.detect(FIXTURES / "bfcl" / name)[0] == "bfcl"
    records, summary = convert(FIXTURES / "bfcl" / name)
    assert (summary["kept"], summary["by_reason"]) == BFCL[name]
    answered = [r for r in records if r["meta"]["has_answer"]]
    assert len(answered) == (0 if "irrelevance" in name else len(records))


def test_bfcl_answer_details():
    simple = by_id(convert(FIXTURES / "bfcl" / "BFCL_v3_simple.json")[0])["simple_0"]
    assert simple["tools"][0]["function"]["parameters"]["type"] == "object"
    assert simple["messages"][-1]["tool_calls"][0]["function"]["arguments"] == {
        "base": 10,
        "height": 5,
        "unit": "units",
    }
    multi = by_id(convert(FIXTURES / "bfcl" / "BFCL_v3_multi_turn_base.json")[0])["multi_turn_base_0"]
    turns = [m for m in multi["messages"] if m["role"] == "assistant"]
    assert [c["function"]["name"] for c in turns[0]["tool_calls"]] == ["cd", "mkdir", "mv"]
    assert turns[2]["tool_calls"][0]["function"]["arguments"] == {"file_name": "final_report.pdf"}  # positional
    assert bfcl.pick(["", 0]) == 0 and bfcl.pick([""]) is bfcl._OMIT
    assert common.fix_schema({"type": "tuple", "items": {"type": "float"}, "x": {"type": "any"}}) == {
        "type": "array",
        "items": {"type": "number"},
        "x": {"type": "any"},  # not a schema position: left alone
    }
    assert common.fix_schema({"type": "dict", "properties": {"a": {"type": "any"}}}) == {
        "type": "object",
        "properties": {"a": {}},
    }


def test_seal_tools_uses_tool_jsonl_and_coerces_numeric_strings():
    records, summary = convert(FIXTURES / "seal_tools" / "test_in_domain.head100.jsonl")
    assert summary == {"read": 100, "kept": 100, "quarantined": 0, "by_reason": {}}
    first = by_id(records)["test_in_domain-easy-1"]
    assert first["messages"][1]["tool_calls"][0]["function"]["arguments"] == {
        "revenue": 0.2907590418481535,
        "expenses": 40.7,
    }
    assert first["meta"]["coerced_args"] == 1
    assert (
        seal_tools.coerce("85", {"type": "integer"}) == 85
        and seal_tools.coerce("per month", {"type": "number"}) == "per month"
    )


def test_simple_records_take_tools_from_the_tools_file(tmp_path):
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {
            "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
    ]  # fmt: skip
    data = tmp_path / "simple.jsonl"
    rows = [
        {"instruction": "Weather in Paris?", "function_call": {"name": "get_weather", "parameters": {"city": "Paris"}}},
        {"instruction": "Time in Tokyo?", "function_call": {"name": "get_time", "parameters": {"location": "Tokyo"}}},
        {"instruction": "Stock price?", "function_call": {"name": "get_stock", "parameters": {}}},
        {"instruction": "Weather?", "function_call": {"name": "get_weather", "parameters": {"town": "Rome"}}},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert converters.detect(data)[0] == "simple"
    records, summary = convert(data, tools=tools)
    assert summary["by_reason"] == {"undefined_tool": 1, "args_schema": 1}
    assert (
        records[1]["id"] == "simple:2" and records[1]["messages"][1]["tool_calls"][0]["function"]["name"] == "get_time"
    )
    with pytest.raises(converters.TrajtuneError, match="--tools"):
        convert(data)


def test_undetectable_file_is_a_clear_error(tmp_path):
    with pytest.raises(converters.TrajtuneError, match="Seal-Tools API list"):
        converters.detect(FIXTURES / "seal_tools" / "tool.jsonl")
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"not json\n\xff\xfe\n")
    with pytest.raises(converters.TrajtuneError, match="no JSON object"):
        converters.detect(junk)


def test_records_report_the_line_each_json_element_starts_on(tmp_path):
    path = Path(tmp_path / "a.json")
    path.write_text('[\n {"messages": [{"role": "user", "content": "a"}]},\n\n {"messages": []},\n 7,\n {"x": \n')
    got = [
        (line, type(obj).__name__ if not isinstance(obj, dict) else "dict") for line, _, obj in converters.records(path)
    ]
    assert got == [(2, "dict"), (4, "dict"), (5, "InvalidRecord"), (6, "InvalidRecord")]


def test_hermes_tool_turn_text_outside_response_blocks_is_quarantined_not_dropped(tmp_path):
    record = {"id": "h1", "conversations": [
        {"from": "system", "value": '<tools>[{"type": "function", "function": {"name": "f", "parameters": '
                                    '{"type": "object", "properties": {}}}}]</tools>'},
        {"from": "human", "value": "call f"},
        {"from": "gpt", "value": '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'},
        {"from": "tool", "value": '<tool_response>\n{"name": "f", "content": 1}\n</tool_response>\nExtra note.'},
        {"from": "gpt", "value": "done"}]}
    path = tmp_path / "hermes.jsonl"
    path.write_text(json.dumps(record) + "\n")
    out, summary = convert(path, "hermes")
    assert out == [] and summary["by_reason"] == {"unsupported": 1}
    path.write_text(json.dumps(record).replace("\\nExtra note.", "") + "\n")
    out, summary = convert(path, "hermes")
    assert len(out) == 1 and out[0]["messages"][3]["content"] == "1"


def test_bfcl_optional_parameters_with_null_answers_are_omitted_not_null(tmp_path):
    # BFCL's live categories spell "optional, null default" as ["", null]; null violates the parameter's type, so
    # writing it quarantined the record (42 of 258 in live_simple). Here the simple fixture's own optional
    # parameters ("" among the answers, not required by the function) are respelled that way: 18 of 40 records.
    src = FIXTURES / "bfcl"
    required = {json.loads(q)["id"]: {f["name"]: set(f["parameters"].get("required", ())) for f in json.loads(q)["function"]}
                for q in (src / "BFCL_v3_simple.json").read_text().splitlines()}
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "BFCL_v3_simple.json").write_text((src / "BFCL_v3_simple.json").read_text())
    optional: dict[str, set[tuple[str, str]]] = {}
    with open(tmp_path / "possible_answer" / "BFCL_v3_simple.json", "w") as out:
        for line in (src / "possible_answer" / "BFCL_v3_simple.json").read_text().splitlines():
            answer = json.loads(line)
            for entry in answer["ground_truth"]:
                for name, args in entry.items():
                    for key, values in args.items():
                        if "" in values and key not in required[answer["id"]][name]:
                            args[key] = ["", None]
                            optional.setdefault(answer["id"], set()).add((name, key))
            out.write(json.dumps(answer) + "\n")
    assert len(optional) == 18
    original = by_id(convert(src / "BFCL_v3_simple.json")[0])
    records, summary = convert(tmp_path / "BFCL_v3_simple.json")
    assert (summary["kept"], summary["quarantined"]) == (40, 0)
    for rid, record in by_id(records).items():
        calls = [c["function"] for c in record["messages"][-1]["tool_calls"]]
        before = [c["function"] for c in original[rid]["messages"][-1]["tool_calls"]]
        dropped = optional.get(rid, set())
        assert [c["name"] for c in calls] == [c["name"] for c in before]
        for call, old in zip(calls, before):
            assert call["arguments"] == {k: v for k, v in old["arguments"].items() if (call["name"], k) not in dropped}


def test_bfcl_pick_prefers_a_value_that_fits_then_omission():
    integer, required_str = {"type": "integer"}, {"type": "string"}
    assert bfcl.pick(["", None]) is bfcl._OMIT and bfcl.pick([None, ""], integer) is bfcl._OMIT
    assert bfcl.pick(["", "dontcare"], integer) is bfcl._OMIT  # omission accepted, the value does not fit
    assert bfcl.pick(["dontcare"], integer) == "dontcare"  # nothing else accepted: validation will say why
    assert bfcl.pick(["", "units"], required_str) == "units" and bfcl.pick(["N/A", 3], integer) == 3
    assert bfcl.pick([None], required_str) is bfcl._OMIT  # null default of a parameter that may be left out
    assert bfcl.pick([None], required_str, required=True) is None  # BFCL demands null for a required one
    assert bfcl.pick(["", None], integer, required=True) is None  # its checker never lets a required one go missing
    nested = {"type": "object", "properties": {"a": integer, "b": integer}, "required": ["a"]}
    assert bfcl.pick([{"a": [1], "b": ["", None]}], nested) == {"a": 1}
