"""Tokenizers made locally: a byte-level one for a bare chat template, and small BPEs trained on text.

Real runs load a model's own tokenizer with `AutoTokenizer.from_pretrained(DIR)`. Without a hub, tests and
`trajtune render --template T.jinja` need a tokenizer that (1) knows the template's special tokens as single
tokens, so end-of-turn is one id as in the real model, and (2) encodes any other text losslessly. A byte-level
BPE gives both: with no merges, every byte is one token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# Special-token shapes seen in real templates: <|im_end|>, <｜Assistant｜>, [INST], [TOOL_CALLS], <s>, </s>,
# <<SYS>>, <tool_call>/<tool_response> (added tokens in Qwen/Hermes vocabularies).
_SPECIAL_RE = re.compile(
    r"<\|[A-Za-z0-9_./-]+\|>"
    r"|<｜[^｜<>\s]+｜>"
    r"|\[/?[A-Z][A-Z_]*\]"
    r"|</?s>"
    r"|<</?SYS>>"
    r"|</?tool_call>|</?tool_response>|</?tools>"
    r"|</?[a-z]+(?:_[a-z0-9]+)+>"  # Gemma <start_of_turn>/<end_of_turn>, Nemotron <extra_id_1>, GLM-4.5 <arg_key>
    r"|<SPECIAL_\d+>|<[a-z]+:[a-z_]+>|\[\|[a-z_]+\|\]"  # Nemotron-H <SPECIAL_12>, Seed <seed:eos>, EXAONE [|endofturn|]
)

# For a template that writes `eos_token` itself: the end tokens its family uses, in order of preference.
_EOT_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "</s>")


# Role tokens that GLM/ChatGLM3 templates build by concatenation (`'<|' + role + '|>'`, `<|{{ role }}|>`), so
# the regex above cannot see them; the model emits `<|user|>` / `<|observation|>` to end its turn.
_GLM_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
ROLE_CONCAT_RE = re.compile(r"'<\|'\s*\+|<\|\{\{")


def special_tokens_of(template: str) -> list[str]:
    """Special tokens named in a chat template's text, in first-seen order (plus GLM-style role tokens when the
    template builds them by concatenation, and the bos/eos it refers to by variable, see `_bos_eos_of`)."""
    seen: dict[str, None] = {}
    for m in _SPECIAL_RE.finditer(template):
        seen.setdefault(m.group(0), None)
    if ROLE_CONCAT_RE.search(template):
        for t in _GLM_ROLE_TOKENS:
            seen.setdefault(t, None)
    bos, eos = _bos_eos_of(template, list(seen))
    for t in (bos, eos):
        if t is not None:
            seen.setdefault(t, None)
    return list(seen)


def _named(specials: list[str], word: str) -> str | None:
    """A token named after `word` (Seed's `<seed:eos>`), or None."""
    return next((t for t in specials if word in re.split(r"[^a-z]+", t.lower())), None)


def _bos_eos_of(template: str, specials: list[str]) -> tuple[str | None, str | None]:
    """The bos/eos a template's model family uses. Templates often write them as the `bos_token`/`eos_token`
    variables, not literally (Mistral, Llama-2, Phi-4, DeepSeek), so guess the family from its other tokens.
    The eos of a template that does not write `eos_token` is None here: it is the stop token a probe render
    finds (`_wrap`), never a role token such as OLMo-2's `<|user|>`."""
    eos = None
    if "eos_token" in template:
        eos = _named(specials, "eos") or next((t for t in _EOT_CANDIDATES if t in specials), None)
        if "<|end|>" in specials:
            eos = "<|endoftext|>"  # Phi: turns end with <|end|>, the sequence with <|endoftext|>
        elif "[INST]" in specials or (eos is None and not any(t.startswith("<|") for t in specials)):
            eos = "</s>"  # sentencepiece families (Llama-2, Mistral)
        elif eos is None:
            eos = "<|endoftext|>"  # GPT-2-style vocabularies (OLMo-2 writes eos_token after its turns)
    bos = _named(specials, "bos")
    if bos is not None:
        pass
    elif "<s>" in specials:
        bos = "<s>"
    elif "bos_token" in template:
        if any(t.startswith("<｜") for t in specials):
            bos = "<｜begin▁of▁sentence｜>"
        elif "<|im_start|>" in specials or "<|eot_id|>" in specials:
            bos = "<|begin_of_text|>"  # Llama-3 (and Hermes-2-Pro on Llama-3)
        else:
            bos = "<s>"
    return bos, eos


def _wrap(tokenizer_object, template: str | None, specials: list[str]):
    """The tokenizer with bos/eos set: the eos of a template that does not write `eos_token` is the token its
    final answers stop at (`template_stop_tokens`, e.g. Gemma's `<end_of_turn>`, GLM's `<|user|>`), else
    `<|endoftext|>` (added) for a template that has none (Falcon: plain `User:` turns)."""
    from transformers import PreTrainedTokenizerFast

    bos, eos = _bos_eos_of(template or "", specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, eos_token=eos, pad_token=eos, bos_token=bos)
    if template is None and eos is None:  # no template to ask: a known end-of-turn token among the given ones
        tok.eos_token = tok.pad_token = next((t for t in _EOT_CANDIDATES if t in specials), None) or "<|endoftext|>"
    if template is not None:
        tok.chat_template = template
        if eos is None:
            from .render.stops import template_stop_tokens

            stops = template_stop_tokens(tok)
            found = stops.answer or stops.history or stops.call
            if found is None:
                tok.add_special_tokens({"eos_token": "<|endoftext|>"})
            tok.eos_token = tok.pad_token = found or "<|endoftext|>"
    return tok


def byte_level_tokenizer(template: str | None = None, extra_special_tokens: Iterable[str] = ()):
    """A PreTrainedTokenizerFast: 256 byte tokens + the template's special tokens, with `template` set.

    Example: `byte_level_tokenizer(Path("qwen2.5-instruct.jinja").read_text())("<|im_end|>")` is one id.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = special_tokens_of(template or "") + [t for t in extra_special_tokens]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(list(dict.fromkeys(specials)))
    return _wrap(tk, template, specials)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096, template: str | None = None,
                        extra_special_tokens: Iterable[str] = ()):
    """A byte-level BPE trained on `texts` (e.g. a 4k vocabulary for tests and benchmarks), template set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = list(dict.fromkeys(special_tokens_of(template or "") + list(extra_special_tokens)))
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer=trainer)
    return _wrap(tk, template, specials)


def load_tokenizer(tokenizer_dir: str | Path | None = None, template: str | Path | None = None):
    """The tokenizer for a run: a saved/HF tokenizer dir (or a hub id in the Hugging Face cache, see
    `resolve_pretrained`), optionally with its chat template replaced by a .jinja file; or, with only a
    template, the byte-level tokenizer for it."""
    from .errors import TrajtuneError
    from .pretrained import resolve_pretrained

    template_text = None
    if template is not None:
        path = Path(template)
        if not path.is_file():
            raise TrajtuneError(f"template file {path} does not exist")
        template_text = path.read_text()
    if tokenizer_dir is None:
        if template_text is None:
            raise TrajtuneError("give --tokenizer DIR or --template FILE.jinja")
        return byte_level_tokenizer(template_text)
    from transformers import AutoTokenizer

    local_dir = resolve_pretrained(tokenizer_dir, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(local_dir)
    except OSError as e:
        raise TrajtuneError(f"cannot load a tokenizer from {tokenizer_dir}: {e}") from None
    if template_text is not None:
        tok.chat_template = template_text
    return tok
