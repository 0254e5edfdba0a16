"""Record filters for `trajtune build`: pure functions of one canonical record, plus the keys dedup needs.

Each filter answers for one record and holds no state, so the build can run them inside `datasets.map` on any
number of processes. Global decisions (is this record a duplicate of an earlier one?) are made afterwards on a
column of 64-bit keys, which costs 8 bytes a record:
- exact duplicates: `exact_key` hashes the normalised messages + tools (whitespace at the ends of a content,
  key order and tool order do not matter; roles, text, calls and arguments do);
- near duplicates: `minhash_bands` is a MinHash signature (128 permutations of 5-word shingles of the user and
  assistant text) cut into 16 bands of 8 rows; two records sharing any band hash are near duplicates (LSH: the
  chance of a shared band is ~50% at Jaccard 0.7, ~99% at 0.9, ~3% at 0.5). No pairwise check follows;
- decontamination: `DecontamIndex` holds the word n-grams (default 13) of the user/assistant text of eval
  files and names the eval ids a training record overlaps.
"""

from __future__ import annotations

import json
import re
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
    "contaminated": "shares a word n-gram with an evaluation file (see the manifest for the eval ids)",
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
MIN_SHORT_WORDS = 8  # eval items shorter than n words are matched whole, from this many words up
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


def _strings(obj: Any) -> list[str]:
    """Every string inside a JSON value (for eval files that are not canonical trajectories)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() if k != "id" for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


class DecontamIndex:
    """The word n-grams of evaluation data, to find training records that overlap it.

    Eval files are JSONL (or one JSON list) of records: from a canonical trajectory the user/assistant text is
    used; from any other JSON object (e.g. BFCL questions), every string in it. An eval item's id is its `id`
    field, else `FILE:LINE`. Memory: ~100 bytes per distinct eval n-gram.
    """

    def __init__(self, files: list[str | Path], n: int = 13):
        if n < 1:
            raise TrajtuneError(f"--decontam-n must be >= 1, got {n}")
        self.n = n
        self.files = [str(f) for f in files]
        self.owner: dict[int, str] = {}  # n-gram hash -> the first eval id that has it
        # Eval items shorter than n words (a BFCL question, say) would never match a longer record's n-grams:
        # they are matched whole, as k-grams of their own length k. Below MIN_SHORT_WORDS they are too generic.
        self.short: dict[int, dict[int, str]] = {}  # k -> whole-item hash -> eval id
        for path in files:
            for item_id, text in self._items(Path(path)):
                tokens = words(text)
                if len(tokens) < n:
                    if len(tokens) >= min(MIN_SHORT_WORDS, n):
                        self.short.setdefault(len(tokens), {}).setdefault(*ngram_hashes(tokens, n), item_id)
                    continue
                for h in ngram_hashes(tokens, n):
                    self.owner.setdefault(h, item_id)

    @staticmethod
    def _items(path: Path):
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
                try:  # the same text training records are compared on: contents, call names and arguments
                    text = dialogue_text(validate_record(obj))
                except InvalidRecord:
                    text = "\n".join(m.get("content") or "" for m in obj["messages"] if isinstance(m, dict)
                                     and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str))
                yield item_id, text
            else:  # each string its own text: a short question is not glued to the function docs after it
                for text in _strings(obj):
                    yield item_id, text

    def overlaps(self, record: Trajectory) -> list[str]:
        """The eval ids whose n-grams this record's user/assistant text contains (sorted; empty = clean)."""
        tokens = words(dialogue_text(record))
        found = {self.owner[h] for h in ngram_hashes(tokens, self.n) if h in self.owner}
        for k, whole in self.short.items():
            found |= {whole[h] for h in ngram_hashes(tokens, k) if h in whole}
        return sorted(found)
