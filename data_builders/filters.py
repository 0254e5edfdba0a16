"""Record filters for `trajtune build`: pure functions of one canonical record, plus the keys dedup needs.

Each filter answers for one record and holds no state, so the build can run them inside `datasets.map` on any
number of processes. Global decisions (is this record a duplicate of an earlier one?) are made afterwards on a
column of 64-bit keys, which costs 8 bytes a record:
- exact duplicates: `exact_key` hashes the normalised messages + tools (whitespace at the ends of a content,
  key order and tool order do not matter; roles, text, calls and arguments do);
- near duplicates: `minhash_bands` is a MinHash signature (128 permutations of 5-word shingles of the user and
  assistant text) cut into 16 bands of 8 rows; two records sharing any band hash are near duplicates (LSH: the
  chance of a shared band is ~50% at Jaccard 0.7, ~99% at 0.9, ~3% at 0.5). No pairwise check follows;
- decontamination: `DecontamIndex` holds the eval files' whole texts (normalised: NFKC, case, punctuation), their
  word 13-grams and, for Chinese / Japanese / Korean, their character 20-grams, and names the eval ids a training
  record overlaps: an eval prompt copied into a message is caught at any length.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from .errors import TrajtuneError
from .trajectory import InvalidRecord, Trajectory, message_trained, validate_record

# Why a build drops a record (besides the validation reasons of trajectory.REASONS and render's own reasons).
DROP_REASONS = {
    "no_trained_token": "no message is trained (no assistant message, or all have loss: false), or the mask is empty",
    "duplicate": "same normalised messages + tools as an earlier record",
    "near_duplicate": "shares a MinHash LSH band with an earlier record (Jaccard similarity ~0.7 or more)",
    "contaminated": "a message copies an eval text, or shares a long run of words / CJK characters with one (see the "
                    "manifest for the eval ids)",
    "overlong": "longer than seq_len and cannot be truncated at a message boundary keeping a trained message",
}

_WORD_RE = re.compile(r"\w+")


def has_trained_message(record: Trajectory) -> bool:
    """True if at least one message would be trained (the `loss` rule of DESIGN.md)."""
    return any(message_trained(m) for m in record["messages"])


def exact_key(record: Trajectory) -> int:
    """Signed 64-bit hash of the normalised conversation: messages (role, stripped content, calls, trained) and tools."""
    messages = []
    for m in record["messages"]:
        calls = [[c["function"]["name"], c["function"]["arguments"]] for c in m.get("tool_calls") or ()]
        # Whether a message is trained is part of the record: the same chat with other loss flags trains other tokens.
        messages.append([m["role"], (m.get("content") or "").strip(), calls, m.get("name", ""), message_trained(m)])
    tools = sorted((t["function"] for t in record.get("tools") or ()), key=lambda f: f["name"])
    text = json.dumps([messages, tools], sort_keys=True, ensure_ascii=False)
    return _signed(xxhash.xxh3_64_intdigest(text.encode("utf-8")))


def _signed(h: int) -> int:
    """A 64-bit hash as a signed int64, the integer type Arrow and NumPy store without conversion."""
    return h - (1 << 64) if h >= 1 << 63 else h


def dialogue_text(record: Trajectory) -> str:
    """The user and assistant text of a record (what contamination and near-duplication compare)."""
    parts = []
    for m in record["messages"]:
        if m["role"] in ("user", "assistant"):
            parts.append(m.get("content") or "")
            for c in m.get("tool_calls") or ():
                parts.append(c["function"]["name"] + " " + json.dumps(c["function"]["arguments"], ensure_ascii=False))
    return "\n".join(parts)


def words(text: str) -> list[str]:
    """Lower-cased word tokens: the unit of n-grams (punctuation and spacing differences do not matter)."""
    return _WORD_RE.findall(text.lower())


def ngram_hashes(tokens: list[str], n: int) -> set[int]:
    """64-bit hashes of all word n-grams; a text shorter than n words yields its whole self as one n-gram."""
    if not tokens:
        return set()
    if len(tokens) < n:
        return {xxhash.xxh3_64_intdigest(" ".join(tokens).encode())}
    return {xxhash.xxh3_64_intdigest(" ".join(tokens[i:i + n]).encode()) for i in range(len(tokens) - n + 1)}


# ---------------------------------------------------------------------------------------------------------
# MinHash near-duplicate keys

NUM_PERM, BANDS, SHINGLE = 128, 16, 5
_rng = np.random.default_rng(20240607)  # fixed: signatures must be comparable across runs and processes
_PERM_A = _rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1)  # odd multipliers
_PERM_B = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)


def minhash_bands(text: str) -> list[int]:
    """16 band hashes of the MinHash signature of `text`'s 5-word shingles (see the module docstring).

    Each permutation is h -> (a*h + b) mod 2^64 on the shingle's 64-bit hash, and its minimum over shingles is
    one signature row; 8 rows make a band, hashed to one 64-bit key. Equal texts give equal bands.
    """
    shingles = ngram_hashes(words(text), SHINGLE) or {0}
    h = np.fromiter(shingles, dtype=np.uint64, count=len(shingles))
    with np.errstate(over="ignore"):  # wrap-around multiplication is the hash
        signature = (h[:, None] * _PERM_A[None, :] + _PERM_B[None, :]).min(axis=0)
    rows = NUM_PERM // BANDS
    return [_signed(xxhash.xxh3_64_intdigest(signature[b * rows:(b + 1) * rows].tobytes())) for b in range(BANDS)]


def first_index(keys: np.ndarray) -> np.ndarray:
    """For each i, the smallest j with keys[j] == keys[i] (so i is a first occurrence iff the result is i).

    One stable argsort: ~40 bytes a key at the peak; `duplicates` holds less for the many-keys-few-repeats case.
    >>> first_index(np.array([7, 3, 7, 3, 9])).tolist()
    [0, 1, 0, 1, 4]
    """
    order = np.argsort(keys, kind="stable")  # equal keys stay in index order: a group starts at its earliest
    sorted_keys = keys[order]
    starts_group = np.ones(len(keys), dtype=bool)
    starts_group[1:] = sorted_keys[1:] != sorted_keys[:-1]
    del sorted_keys
    group_first = order[np.flatnonzero(starts_group)]  # earliest index of each group, in sorted order
    result = np.empty(len(keys), dtype=np.int64)
    result[order] = group_first[np.cumsum(starts_group) - 1]
    return result


def duplicates(keys: np.ndarray, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(later, first): every index i (of those where the bool mask `among` is set, or of all) whose key an earlier
    such index has, and that key's earliest index. Both in increasing order of i.

    Built for many keys and few repeats: which keys repeat comes from one sorted copy of the keys, then only the
    rows holding one are looked at. The peak is ~17 bytes a key, under half of `first_index` over all keys.
    >>> [x.tolist() for x in duplicates(np.array([7, 3, 7, 3, 9, 7]))]
    [[2, 3, 5], [0, 1, 0]]
    """
    s = keys[among] if among is not None else keys.copy()
    s.sort()
    repeated = np.unique(s[1:][s[1:] == s[:-1]])
    del s
    if not len(repeated):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    hit = np.zeros(len(keys), dtype=bool)
    block = 1 << 16  # searchsorted's int64 positions for all keys at once would be 8 bytes a key
    for i in range(0, len(keys), block):
        part = keys[i:i + block]
        hit[i:i + block] = repeated[np.minimum(np.searchsorted(repeated, part), len(repeated) - 1)] == part
    if among is not None:
        hit &= among
    rows = np.flatnonzero(hit)
    first = first_index(keys[rows])
    later = first != np.arange(len(rows))
    return rows[later], rows[first[later]]


# ---------------------------------------------------------------------------------------------------------
# Decontamination

# Scripts written without spaces between words: each character is one token (a Chinese sentence would otherwise be
# one "word", so no word n-gram could ever match a part of it). Kana, Hangul and the CJK ideographs, incl. ext. B+.
_SEPARATORLESS_RE = re.compile(
    "[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003134f]"
)
_NON_WORD_RE = re.compile(r"[\W_]+")
MIN_SHORT_WORDS = 8  # eval texts shorter than n words are found inside longer text from this many words up
CHAR_N = 20  # characters in a row that make a match in separatorless text (~13 words of Chinese)
MIN_SHORT_CHARS = 12  # like MIN_SHORT_WORDS: shorter eval texts match only as a whole message


def normalise(text: str) -> str:
    """The text decontamination compares: NFKC, case-folded, every run of spaces, punctuation and symbols one space.

    >>> normalise("  Order me ＰＩＺＺＡ!!  ")
    'order me pizza'
    """
    return _NON_WORD_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def decontam_tokens(text: str) -> tuple[list[str], list[str]]:
    """(words, characters) of normalised text: the words of spaced scripts, the characters of separatorless ones.

    >>> decontam_tokens("用GPS查上海")
    (['gps'], ['用', '查', '上', '海'])
    """
    norm = normalise(text)
    if not _SEPARATORLESS_RE.search(norm):  # most text: skip the two passes below
        return norm.split(), []
    return _SEPARATORLESS_RE.sub(" ", norm).split(), _SEPARATORLESS_RE.findall(norm)


def _text_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode("utf-8"))


class _RunIndex:
    """Runs of `n` tokens of eval texts, plus whole eval texts of `min_whole`..n-1 tokens (each a run of its own
    length, else a short eval text could never match a longer training text). A training text matches an eval id
    when it contains one of its runs."""

    def __init__(self, n: int, min_whole: int, unit: str):
        self.n, self.min_whole, self.unit = n, min(min_whole, n), unit
        self.runs: dict[int, str] = {}  # n-gram hash -> the first eval id that has it
        self.whole: dict[int, dict[int, str]] = {}  # k -> whole-text hash -> eval id

    def add(self, tokens: list[str], item_id: str) -> None:
        if len(tokens) >= self.n:
            for h in ngram_hashes(tokens, self.n):
                self.runs.setdefault(h, item_id)
        elif len(tokens) >= self.min_whole:
            self.whole.setdefault(len(tokens), {}).setdefault(*ngram_hashes(tokens, self.n), item_id)

    def find(self, tokens: list[str], found: dict[str, str]) -> None:
        """Add `{eval id: how}` to `found` for each eval id whose run `tokens` contains (first reason kept)."""
        if len(tokens) >= self.n:
            for h in ngram_hashes(tokens, self.n):
                if h in self.runs:
                    found.setdefault(self.runs[h], f"shares {self.n} {self.unit} in a row")
        for k, whole in self.whole.items():
            if len(tokens) >= k:
                for h in ngram_hashes(tokens, k):
                    if h in whole:
                        found.setdefault(whole[h], f"contains the whole eval text ({k} {self.unit})")


def _strings(obj: Any) -> list[str]:
    """Every string inside a JSON value (for eval files that are not canonical trajectories)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() if k != "id" for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def _message_contents(obj: Any) -> list[str]:
    """The `content` strings of every `{"role", "content"}` object inside a JSON value (BFCL's question turns)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("role"), str) and isinstance(obj.get("content"), str):
            return [obj["content"]]
        return [s for v in obj.values() for s in _message_contents(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _message_contents(v)]
    return []


class DecontamIndex:
    """Evaluation data, to find training records that overlap it. A training record is contaminated by an eval
    item when (checked in this order, all on `normalise`d text):
    - exact: one of its user/assistant messages equals one of the item's whole texts, at any length ("Order me
      pizza" is caught; a message that merely contains a short common phrase is not);
    - words: its user/assistant text shares n words in a row (default 13) with the item, or contains a whole item
      text of MIN_SHORT_WORDS..n-1 words;
    - characters, for scripts without spaces (Chinese, Japanese, Korean): it shares CHAR_N characters in a row, or
      contains a whole item text of MIN_SHORT_CHARS..CHAR_N-1 such characters.

    Eval files are JSONL (or one JSON list) of records. From a canonical trajectory: its user/assistant text; the
    whole texts are its user/assistant messages. From any other JSON object (e.g. BFCL questions): every string
    in it is a text; the whole texts are its message contents (`{"role", "content"}` objects), or, where it has
    none, its top-level string fields, so a function's description or an enum value never counts whole. An eval
    item's id is its `id` field, else `FILE:LINE`. Memory: ~100 bytes per distinct eval n-gram. Checking a record
    is linear in its length (one hash lookup per n-gram).
    """

    def __init__(self, files: list[str | Path], n: int = 13):
        if n < 1:
            raise TrajtuneError(f"--decontam-n must be >= 1, got {n}")
        self.n = n
        self.files = [str(f) for f in files]
        self.exact: dict[int, str] = {}  # hash of a normalised whole text -> the first eval id that has it
        self.words = _RunIndex(n, MIN_SHORT_WORDS, "words")
        self.chars = _RunIndex(CHAR_N, MIN_SHORT_CHARS, "characters")
        for path in files:
            for item_id, texts, whole in self._items(Path(path)):
                for text in whole:
                    if norm := normalise(text):
                        self.exact.setdefault(_text_hash(norm), item_id)
                for text in texts:
                    word_tokens, chars = decontam_tokens(text)
                    self.words.add(word_tokens, item_id)
                    self.chars.add(chars, item_id)

    @staticmethod
    def _items(path: Path) -> Iterator[tuple[str, list[str], list[str]]]:
        """(eval id, texts for runs, whole texts for exact match) per record of an eval file."""
        if not path.is_file():
            raise TrajtuneError(f"decontamination file {path} does not exist")
        raw = path.read_text(encoding="utf-8")
        try:
            whole = json.loads(raw)
            entries = [(i + 1, o) for i, o in enumerate(whole)] if isinstance(whole, list) else [(1, whole)]
        except json.JSONDecodeError:
            entries = []
            for lineno, line in enumerate(raw.splitlines(), 1):
                if line.strip():
                    try:
                        entries.append((lineno, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise TrajtuneError(f"{path}:{lineno}: not JSON ({e.msg}); eval files must be JSON or JSONL") from None
        for lineno, obj in entries:
            item_id = str(obj["id"]) if isinstance(obj, dict) and "id" in obj else f"{path.name}:{lineno}"
            if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                messages = [m for m in obj["messages"] if isinstance(m, dict) and m.get("role") in ("user", "assistant")
                            and isinstance(m.get("content"), str)]
                try:  # the same text training records are compared on: contents, call names and arguments
                    text = dialogue_text(validate_record(obj))
                except InvalidRecord:
                    text = "\n".join(m["content"] for m in messages)
                yield item_id, [text], [m["content"] for m in messages]
            else:  # each string its own text: a short question is not glued to the function docs after it
                contents = _message_contents(obj)
                if not contents:
                    contents = [v for k, v in obj.items() if k != "id" and isinstance(v, str)] \
                        if isinstance(obj, dict) else _strings(obj)
                yield item_id, _strings(obj), contents

    def matches(self, record: Trajectory) -> dict[str, str]:
        """{eval id: how it matched} for every eval item this record overlaps (empty = clean)."""
        found: dict[str, str] = {}
        for m in record["messages"]:
            if m["role"] in ("user", "assistant") and m.get("content"):
                item_id = self.exact.get(_text_hash(normalise(m["content"])))
                if item_id is not None:
                    found.setdefault(item_id, f"a {m['role']} message is a copy of an eval text")
        word_tokens, chars = decontam_tokens(dialogue_text(record))
        self.words.find(word_tokens, found)
        self.chars.find(chars, found)
        return found

    def overlaps(self, record: Trajectory) -> list[str]:
        """The eval ids this record overlaps (sorted; empty = clean); see `matches` for how each matched."""
        return sorted(self.matches(record))
