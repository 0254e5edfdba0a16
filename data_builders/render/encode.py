"""Tokenize rendered texts once and place the loss mask on the tokens of the trained character spans.

`encode_masked(tokenizer, items)` is the one entry point: byte-level BPEs are encoded without offsets (their
tokens' byte lengths place every token in the text), with long segments that repeat across records (a shared
system prompt or tool list) encoded once per process; any other tokenizer takes the offsets path. A token that
straddles a span edge is a RenderError (training would see tokens inference never produces), never a guess.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import TrajtuneError
from .errors import RenderError

# Texts per encode call in render_batch: amortises the call, bounds the Encodings held (~100 B a token).
ENCODE_CHUNK = 64
# Text between two added tokens at least this long, seen twice, is encoded once per process (`_ids_of_texts`);
# at most REPEAT_CACHE_CHARS of such text is kept, and SEEN_MAX hashes of segments seen once.
MIN_REPEAT_CHARS = 256
REPEAT_CACHE_CHARS = 1 << 21  # ~10 MB of ids at most
SEEN_MAX = 1 << 16


def _backend(tokenizer, where: str):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TrajtuneError(f"{where}: a fast tokenizer (with offsets) is needed to place the loss mask")
    return backend


def encode_masked(tokenizer, items: list[tuple[str, list[tuple[int, int]], str]]) -> list[tuple[list[int], list[int]] | RenderError]:
    """Each (text, trained spans, where) -> (ids, mask): the text tokenized once, mask=1 on the tokens of the
    spans; or the RenderError of a token across a span edge.

    Byte-level BPEs (`_byte_level`) are encoded without offsets (`encode_batch_fast`, ~20% faster): each token's
    byte length is known from its id, so the ids alone place every token in the text. Any other tokenizer, or a
    text where the ids do not spell out exactly the text's bytes, takes the offsets path."""
    if not items:
        return []
    backend = _backend(tokenizer, items[0][2])
    byte_level = _byte_level(backend)
    out: list[tuple[list[int], list[int]] | RenderError] = []
    for c in range(0, len(items), ENCODE_CHUNK):
        chunk = items[c:c + ENCODE_CHUNK]
        texts = [text for text, _, _ in chunk]
        if byte_level is not None:
            encs: list = _ids_of_texts(backend, byte_level, texts)
        else:
            encs = backend.encode_batch(texts, add_special_tokens=False)
        for (text, spans, where), enc in zip(chunk, encs):
            try:
                result = _mask_from_bytes(enc, byte_level, text, spans, where) if byte_level is not None else None
                if result is None:
                    if byte_level is not None:  # encoded without offsets: encode this one again with them
                        enc = backend.encode(text, add_special_tokens=False)
                    result = _mask_from_encoding(enc, text, spans, where)
                out.append(result)
            except RenderError as e:
                out.append(e)
    return out


def ids_by_segments(tokenizer, texts: list[str]) -> list[list[int]] | None:
    """The ids of each text with every piece between two added tokens encoded once for all `texts` (per_turn.py:
    the contexts of one conversation's turns repeat each other's messages), or None where cutting at added tokens
    is not exact (see `_ids_of_texts`). Contexts are never trained, so no mask is placed."""
    backend = _backend(tokenizer, "per-turn contexts")
    byte_level = _byte_level(backend)
    if byte_level is None or byte_level.added is None:
        return None
    index: dict[str, int] = {}
    plans = [[index.setdefault(p, len(index)) for p in byte_level.added.split(text) if p] for text in texts]
    ids = [e.ids for e in backend.encode_batch_fast(list(index), add_special_tokens=False)]
    return [list(itertools.chain.from_iterable(ids[k] for k in plan)) for plan in plans]


def ids_of_slices(tokenizer, texts: list[str], slices: list[list[tuple[int, int]]]) -> list[Slices] | None:
    """The ids of `text[s:e]` for each text and each of its slices `(s, e)` (per_turn.py: a record's contexts and
    targets, all cut out of its one render), as `Slices`; or None where cutting at added tokens is not exact (see
    `_ids_of_texts`). No mask is placed; each slice says whether its ids spell exactly its bytes (`_byte_ends`:
    then `encode_masked` trains every token of a span over all of it).

    Each text is encoded once (`_ids_of_texts`, as a joint render is). The tokenizer encodes the pieces between
    added tokens apart, and the added tokens are literals matched leftmost-longest, so `text[s:e]` splits as `text`
    does between `s` and `e` unless an added token spans one of them: its ids are those of the piece from `s` to the
    first piece edge after it, encoded on its own (once for all texts), then those of `text` from that edge to the
    last one before `e` (placed by the tokens' byte lengths), then those of the piece from there to `e`. Where an
    added token spans `s` or `e`, `s` and `e` lie inside one piece, or the ids do not spell exactly the text's bytes,
    `text[s:e]` is encoded by pieces."""
    import bisect

    import numpy as np

    backend = _backend(tokenizer, "per-turn samples")
    byte_level = _byte_level(backend)
    if byte_level is None or byte_level.added is None:
        return None
    whole = [np.asarray(ids, np.int32) for c in range(0, len(texts), ENCODE_CHUNK)  # (a call per chunk: faster)
             for ids in _ids_of_texts(backend, byte_level, texts[c:c + ENCODE_CHUNK])]
    index: dict[str, int] = {}  # text encoded on its own -> its slot in `ids`

    def slot(piece: str) -> list[int]:  # a piece inside one segment: no added token to split it at
        return [index.setdefault(piece, len(index))] if piece else []

    plans = []  # per text, per slice: (slots before the text's ids, their run (start, end), slots after, NFC)
    for text, text_ids, text_slices in zip(texts, whole, slices):
        placed = _byte_ends(text_ids, byte_level, text)
        parts = byte_level.added.split(text)  # segment, added token, segment, ...
        starts = list(itertools.accumulate(map(len, parts), initial=0))
        nfc = text.isascii() or not byte_level.nfc  # (else each slice is checked: NFC would change it)
        if placed is not None:
            _, ends, raw = placed
            at_byte = starts if raw is None else list(itertools.accumulate((len(p.encode()) for p in parts), initial=0))
            edges = np.searchsorted(ends, at_byte, "right")  # tokens that end by each part's start
            if not np.array_equal(np.concatenate([[0], ends])[edges], at_byte):
                placed = None  # a part starting inside a token (cannot happen where the cut is exact)
            edges = edges.tolist()
        plan = []
        for s, e in text_slices:
            ks, ke = bisect.bisect_right(starts, s) - 1, bisect.bisect_right(starts, e) - 1  # the parts holding s, e
            first = ks if s == starts[ks] else ks + 1  # the first part edge from s, and the last one to e: ke
            normal = nfc or unicodedata.is_normalized("NFC", text[s:e])
            if placed is None or (ks % 2 and s > starts[ks]) or (ke % 2 and e > starts[ke]) or first > ke:
                pieces = [index.setdefault(p, len(index)) for p in byte_level.added.split(text[s:e]) if p]
                plan.append((pieces, (0, 0), [], normal))
            else:
                plan.append((slot(text[s:starts[first]]), (edges[first], edges[ke]), slot(text[starts[ke]:e]), normal))
        plans.append(plan)
    pieces = list(index)
    ids = [e.ids for e in backend.encode_batch_fast(pieces, add_special_tokens=False)] if pieces else []
    spelled = _spell(ids, byte_level, pieces)

    def join(slots: list[int]) -> list[int]:
        return ids[slots[0]] if len(slots) == 1 else list(itertools.chain.from_iterable(ids[k] for k in slots))

    return [Slices(text_ids, [(join(head), run, join(tail), normal and all(spelled[k] for k in head + tail))
                              for head, run, tail, normal in plan]) for text_ids, plan in zip(whole, plans)]


def _spell(ids: list[list[int]], byte_level: _ByteLevel, texts: list[str]) -> list[bool]:
    """`_byte_ends(ids[k], byte_level, texts[k]) is not None` for each k, in one pass over all the ids."""
    import numpy as np

    if not ids:
        return []
    counts = np.fromiter(map(len, ids), np.int64, len(ids))
    lengths = byte_level.lengths[np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(counts.sum()))]
    nonempty = counts > 0
    firsts = (np.cumsum(counts) - counts)[nonempty]
    sums, least = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64)
    if len(firsts):
        sums[nonempty], least[nonempty] = np.add.reduceat(lengths, firsts), np.minimum.reduceat(lengths, firsts)
    nbytes = np.fromiter((len(t) if t.isascii() else len(t.encode()) for t in texts), np.int64, len(texts))
    ok = nonempty & (sums == nbytes) & (least > 0)
    return [bool(x) and (t.isascii() or not byte_level.nfc or unicodedata.is_normalized("NFC", t))
            for x, t in zip(ok, texts)]


@dataclass
class Slices:
    """The ids of slices of a text (`ids_of_slices`): slice k's ids are `head + ids[start:end] + tail`, where
    `(head, (start, end), tail, spelled) = slices[k]`; `spelled`: they spell exactly the slice's bytes, token by
    token (as `_byte_ends` checks it), so `encode_masked` trains every token of a span over all of the slice.
    `head` and `tail` may be shared between slices: read them, never change them."""

    ids: Any  # np.ndarray (int32): the text's ids
    slices: list[tuple[list[int], tuple[int, int], list[int], bool]]


def _byte_ends(ids, byte_level: _ByteLevel, text: str):
    """(each token's byte length, the byte offset where each token ends, `text`'s UTF-8 bytes or None if it is
    ASCII) of `ids` (a list or an array), or None when the ids do not spell exactly the text's bytes (a token with
    no byte-level spelling, an added token that strips spaces, text that NFC would change)."""
    import numpy as np

    raw = None if text.isascii() else text.encode()
    if raw is not None and byte_level.nfc and not unicodedata.is_normalized("NFC", text):
        return None
    lengths = byte_level.lengths[ids]
    ends = np.cumsum(lengths)
    if not len(ids) or ends[-1] != (len(text) if raw is None else len(raw)) or not lengths.all():
        return None
    return lengths, ends, raw


def _ids_of_texts(backend, byte_level: _ByteLevel, texts: list[str]) -> list[list[int]]:
    """The ids of each text (`encode_batch_fast`), with long text segments that repeat across records encoded
    once per process: a system prompt or tool list shared by a whole dataset is most of each record's text.

    Exact because the tokenizer itself first cuts the text at added tokens and encodes each piece on its own:
    cutting the text there too, and joining the pieces' ids, gives the same ids. `_byte_level` allows it only
    where that cut is plain string matching (no added token strips spaces or matches whole words only, and
    special tokens are not encoded as text)."""
    if byte_level.added is None:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    cache, seen = byte_level.cache, byte_level.seen
    pieces: list[str] = []  # to encode in one call
    fresh: dict[str, int] = {}  # segments seen a second time -> their piece, whose ids are then cached
    plans: list[list[int | list[int]]] = []  # per text, in order: a piece to encode (int) or cached ids
    for text in texts:
        plan: list[int | list[int]] = []
        start = at = 0  # start of the text not yet planned; char position of the current part
        for k, part in enumerate(byte_level.added.split(text)):  # segment, added token, segment, ...
            if k % 2 == 0 and len(part) >= MIN_REPEAT_CHARS:
                if part in cache or part in fresh or hash(part) in seen:
                    if start < at:
                        plan.append(len(pieces))
                        pieces.append(text[start:at])
                    if part in cache:
                        plan.append(cache[part])
                    else:
                        if part not in fresh:
                            fresh[part] = len(pieces)
                            pieces.append(part)
                        plan.append(fresh[part])
                    start = at + len(part)
                else:
                    seen.add(hash(part))  # first sight: stays inside its run of text
            at += len(part)
        if start < len(text):
            plan.append(len(pieces))
            pieces.append(text[start:])
        plans.append(plan)
    ids = [e.ids for e in backend.encode_batch_fast(pieces, add_special_tokens=False)]
    for part, k in fresh.items():
        cache[part] = ids[k]
    out = [[i for step in plan for i in (ids[step] if isinstance(step, int) else step)] for plan in plans]
    byte_level.trim()
    return out


@dataclass
class _ByteLevel:
    lengths: Any  # np.ndarray: bytes of text each token id stands for
    nfc: bool  # the tokenizer normalizes to NFC (Qwen): lossless only on text that already is NFC
    added: re.Pattern | None  # splits a text at its added tokens (captured); None: cutting there is not exact
    cache: dict[str, list[int]] = field(default_factory=dict)  # repeated segment -> its ids (`_ids_of_texts`)
    seen: set[int] = field(default_factory=set)  # hashes of long segments seen once

    def trim(self) -> None:
        """Bound the per-process memory of `_ids_of_texts`: start afresh past REPEAT_CACHE_CHARS / SEEN_MAX."""
        if sum(map(len, self.cache)) > REPEAT_CACHE_CHARS:
            self.cache.clear()
        if len(self.seen) > SEEN_MAX:
            self.seen.clear()


def _byte_level(backend) -> _ByteLevel | None:
    """The byte lengths of a byte-level BPE's tokens, or None for any other tokenizer (see `_measure_byte_level`).

    Measured once per tokenizer and per state that changes the answer: a tokenizer that gains tokens, or whose
    special tokens are switched to being encoded as text (`split_special_tokens`), is measured again."""
    return _measure_byte_level(backend, backend.get_vocab_size(with_added_tokens=True), backend.encode_special_tokens)


@lru_cache(maxsize=4)
def _measure_byte_level(backend, vocab_size: int, encode_special_tokens: bool) -> _ByteLevel | None:
    """Byte-level BPE (GPT-2, Llama 3, Qwen, DeepSeek) with no normalizer (or NFC), no prefix space and no byte
    fallback is lossless: the tokens' bytes concatenate to exactly the encoded text, each vocabulary character
    standing for one byte and an added token for its own text. `vocab_size` and `encode_special_tokens` are the
    cache key beside `backend`."""
    import numpy as np
    from tokenizers import models, normalizers, pre_tokenizers

    norm, pre = backend.normalizer, backend.pre_tokenizer
    model = backend.model
    if not (norm is None or type(norm) is normalizers.NFC) or not isinstance(model, models.BPE) or model.byte_fallback \
            or model.continuing_subword_prefix or model.end_of_word_suffix or pre is None:
        return None  # (a subword prefix or word suffix is spelled in the token but is not in the text)
    steps = [pre]
    if type(pre) is pre_tokenizers.Sequence:
        steps = []
        while True:
            try:
                steps.append(pre[len(steps)])
            except IndexError:
                break
    levels = [p for p in steps if type(p) is pre_tokenizers.ByteLevel]
    if len(levels) != 1 or levels[0].add_prefix_space or type(steps[-1]) is not pre_tokenizers.ByteLevel:
        return None
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    vocab, added = backend.get_vocab(with_added_tokens=False), backend.get_added_tokens_decoder()
    lengths = np.zeros(max([*vocab.values(), *added, -1]) + 1, np.int64)  # 0: a token with no byte-level spelling
    for token, i in vocab.items():
        if alphabet.issuperset(token):
            lengths[i] = len(token)
    for i, token in added.items():
        lengths[i] = len(token.content.encode())
    # The tokenizer finds added tokens leftmost-longest, as the alternation below (longest first) does, but in two
    # passes when some are matched on normalized text and some not; then a cut might differ, so none is made.
    exact_cut = not encode_special_tokens and len({t.normalized for t in added.values()}) <= 1 and not any(
        t.lstrip or t.rstrip or t.single_word for t in added.values())
    contents = sorted({t.content for t in added.values()}, key=len, reverse=True)
    pattern = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if exact_cut and contents else None
    return _ByteLevel(lengths, norm is not None, pattern)


def _mask_from_bytes(ids: list[int], byte_level: _ByteLevel, text: str, spans: list[tuple[int, int]],
                     where: str) -> tuple[list[int], list[int]] | None:
    """(ids, mask) of `text` from its ids alone, or None when the ids do not spell exactly the text's bytes (a
    token with no byte-level spelling, an added token that strips spaces, text that NFC would change)."""
    import numpy as np

    placed = _byte_ends(ids, byte_level, text)
    if placed is None:
        return None
    lengths, ends, raw = placed
    mask = np.zeros(len(ids), np.int8)
    for s, e in spans:
        bs, be = (s, e) if raw is None else (len(text[:s].encode()), len(text[:e].encode()))
        # Tokens holding the span's first and last bytes.
        a, b = int(np.searchsorted(ends, bs, "right")), int(np.searchsorted(ends, be - 1, "right"))
        for k, edge, inside in ((a, s, ends[a] - lengths[a] >= bs), (b, e, ends[b] <= be)):
            if not inside:
                start, end = int(ends[k] - lengths[k]), int(ends[k])
                piece = text[start:end] if raw is None else raw[start:end].decode(errors="replace")
                raise _straddle(where, k, piece, edge)
        mask[a:b + 1] = 1
    return ids, mask.tolist()


def _straddle(where: str, k: int, piece: str, edge: int) -> RenderError:
    return RenderError("token_straddles_boundary", f"{where}: token {k} {piece!r} spans the trained-text edge at "
                       f"char {edge}, so training would see tokens inference never does")


def _mask_from_encoding(enc, text: str, spans: list[tuple[int, int]], where: str) -> tuple[list[int], list[int]]:
    """The ids of `enc` (`text` tokenized once, with offsets) and mask=1 on tokens inside a span; a token across a
    span edge is an error."""
    ids = enc.ids
    mask = [0] * len(ids)
    for s, e in spans:
        # Tokens holding the span's first and last characters (O(log n) lookups, no offsets list built).
        a, b = enc.char_to_token(s), enc.char_to_token(e - 1)
        if a is None or b is None:
            raise RenderError("mask_mismatch", f"{where}: no token covers trained text [{s}, {e})")
        for k, edge, inside in ((a, s, enc.token_to_chars(a)[0] >= s), (b, e, enc.token_to_chars(b)[1] <= e)):
            if not inside:
                ts, te = enc.token_to_chars(k)
                raise _straddle(where, k, text[ts:te], edge)
        mask[a:b + 1] = [1] * (b + 1 - a)
    return ids, mask
