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
)

# End-of-turn tokens in order of preference; the first one the template uses becomes `eos_token`.
_EOT_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "</s>", "<|user|>")


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


def _bos_eos_of(template: str, specials: list[str]) -> tuple[str | None, str | None]:
    """The bos/eos a template's model family uses. Templates often write them as the `bos_token`/`eos_token`
    variables, not literally (Mistral, Llama-2, Phi-4, DeepSeek), so guess the family from its other tokens."""
    eos = next((t for t in _EOT_CANDIDATES if t in specials), None)
    if "eos_token" in template:
        if "<|end|>" in specials:
            eos = "<|endoftext|>"  # Phi: turns end with <|end|>, the sequence with <|endoftext|>
        elif eos is None or "[INST]" in specials:
            eos = "</s>"  # sentencepiece families (Llama-2, Mistral)
    bos = None
    if "<s>" in specials:
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
    from transformers import PreTrainedTokenizerFast

    bos, eos = _bos_eos_of(template or "", specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, eos_token=eos, pad_token=eos, bos_token=bos)
    if template is not None:
        tok.chat_template = template
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
