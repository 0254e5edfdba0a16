"""Pinned trained text for every fixture template x every battery case of issue 3.

Each entry is the list of trained spans' text (what the model must generate: the assistant's text/calls in
the model's own syntax + its end-of-turn token) or the RenderError reason where the template truly cannot
express the case. Rendered with the exhaustive prefix proof AND with the default (fast) path: both must agree.
Regenerate only after reading every changed line: a change here is a change in what models are trained on.
"""

import copy

import pytest
from conftest import TEMPLATES

from trajtune.data_builders.render import BATTERY, RenderError, render_with_mask
from trajtune.data_builders.tokenizer import byte_level_tokenizer
from trajtune.data_builders.trajectory import validate_record

PINS = {
    ('chatglm3-6b', None, 'plain_chat'): ['\n Hello! How can I help?<|user|>', '\n Why did the chicken cross?<|user|>'],
    ('chatglm3-6b', None, 'single_call'): 'template_cannot_express',
    ('chatglm3-6b', None, 'parallel_calls'): 'template_cannot_express',
    ('chatglm3-6b', None, 'content_and_call'): 'template_cannot_express',
    ('chatglm3-6b', None, 'two_rounds'): 'template_cannot_express',
    ('chatglm3-6b', None, 'loss_false'): ['\n Why did the chicken cross?<|user|>'],
    ('chatglm3-6b', 'react', 'plain_chat'): ['\n Hello! How can I help?<|user|>', '\n Why did the chicken cross?<|user|>'],
    ('chatglm3-6b', 'react', 'single_call'): ['\n Action: get_weather\nAction Input: {"city": "Beijing"}<|user|>', '\n Final Answer: It is 26 °C in Beijing.<|user|>'],
    ('chatglm3-6b', 'react', 'parallel_calls'): ['\n Action: get_weather\nAction Input: {"city": "Beijing"}<|user|>', '\n Action: get_weather\nAction Input: {"city": "Paris"}<|user|>', '\n Final Answer: Beijing 26 °C, Paris 18 °C.<|user|>'],
    ('chatglm3-6b', 'react', 'content_and_call'): ['\n Thought: Let me check.\nAction: get_weather\nAction Input: {"city": "Beijing"}<|user|>', '\n Final Answer: It is 26 °C in Beijing.<|user|>'],
    ('chatglm3-6b', 'react', 'two_rounds'): ['\n Action: get_weather\nAction Input: {"city": "Beijing"}<|user|>', '\n Action: get_weather\nAction Input: {"city": "Paris"}<|user|>', '\n Final Answer: Yes: 26 °C against 18 °C.<|user|>'],
    ('chatglm3-6b', 'react', 'loss_false'): ['\n Why did the chicken cross?<|user|>'],
    ('chatglm3-6b', 'tool-prompt', 'plain_chat'): ['\n Hello! How can I help?<|user|>', '\n Why did the chicken cross?<|user|>'],
    ('chatglm3-6b', 'tool-prompt', 'single_call'): ['\n ```json\n{"name": "get_weather", "parameters": {"city": "Beijing"}}\n```<|user|>', '\n It is 26 °C in Beijing.<|user|>'],
    ('chatglm3-6b', 'tool-prompt', 'parallel_calls'): ['\n ```json\n{"name": "get_weather", "parameters": {"city": "Beijing"}}\n```\n```json\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n```<|user|>', '\n Beijing 26 °C, Paris 18 °C.<|user|>'],
    ('chatglm3-6b', 'tool-prompt', 'content_and_call'): ['\n Let me check.\n```json\n{"name": "get_weather", "parameters": {"city": "Beijing"}}\n```<|user|>', '\n It is 26 °C in Beijing.<|user|>'],
    ('chatglm3-6b', 'tool-prompt', 'two_rounds'): ['\n ```json\n{"name": "get_weather", "parameters": {"city": "Beijing"}}\n```<|user|>', '\n ```json\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n```<|user|>', '\n Yes: 26 °C against 18 °C.<|user|>'],
    ('chatglm3-6b', 'tool-prompt', 'loss_false'): ['\n Why did the chicken cross?<|user|>'],
    ('chatglm3-6b', 'chatglm3', 'plain_chat'): ['\n Hello! How can I help?<|user|>', '\n Why did the chicken cross?<|user|>'],
    ('chatglm3-6b', 'chatglm3', 'single_call'): ['get_weather\n ```python\ntool_call(city="Beijing")\n```<|observation|>', '\n It is 26 °C in Beijing.<|user|>'],
    ('chatglm3-6b', 'chatglm3', 'parallel_calls'): ['get_weather\n ```python\ntool_call(city="Beijing")\n```<|observation|>', 'get_weather\n ```python\ntool_call(city="Paris")\n```<|observation|>', '\n Beijing 26 °C, Paris 18 °C.<|user|>'],
    ('chatglm3-6b', 'chatglm3', 'content_and_call'): ['\n Let me check.<|assistant|>get_weather\n ```python\ntool_call(city="Beijing")\n```<|observation|>', '\n It is 26 °C in Beijing.<|user|>'],
    ('chatglm3-6b', 'chatglm3', 'two_rounds'): ['get_weather\n ```python\ntool_call(city="Beijing")\n```<|observation|>', 'get_weather\n ```python\ntool_call(city="Paris")\n```<|observation|>', '\n Yes: 26 °C against 18 °C.<|user|>'],
    ('chatglm3-6b', 'chatglm3', 'loss_false'): ['\n Why did the chicken cross?<|user|>'],
    ('deepseek-v3', None, 'plain_chat'): ['Hello! How can I help?<｜end▁of▁sentence｜>', 'Why did the chicken cross?<｜end▁of▁sentence｜>'],
    ('deepseek-v3', None, 'single_call'): 'no_stop_token',
    ('deepseek-v3', None, 'parallel_calls'): ['<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Beijing"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>', 'Beijing 26 °C, Paris 18 °C.<｜end▁of▁sentence｜>'],
    ('deepseek-v3', None, 'content_and_call'): 'template_cannot_express',
    ('deepseek-v3', None, 'two_rounds'): 'no_stop_token',
    ('deepseek-v3', None, 'loss_false'): ['Why did the chicken cross?<｜end▁of▁sentence｜>'],
    ('glm-4-9b-chat', None, 'plain_chat'): ['\nHello! How can I help?<|user|>', '\nWhy did the chicken cross?<|user|>'],
    ('glm-4-9b-chat', None, 'single_call'): ['get_weather\n{"city": "Beijing"}<|observation|>', '\nIt is 26 °C in Beijing.<|user|>'],
    ('glm-4-9b-chat', None, 'parallel_calls'): ['get_weather\n{"city": "Beijing"}<|observation|>', 'get_weather\n{"city": "Paris"}<|observation|>', '\nBeijing 26 °C, Paris 18 °C.<|user|>'],
    ('glm-4-9b-chat', None, 'content_and_call'): ['\nLet me check.<|assistant|>get_weather\n{"city": "Beijing"}<|observation|>', '\nIt is 26 °C in Beijing.<|user|>'],
    ('glm-4-9b-chat', None, 'two_rounds'): ['get_weather\n{"city": "Beijing"}<|observation|>', 'get_weather\n{"city": "Paris"}<|observation|>', '\nYes: 26 °C against 18 °C.<|user|>'],
    ('glm-4-9b-chat', None, 'loss_false'): ['\nWhy did the chicken cross?<|user|>'],
    ('granite-3.3-instruct', None, 'plain_chat'): ['Hello! How can I help?<|end_of_text|>', 'Why did the chicken cross?<|end_of_text|>'],
    ('granite-3.3-instruct', None, 'single_call'): ['<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Beijing"}}]<|end_of_text|>', 'It is 26 °C in Beijing.<|end_of_text|>'],
    ('granite-3.3-instruct', None, 'parallel_calls'): ['<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Beijing"}}, {"name": "get_weather", "arguments": {"city": "Paris"}}]<|end_of_text|>', 'Beijing 26 °C, Paris 18 °C.<|end_of_text|>'],
    ('granite-3.3-instruct', None, 'content_and_call'): ['Let me check.\n<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Beijing"}}]<|end_of_text|>', 'It is 26 °C in Beijing.<|end_of_text|>'],
    ('granite-3.3-instruct', None, 'two_rounds'): ['<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Beijing"}}]<|end_of_text|>', '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|end_of_text|>', 'Yes: 26 °C against 18 °C.<|end_of_text|>'],
    ('granite-3.3-instruct', None, 'loss_false'): ['Why did the chicken cross?<|end_of_text|>'],
    ('hermes-2-pro-tool_use', None, 'plain_chat'): ['Hello! How can I help?<|im_end|>', 'Why did the chicken cross?<|im_end|>'],
    ('hermes-2-pro-tool_use', None, 'single_call'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', 'It is 26 °C in Beijing.<|im_end|>'],
    ('hermes-2-pro-tool_use', None, 'parallel_calls'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', 'Beijing 26 °C, Paris 18 °C.<|im_end|>'],
    ('hermes-2-pro-tool_use', None, 'content_and_call'): 'template_cannot_express',
    ('hermes-2-pro-tool_use', None, 'two_rounds'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', 'Yes: 26 °C against 18 °C.<|im_end|>'],
    ('hermes-2-pro-tool_use', None, 'loss_false'): ['Why did the chicken cross?<|im_end|>'],
    ('llama-2-chat', None, 'plain_chat'): [' Hello! How can I help? </s>', ' Why did the chicken cross? </s>'],
    ('llama-2-chat', None, 'single_call'): 'template_cannot_express',
    ('llama-2-chat', None, 'parallel_calls'): 'template_cannot_express',
    ('llama-2-chat', None, 'content_and_call'): 'template_cannot_express',
    ('llama-2-chat', None, 'two_rounds'): 'template_cannot_express',
    ('llama-2-chat', None, 'loss_false'): [' Why did the chicken cross? </s>'],
    ('llama-2-chat', 'react', 'plain_chat'): [' Hello! How can I help? </s>', ' Why did the chicken cross? </s>'],
    ('llama-2-chat', 'react', 'single_call'): [' Action: get_weather\nAction Input: {"city": "Beijing"} </s>', ' Final Answer: It is 26 °C in Beijing. </s>'],
    ('llama-2-chat', 'react', 'parallel_calls'): [' Action: get_weather\nAction Input: {"city": "Beijing"} </s>', ' Action: get_weather\nAction Input: {"city": "Paris"} </s>', ' Final Answer: Beijing 26 °C, Paris 18 °C. </s>'],
    ('llama-2-chat', 'react', 'content_and_call'): [' Thought: Let me check.\nAction: get_weather\nAction Input: {"city": "Beijing"} </s>', ' Final Answer: It is 26 °C in Beijing. </s>'],
    ('llama-2-chat', 'react', 'two_rounds'): [' Action: get_weather\nAction Input: {"city": "Beijing"} </s>', ' Action: get_weather\nAction Input: {"city": "Paris"} </s>', ' Final Answer: Yes: 26 °C against 18 °C. </s>'],
    ('llama-2-chat', 'react', 'loss_false'): [' Why did the chicken cross? </s>'],
    ('llama-2-chat', 'tool-prompt', 'plain_chat'): [' Hello! How can I help? </s>', ' Why did the chicken cross? </s>'],
    ('llama-2-chat', 'tool-prompt', 'single_call'): [' ```json\n{"name": "get_weather", "parameters": {"city": "Beijing"}}\n``` </s>', ' It is 26 °C in Beijing. </s>'],
    ('llama-2-chat', 'tool-prompt', 'parallel_calls'): [' ```json\n{"name": "get_weather", "parameters": {"city": "Beijing"}}\n```\n```json\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n``` </s>', ' Beijing 26 °C, Paris 18 °C. </s>'],
    ('llama-2-chat', 'tool-prompt', 'content_and_call'): [' Let me check.\n```json\n{"name": "get_weather", "parameters": {"city": "Beijing"}}\n``` </s>', ' It is 26 °C in Beijing. </s>'],
    ('llama-2-chat', 'tool-prompt', 'two_rounds'): [' ```json\n{"name": "get_weather", "parameters": {"city": "Beijing"}}\n``` </s>', ' ```json\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n``` </s>', ' Yes: 26 °C against 18 °C. </s>'],
    ('llama-2-chat', 'tool-prompt', 'loss_false'): [' Why did the chicken cross? </s>'],
    ('llama-2-chat', 'chatglm3', 'plain_chat'): 'no_stop_token',  # <|user|> / <|observation|> are no tokens of Llama-2's vocabulary
    ('llama-2-chat', 'chatglm3', 'single_call'): 'no_stop_token',  # <|user|> / <|observation|> are no tokens of Llama-2's vocabulary
    ('llama-2-chat', 'chatglm3', 'parallel_calls'): 'no_stop_token',  # <|user|> / <|observation|> are no tokens of Llama-2's vocabulary
    ('llama-2-chat', 'chatglm3', 'content_and_call'): 'no_stop_token',  # <|user|> / <|observation|> are no tokens of Llama-2's vocabulary
    ('llama-2-chat', 'chatglm3', 'two_rounds'): 'no_stop_token',  # <|user|> / <|observation|> are no tokens of Llama-2's vocabulary
    ('llama-2-chat', 'chatglm3', 'loss_false'): 'no_stop_token',  # <|user|> / <|observation|> are no tokens of Llama-2's vocabulary
    ('llama-3.1-instruct', None, 'plain_chat'): ['Hello! How can I help?<|eot_id|>', 'Why did the chicken cross?<|eot_id|>'],
    ('llama-3.1-instruct', None, 'single_call'): ['{"name": "get_weather", "parameters": {"city": "Beijing"}}<|eot_id|>', 'It is 26 °C in Beijing.<|eot_id|>'],
    ('llama-3.1-instruct', None, 'parallel_calls'): ['{"name": "get_weather", "parameters": {"city": "Beijing"}}<|eot_id|>', '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', 'Beijing 26 °C, Paris 18 °C.<|eot_id|>'],
    ('llama-3.1-instruct', None, 'content_and_call'): 'template_cannot_express',
    ('llama-3.1-instruct', None, 'two_rounds'): ['{"name": "get_weather", "parameters": {"city": "Beijing"}}<|eot_id|>', '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', 'Yes: 26 °C against 18 °C.<|eot_id|>'],
    ('llama-3.1-instruct', None, 'loss_false'): ['Why did the chicken cross?<|eot_id|>'],
    ('mistral-7b-instruct-v0.3', None, 'plain_chat'): [' Hello! How can I help? </s>', ' Why did the chicken cross? </s>'],
    ('mistral-7b-instruct-v0.3', None, 'single_call'): [' [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Beijing"}, "id": "bU09E4FDZ"}] </s>', ' It is 26 °C in Beijing. </s>'],
    ('mistral-7b-instruct-v0.3', None, 'parallel_calls'): [' [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Beijing"}, "id": "bU09E4FDZ"}, {"name": "get_weather", "arguments": {"city": "Paris"}, "id": "UtBgay5ZT"}] </s>', ' Beijing 26 °C, Paris 18 °C. </s>'],
    ('mistral-7b-instruct-v0.3', None, 'content_and_call'): 'template_cannot_express',
    ('mistral-7b-instruct-v0.3', None, 'two_rounds'): [' [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Beijing"}, "id": "bU09E4FDZ"}] </s>', ' [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "UtBgay5ZT"}] </s>', ' Yes: 26 °C against 18 °C. </s>'],
    ('mistral-7b-instruct-v0.3', None, 'loss_false'): [' Why did the chicken cross? </s>'],
    ('phi-4-mini-instruct', None, 'plain_chat'): ['Hello! How can I help?<|end|>', 'Why did the chicken cross?<|end|>'],
    ('phi-4-mini-instruct', None, 'single_call'): ['<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Beijing"}}]<|/tool_call|><|end|>', 'It is 26 °C in Beijing.<|end|>'],
    ('phi-4-mini-instruct', None, 'parallel_calls'): ['<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Beijing"}}, {"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|><|end|>', 'Beijing 26 °C, Paris 18 °C.<|end|>'],
    ('phi-4-mini-instruct', None, 'content_and_call'): ['Let me check.\n<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Beijing"}}]<|/tool_call|><|end|>', 'It is 26 °C in Beijing.<|end|>'],
    ('phi-4-mini-instruct', None, 'two_rounds'): ['<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Beijing"}}]<|/tool_call|><|end|>', '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|><|end|>', 'Yes: 26 °C against 18 °C.<|end|>'],
    ('phi-4-mini-instruct', None, 'loss_false'): ['Why did the chicken cross?<|end|>'],
    ('qwen2.5-instruct', None, 'plain_chat'): ['Hello! How can I help?<|im_end|>', 'Why did the chicken cross?<|im_end|>'],
    ('qwen2.5-instruct', None, 'single_call'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', 'It is 26 °C in Beijing.<|im_end|>'],
    ('qwen2.5-instruct', None, 'parallel_calls'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', 'Beijing 26 °C, Paris 18 °C.<|im_end|>'],
    ('qwen2.5-instruct', None, 'content_and_call'): ['Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', 'It is 26 °C in Beijing.<|im_end|>'],
    ('qwen2.5-instruct', None, 'two_rounds'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', 'Yes: 26 °C against 18 °C.<|im_end|>'],
    ('qwen2.5-instruct', None, 'loss_false'): ['Why did the chicken cross?<|im_end|>'],
    ('qwen3', None, 'plain_chat'): ['Hello! How can I help?<|im_end|>', '<think>\n\n</think>\n\nWhy did the chicken cross?<|im_end|>'],
    ('qwen3', None, 'single_call'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', '<think>\n\n</think>\n\nIt is 26 °C in Beijing.<|im_end|>'],
    ('qwen3', None, 'parallel_calls'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', '<think>\n\n</think>\n\nBeijing 26 °C, Paris 18 °C.<|im_end|>'],
    ('qwen3', None, 'content_and_call'): ['Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', '<think>\n\n</think>\n\nIt is 26 °C in Beijing.<|im_end|>'],
    ('qwen3', None, 'two_rounds'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', '<think>\n\n</think>\n\nYes: 26 °C against 18 °C.<|im_end|>'],
    ('qwen3', None, 'loss_false'): ['<think>\n\n</think>\n\nWhy did the chicken cross?<|im_end|>'],
    ('smollm3-3b', None, 'plain_chat'): ['Hello! How can I help?<|im_end|>', 'Why did the chicken cross?<|im_end|>'],
    ('smollm3-3b', None, 'single_call'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', 'It is 26 °C in Beijing.<|im_end|>'],
    ('smollm3-3b', None, 'parallel_calls'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', 'Beijing 26 °C, Paris 18 °C.<|im_end|>'],
    ('smollm3-3b', None, 'content_and_call'): ['Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', 'It is 26 °C in Beijing.<|im_end|>'],
    ('smollm3-3b', None, 'two_rounds'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', 'Yes: 26 °C against 18 °C.<|im_end|>'],
    ('smollm3-3b', None, 'loss_false'): ['Why did the chicken cross?<|im_end|>'],
    ('trl-qwen2_5_training', None, 'plain_chat'): ['Hello! How can I help?<|im_end|>', 'Why did the chicken cross?<|im_end|>'],
    ('trl-qwen2_5_training', None, 'single_call'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', 'It is 26 °C in Beijing.<|im_end|>'],
    ('trl-qwen2_5_training', None, 'parallel_calls'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', 'Beijing 26 °C, Paris 18 °C.<|im_end|>'],
    ('trl-qwen2_5_training', None, 'content_and_call'): ['Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', 'It is 26 °C in Beijing.<|im_end|>'],
    ('trl-qwen2_5_training', None, 'two_rounds'): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', 'Yes: 26 °C against 18 °C.<|im_end|>'],
    ('trl-qwen2_5_training', None, 'loss_false'): ['Why did the chicken cross?<|im_end|>'],
}

_TOKENIZERS: dict[str, object] = {}


def _tok(stem: str):
    if stem not in _TOKENIZERS:
        _TOKENIZERS[stem] = byte_level_tokenizer((TEMPLATES / f"{stem}.jinja").read_text())
    return _TOKENIZERS[stem]


def test_pins_cover_every_fixture_template():
    assert {k[0] for k in PINS} == {p.stem for p in TEMPLATES.glob("*.jinja")}


@pytest.mark.parametrize("key", list(PINS), ids=lambda k: "-".join(x or "native" for x in k))
def test_trained_text_is_exactly_the_assistant_output(key):
    stem, prompt_format, case = key
    record = validate_record(copy.deepcopy(BATTERY[case]))
    want = PINS[key]
    for exhaustive in (True, False):
        if isinstance(want, str):
            with pytest.raises(RenderError) as e:
                render_with_mask(record, _tok(stem), prompt_format, exhaustive=exhaustive)
            assert e.value.reason == want
            continue
        r = render_with_mask(record, _tok(stem), prompt_format, exhaustive=exhaustive)
        assert [r.text[s:e] for s, e in r.trained_spans] == want
        # Never trained: any user, system or tool text, nor a loss=false message.
        trained = "".join(want)
        for m in record["messages"]:
            if m["role"] != "assistant" or m.get("loss") is False:
                assert (m.get("content") or "") not in trained or not m.get("content")
        # The mask covers exactly the spans' tokens (byte-level: one id per byte or special token).
        tok = _tok(stem)
        ids = [i for i, keep in zip(r.input_ids, r.loss_mask) if keep]
        assert tok.decode(ids) == trained
