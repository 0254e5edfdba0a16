"""A small arithmetic world for the synth and filter tests, loaded as `--env synth_toy_env:ToyEnv` (tests/ is on
sys.path under pytest).

Tasks "Add A and B" (tool `add`, held_in) and "Multiply A by B" (tool `multiply`, held_out), generated from the seed.
Every 10th task names an operand that is no number: its oracle raises Unsolvable("not_a_number: ..."). Task 13 is
held_out and its tool crashes (it breaks the `step` contract on purpose: synth must list it as an error).
The oracle reads the operands from the instruction and the answer from what its call returned.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from trajtune.data_builders.envs import Environment, Task, Unsolvable, tool_error, tool_message

TOOLS = {
    name: {"type": "function", "function": {
        "name": name, "description": f"{name.capitalize()} two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}}
    for name in ("add", "multiply")
}
N_TASKS = 40


class ToyEnv(Environment):
    name = "toy"

    def tasks(self, split: str | None = None, n: int | None = None, seed: int = 0) -> list[Task]:
        out: list[Task] = []
        for i in range(N_TASKS):
            rng = random.Random(seed * 1000 + i)
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            tool = "multiply" if i % 4 == 1 else "add"
            shown_b = "x" if i % 10 == 7 else str(b)
            text = f"Add {a} and {shown_b}." if tool == "add" else f"Multiply {a} by {shown_b}."
            gold = None if shown_b == "x" else (a + b if tool == "add" else a * b)
            task: Task = {"id": f"toy_{i:03d}", "env": self.name, "split": "held_in" if tool == "add" else "held_out",
                          "instruction": text, "gold": gold, "meta": {"tool": tool, "crash": i == 13}}
            if split is None or task["split"] == split:
                out.append(task)
        return out[:n] if n is not None else out

    def tools(self) -> list[Any]:
        return [TOOLS[self.task["meta"]["tool"]]]

    def reset(self, task: Task, seed: int = 0) -> list[Any]:
        self.task, self.done, self.answer = task, False, None
        return [{"role": "system", "content": "You are a careful calculator. Use the tool, then answer."},
                {"role": "user", "content": task["instruction"]}]

    def step(self, call: Any) -> Any:
        name, args = call["function"]["name"], call["function"]["arguments"]
        if name not in TOOLS:
            return tool_error(call, "unknown_tool", f"no tool {name!r}")
        if self.task["meta"]["crash"]:
            raise RuntimeError("the calculator backend crashed")
        if not all(isinstance(args.get(k), int) for k in ("a", "b")):
            return tool_error(call, "bad_arguments", "a and b must be integers")
        value = args["a"] + args["b"] if name == "add" else args["a"] * args["b"]
        return tool_message(call, json.dumps({"result": value}))

    def respond(self, reply: Any) -> Any:
        self.answer, self.done = reply.get("content") or "", True
        return None

    def reward(self) -> float:
        gold = self.task["gold"]
        return float(gold is not None and self.answer is not None and str(gold) in re.findall(r"-?\d+", self.answer))

    def oracle_act(self, messages: list[Any]) -> Any:
        last = messages[-1]
        if last["role"] == "tool":
            value = json.loads(last["content"])["result"]
            return {"role": "assistant", "content": f"The answer is {value}."}
        numbers = re.findall(r"-?\d+", last["content"])
        if len(numbers) != 2:
            raise Unsolvable(f"not_a_number: the request {last['content']!r} does not give two integers")
        tool = self.task["meta"]["tool"]
        call = {"id": f"call_{len(messages)}", "type": "function",
                "function": {"name": tool, "arguments": {"a": int(numbers[0]), "b": int(numbers[1])}}}
        return {"role": "assistant", "content": f"I will use {tool} on {numbers[0]} and {numbers[1]}.",
                "tool_calls": [call]}
