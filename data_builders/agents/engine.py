"""The local generation engine: a Hugging Face model directory -> batched chat generation with tool calls.

One engine serves the `hf:` policy, eval's local backend and `trajtune serve` (`--engine hf`), with one set of
options (`GenerationOptions`). `Engine(path)` loads the model and tokenizer with `from_pretrained` (a trajtune
export or any HF model directory) and its prompting rules (`chat_format.ChatFormat`: the chat template, or the
prompt format the export's trajtune.json / data manifest records). Then:
- `generate(prompts)`: prompts are padded on the LEFT (so every row's last prompt token sits at the same place
  and new tokens follow it directly) and generated together with the KV cache; each row stops on its own at
  the template's end-of-turn tokens (as eos ids) or a stop string (the template's + `options.stop`), and its
  text is cut at the first stop. Greedy by default (`temperature=0`); sampling is seeded. `logits_processor`
  (a list of transformers LogitsProcessors, per call) is the hook for grammar-constrained tool calls.
- `chat([(messages, tools), ...])`: prompt through the chat format, generate, and read each generation back into
  an assistant message (content and canonical tool calls, or the raw text flagged `PARSE_ERROR`).
torch and transformers are imported when an Engine is made, not when this module is.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TrajtuneError
from ..trajectory import Message, Tool
from .chat_format import ChatFormat

# Engine options (beside GenerationOptions) -> help.
ENGINE_OPTIONS = {
    "prompt_format": "tool-prompt | react | chatglm3 for a template without tools (default: what the export records)",
    "dtype": "auto | bf16 | fp16 | fp32 (auto: bf16 on a GPU that has it, else fp16; fp32 on CPU)",
    "device": "cuda | cpu | cuda:N (default: cuda when available)",
}


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate; one set for every user of the engine."""

    max_new_tokens: int = field(default=512, metadata={"help": "most tokens generated per turn"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (deterministic); > 0 samples"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (sampling only)"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens; 0 = all (sampling only)"})
    seed: int = field(default=0, metadata={"help": "seed of the sampler (each generate call starts from it)"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "stop strings beside the template's end of turn"})
    batch_size: int = field(default=16, metadata={"help": "conversations generated together"})

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def of(cls, options: dict[str, Any], where: str) -> GenerationOptions:
        """From a dict; unknown keys and out-of-range values are a TrajtuneError naming `where`."""
        unknown = sorted(set(options) - cls.keys())
        if unknown:
            raise TrajtuneError(f"{where}: unknown generation option(s) {', '.join(unknown)}; choose from "
                                f"{', '.join(sorted(cls.keys()))}")
        if isinstance(options.get("stop"), str):
            options = {**options, "stop": (options["stop"],)}
        opts = cls(**{**options, "stop": tuple(options.get("stop", ()))})
        if opts.max_new_tokens < 1 or opts.batch_size < 1 or opts.temperature < 0 or not 0 < opts.top_p <= 1 \
                or opts.top_k < 0:
            raise TrajtuneError(f"{where}: need max_new_tokens >= 1, batch_size >= 1, temperature >= 0, "
                                f"0 < top_p <= 1 and top_k >= 0; got {opts}")
        return opts


@dataclass
class Generation:
    text: str  # the generated text up to (not including) the first stop
    finish_reason: str  # "stop" (a stop was reached) | "length" (max_new_tokens or the model's context)
    prompt_tokens: int
    completion_tokens: int  # tokens generated through the stop


def recorded_prompt_format(path: Path) -> str | None:
    """The prompt format a trajtune export was trained with: trajtune.json's `prompt_format` (or `render.
    prompt_format`), else the data manifest of the run config's `data` when that directory is at hand."""
    info_file = path / "trajtune.json"
    if not info_file.is_file():
        return None
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TrajtuneError(f"{info_file}: not readable JSON ({e}); re-export the model or remove the file") from None
    fmt = info.get("prompt_format") or (info.get("render") or {}).get("prompt_format")
    data = (info.get("config") or {}).get("data")
    if fmt is None and isinstance(data, str) and (manifest := Path(data) / "manifest.json").is_file():
        try:
            fmt = json.loads(manifest.read_text(encoding="utf-8")).get("prompt_format")
        except (OSError, json.JSONDecodeError):
            fmt = None  # the run's data moved on: the export alone decides
    return fmt


class Engine:
    """A loaded model + tokenizer + chat format (see the module docstring). Example:
    `Engine("runs/sft/final").chat([(messages, tools)])[0]["tool_calls"]`."""

    def __init__(self, path: str, prompt_format: str | None = None, dtype: str = "auto",
                 device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        root = Path(path)
        if not (root / "config.json").is_file():
            raise TrajtuneError(f"hf:{path}: not a model directory (no config.json); give a trajtune export "
                                "(RUN/final) or a Hugging Face model directory")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
        if dtype == "auto":
            on_gpu = device.startswith("cuda")
            torch_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if on_gpu \
                else torch.float32
        elif dtype in dtypes:
            torch_dtype = dtypes[dtype]
        else:
            raise TrajtuneError(f"hf:{path}: dtype {dtype!r}; choose auto, bf16, fp16 or fp32")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(root))
            model = AutoModelForCausalLM.from_pretrained(str(root), dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise TrajtuneError(f"hf:{path}: cannot load the model: {e}") from None
        self.path = str(root)
        self.setup(model.to(device).eval(), tokenizer, prompt_format or recorded_prompt_format(root))

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, prompt_format: str | None = None) -> Engine:
        """An engine around a model already in memory (serve, eval, tests of a model being trained)."""
        engine = cls.__new__(cls)
        engine.path = getattr(model, "name_or_path", "") or "model"
        engine.setup(model.eval(), tokenizer, prompt_format)
        return engine

    def setup(self, model: Any, tokenizer: Any, prompt_format: str | None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.format = ChatFormat.of(tokenizer, prompt_format)
        tokenizer.padding_side = "left"  # the new tokens must follow each row's own last prompt token
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Stops that are single added tokens end a row by id (cheap, exact); the rest go through stop strings.
        self.added = tokenizer.get_added_vocab()
        self.max_len = getattr(model.config, "max_position_embeddings", None)

    # -----------------------------------------------------------------------------------------------------

    def generate(self, prompts: list[str], options: GenerationOptions | None = None,
                 logits_processor: list | None = None) -> list[Generation]:
        """Each prompt's continuation (module docstring), in order, `options.batch_size` prompts per batch."""
        opts = options or GenerationOptions()
        out: list[Generation] = []
        for i in range(0, len(prompts), opts.batch_size):
            out += self._generate_batch(prompts[i:i + opts.batch_size], opts, logits_processor)
        return out

    def chat(self, items: list[tuple[list[Message], list[Tool]]], options: GenerationOptions | None = None,
             logits_processor: list | None = None) -> list[Message]:
        """The next assistant message of each (messages, tools) conversation."""
        prompts = [self.format.prompt(messages, tools) for messages, tools in items]
        gens = self.generate(prompts, options, logits_processor)
        return [self.format.parse(g.text, tools) for g, (_, tools) in zip(gens, items)]

    def _generate_batch(self, prompts: list[str], opts: GenerationOptions, logits_processor: list | None) -> list[Generation]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        tok = self.tokenizer
        stops = tuple(dict.fromkeys(self.format.stops + opts.stop))
        eos_ids = sorted({self.added[s] for s in stops if s in self.added} | {tok.eos_token_id} - {None})
        stop_strings = [s for s in stops if s not in self.added]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        width = enc["input_ids"].shape[1]
        lengths = enc["attention_mask"].sum(1).tolist()
        room = opts.max_new_tokens if self.max_len is None else min(opts.max_new_tokens, self.max_len - width)
        if room < 1:  # the conversation fills the model's context: nothing can be generated
            return [Generation("", "length", n, 0) for n in lengths]
        sampling = opts.temperature > 0
        config = GenerationConfig(
            max_new_tokens=room, do_sample=sampling, eos_token_id=eos_ids, pad_token_id=tok.pad_token_id,
            use_cache=True, stop_strings=stop_strings or None,
            **({"temperature": opts.temperature, "top_p": opts.top_p, "top_k": opts.top_k} if sampling else {}))
        if sampling:
            torch.manual_seed(opts.seed)
        with torch.inference_mode():
            ids = self.model.generate(**enc, generation_config=config, tokenizer=tok if stop_strings else None,
                                      logits_processor=LogitsProcessorList(logits_processor or []))
        out = []
        for row, n in zip(ids[:, width:].tolist(), lengths):
            # A finished row is padded to the batch's length: its tokens end at its first eos id.
            end = next((k + 1 for k, t in enumerate(row) if t in eos_ids), len(row))
            text, stopped = self.format.cut(tok.decode(row[:end], skip_special_tokens=False), opts.stop)
            out.append(Generation(text, "stop" if stopped else "length", n, end))
        return out
