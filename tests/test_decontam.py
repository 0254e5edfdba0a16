"""Decontamination against real BFCL questions: an eval prompt copied into training is caught at any length and in
any script (whole-message match on normalised text; word runs; character runs for Chinese / Japanese), while a
message that merely contains a short common phrase, or a word of a function's docs, is not."""

import json

import pytest
from conftest import FIXTURES, TEMPLATES

from trajtune.data_builders.filters import DecontamIndex, normalise
from trajtune.data_builders.trajectory import validate_record
from trajtune.launcher.cli import main

BFCL = FIXTURES / "bfcl"
# Prompts written here (the BFCL fixtures hold no Chinese or Japanese); the first is the one issue 11 quotes.
CJK = {
    "zh_weather": "我想知道上海目前的天气状况，可以帮我查询吗？顺便使用摄氏度来显示温度。",
    "zh_short": "查询天气",
    "ja_weather": "東京の明日の天気を教えてください。",
    "ja_hotel": "ホテルを予約して",
    "ja_long": "来週の月曜日に大阪から東京までの新幹線の切符を二枚予約してください。窓側の席が良いです。",
}
TOOL = {"name": "lookup", "description": "Look something up.",
        "parameters": {"type": "dict", "properties": {"q": {"type": "string", "description": "what to look up"}},
                       "required": ["q"]}}


def chat(*user_then_assistant: str):
    messages = [{"role": role, "content": text}
                for role, text in zip(["user", "assistant"] * len(user_then_assistant), user_then_assistant)]
    return validate_record({"messages": messages})


@pytest.fixture(scope="module")
def cjk_bfcl(tmp_path_factory):
    """A BFCL-format question file (with possible_answer/) of Chinese and Japanese prompts."""
    d = tmp_path_factory.mktemp("bfcl_cjk")
    (d / "possible_answer").mkdir()
    questions = [{"id": i, "question": [[{"role": "user", "content": text}]], "function": [TOOL]} for i, text in CJK.items()]
    answers = [{"id": i, "ground_truth": [{"lookup": {"q": [text[:4]]}}]} for i, text in CJK.items()]
    (d / "BFCL_cjk.json").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions))
    (d / "possible_answer" / "BFCL_cjk.json").write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
    return d / "BFCL_cjk.json"


@pytest.fixture(scope="module")
def index(cjk_bfcl):
    return DecontamIndex([BFCL / "BFCL_v3_simple.json", BFCL / "BFCL_v3_multiple.json",
                          BFCL / "BFCL_v3_irrelevance.json", cjk_bfcl])


def test_normalise_folds_width_case_punctuation_and_spacing():
    assert normalise("  What is the capital of BRAZIL?? ") == normalise("what is the capital of brazil") \
        == "what is the capital of brazil"
    assert normalise("ﾎﾃﾙを予約して！") == normalise("ホテルを予約して") and normalise("...") == ""


def test_short_english_prompts_copied_whole_are_caught(index):
    # Under 8 words: no word 13-gram, and too short to look for inside a longer text.
    for eval_id, text in [("simple_17", "Find the prime factors of 450"), ("multiple_2", "What is the capital of Brazil?"),
                          ("irrelevance_17", "What's the time right now?")]:
        copy = chat(f"  {text.upper()}!! ", "Sure.")
        assert index.overlaps(copy) == [eval_id]
        assert "copy" in index.matches(copy)[eval_id]
    # Containing a short prompt, or a word of a function's docs (an enum value, a type name), is not a copy.
    assert index.overlaps(chat("Please find the prime factors of 450 and explain how you did it", "Sure.")) == []
    assert index.overlaps(chat("Which route?", "Scenic.")) == index.overlaps(chat("integer", "high")) == []


def test_longer_english_prompts_still_match_inside_longer_text(index):
    text = json.loads((BFCL / "BFCL_v3_simple.json").read_text().splitlines()[0])["question"][0][0]["content"]
    assert len(text.split()) >= 13  # simple_0
    assert index.overlaps(chat(f"Homework question: {text} Show the steps.", "ok")) == ["simple_0"]


def test_chinese_and_japanese_prompts_are_caught_by_copy_and_by_character_runs(index):
    zh = CJK["zh_weather"]
    assert index.overlaps(chat(zh.replace("，", ",").replace("？", "? "), "好的")) == ["zh_weather"]  # a copy
    inside = chat("你好！" + zh[:24] + "谢谢。", "好的")  # 24 characters of it inside another message
    assert index.overlaps(inside) == ["zh_weather"] and "20 characters" in index.matches(inside)["zh_weather"]
    assert index.overlaps(chat("查询天气。", "好的")) == ["zh_short"]  # a whole message: caught at 4 characters
    assert index.overlaps(chat("请帮我查询天气，然后订一张去北京的火车票。", "好的")) == []  # contains a short phrase only
    assert index.overlaps(chat("北京目前的天气状况怎么样？", "晴")) == []  # shares a 7-character run
    ja = chat("こんにちは。" + CJK["ja_weather"] + "よろしくお願いします。", "はい")  # 16 characters, whole, inside
    assert index.overlaps(ja) == ["ja_weather"]
    assert index.overlaps(chat("ﾎﾃﾙを予約して", "はい")) == ["ja_hotel"]  # half-width kana fold (NFKC)
    assert index.overlaps(chat("明日の朝、" + CJK["ja_long"][:22], "はい")) == ["ja_long"]
    assert index.overlaps(chat("東京の天気", "晴れです")) == []


def test_build_decontam_removes_every_record_converted_from_the_same_questions(cjk_bfcl, tmp_path, capsys):
    # The measurement, fixture-sized: records converted from BFCL questions, built with --decontam on
    # those question files, are all removed (before: the prompts under 8 words and every CJK one were kept).
    questions = [BFCL / "BFCL_v3_simple.json", BFCL / "BFCL_v3_multiple.json", cjk_bfcl]
    clean = FIXTURES / "datasets" / "openai_chat_tools.jsonl"
    data = tmp_path / "train.jsonl"
    assert main(["convert", *map(str, questions), str(clean), "--out", str(data)]) == 0
    assert "read 88 = kept 88" in capsys.readouterr().out
    out = tmp_path / "built"
    assert main(["build", "--data", str(data), "--template", str(TEMPLATES / "qwen2.5-instruct.jinja"),
                 "--seq-len", "2048", "--decontam", *map(str, questions), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dropped_by_reason"] == {"contaminated": 85} and manifest["kept"] == 3  # the openai fixture's
    listed = {r["id"]: r["overlaps"] for r in manifest["decontamination"]["records"]}
    assert all(listed[i] == i for i in ["simple_17", "multiple_2", *CJK])  # each found as itself
