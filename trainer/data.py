"""Reading a built dataset, the order packs are seen in, and turning packs into micro-batch tensors.

A built dataset (`trajtune build`) is a directory with `manifest.json`, `tokenizer/`, `train/` and optionally
`validation/`; each row is one pack: `input_ids`, `labels` (aligned, -100 = not trained), `position_ids`
(restarting at 0 per sample) and `seq_lens`.

Order: packs form one endless stream, epoch after epoch, each epoch a seeded permutation. Optimizer step `s`
takes stream items `[s*G, (s+1)*G)` (G = global batch in packs); rank `r` takes its contiguous share of those and
cuts it into micro-batches. So the data position is just the step number: resume is exact for free, and the
global batch is the same packs whatever the world size or micro-batching.

Collation pads a micro-batch to its longest pack. Padding gets its own position_ids run (0, 1, ...), so
transformers treats it as a separate sequence that real tokens never attend to, and target -100. Targets are
shifted here (targets[t] = labels[t+1]) and cut at sample boundaries, so a sample never predicts the next one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..data_builders.errors import TrajtuneError

IGNORE = -100
COLUMNS = ("input_ids", "labels", "position_ids")


def open_built_dataset(data_dir: str | Path) -> tuple[Any, Any | None, dict[str, Any]]:
    """(train, validation or None, manifest) of a `trajtune build` output directory; clear errors if it is not one."""
    from datasets import load_from_disk

    root = Path(data_dir)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise TrajtuneError(f"{root}: no manifest.json; data= must be a directory written by `trajtune build --out`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise TrajtuneError(f"{manifest_path}: not valid JSON ({e}); rebuild the dataset") from None
    splits = {}
    for split in ("train", "validation"):
        if (root / split).is_dir():
            ds = load_from_disk(str(root / split))
            missing = [c for c in COLUMNS if c not in ds.column_names]
            if missing:
                raise TrajtuneError(f"{root / split}: missing columns {missing}; rebuild with `trajtune build`")
            splits[split] = ds.select_columns(list(COLUMNS)).with_format(None)
    if "train" not in splits or len(splits["train"]) == 0:
        raise TrajtuneError(f"{root}: no training packs (train/ missing or empty); rebuild with `trajtune build`")
    return splits["train"], splits.get("validation"), manifest


def data_identity(data_dir: str | Path, manifest: dict[str, Any]) -> str:
    """What resume compares and the run records: the build's `data_sha256` (a hash of what training reads: packs,
    tokenizer, seq_len), so a byte-identical rebuild is the same data; for a build older than that key, the hash
    of manifest.json itself (which also changes with the build's timestamps)."""
    if manifest.get("data_sha256"):
        return str(manifest["data_sha256"])
    return hashlib.sha256((Path(data_dir) / "manifest.json").read_bytes()).hexdigest()


def load_data_tokenizer(data_dir: str | Path):
    """The built dataset's tokenizer (DATA/tokenizer/, what the data was tokenized with), None without one."""
    from transformers import AutoTokenizer

    tok_dir = Path(data_dir) / "tokenizer"
    return AutoTokenizer.from_pretrained(str(tok_dir)) if tok_dir.is_dir() else None


def check_fits_model(data_dir: str | Path, model: str, tokenizer=None) -> None:
    """Raise TrajtuneError when the dataset's tokenizer (DATA/tokenizer) does not fit `model`'s config.json: a token
    id at or past the embedding rows (`vocab_size`), or a model eos id that is no token of the dataset's tokenizer
    (the data was tokenized with another vocabulary). Reads the config and the tokenizer only, never the weights.
    A dataset without tokenizer/ is taken to use the model's own tokenizer (nothing to compare). `tokenizer`: that
    directory's tokenizer, already loaded (`load_data_tokenizer`), so it is not read twice."""
    from transformers import AutoConfig, AutoTokenizer

    tok_dir = Path(data_dir) / "tokenizer"
    if not tok_dir.is_dir():
        return
    from ..data_builders.pretrained import resolve_pretrained

    try:
        config = AutoConfig.from_pretrained(resolve_pretrained(model, "model"))
    except (OSError, ValueError) as e:
        raise TrajtuneError(f"model {model!r}: not a model directory with a config.json ({e})") from e
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(tok_dir))
    rows = getattr(config, "vocab_size", None) or config.get_text_config().vocab_size
    ids = set(tok.get_vocab().values())  # added tokens included
    n_ids = max(ids) + 1
    fix = (f"rebuild the dataset with the model's tokenizer (trajtune build --tokenizer {model} ...) or, if this "
           "tokenizer is meant for it, resize the model's embeddings")
    if n_ids > rows:
        named = [(name, getattr(tok, f"{name}_token"), getattr(tok, f"{name}_token_id")) for name in ("bos", "eos", "pad")]
        outside = ", ".join(f"{name} {text!r} = {i}" for name, text, i in named if i is not None and i >= rows)
        raise TrajtuneError(
            f"{tok_dir} does not fit model {model}: its ids go up to {n_ids - 1}, the model has {rows} embedding rows "
            f"(vocab_size in config.json){'; out of range: ' + outside if outside else ''}. {fix} to at least "
            f"{n_ids} rows (model.resize_token_embeddings({n_ids}), then save_pretrained)")
    eos = config.eos_token_id
    for i in [eos] if isinstance(eos, int) else (eos or []):
        if i not in ids:
            raise TrajtuneError(
                f"{tok_dir} does not fit model {model}: the model's eos_token_id {i} (config.json) is no token of "
                f"the dataset's tokenizer ({n_ids} ids, eos {tok.eos_token!r} = {tok.eos_token_id}), so the data was "
                f"tokenized with another vocabulary; {fix}")


def stream_indices(num_packs: int, seed: int, start: int, count: int) -> list[int]:
    """Pack indices at stream positions [start, start + count): epoch e is randperm(num_packs) seeded by seed + e."""
    out: list[int] = []
    pos = start
    while len(out) < count:
        epoch, offset = divmod(pos, num_packs)
        perm = torch.randperm(num_packs, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        take = perm[offset: offset + count - len(out)]
        out += take
        pos += len(take)
    return out


def step_micro_batches(num_packs: int, seed: int, step: int, global_batch: int, micro: int, rank: int,
                       world_size: int) -> list[list[int]]:
    """The pack indices of each of this rank's micro-batches at optimizer step `step` (0-based)."""
    batch = stream_indices(num_packs, seed, step * global_batch, global_batch)
    per_rank = global_batch // world_size
    mine = batch[rank * per_rank: (rank + 1) * per_rank]
    return [mine[i: i + micro] for i in range(0, per_rank, micro)]


def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Packs -> {input_ids, position_ids, targets} of shape [1, sum of pack lengths] (int64), targets shifted;
    plus `lengths` [B], the packs' lengths.

    The micro-batch's packs are joined into ONE row: transformers' flash-attention path reads sample boundaries
    from position_ids only at batch size 1 (with more rows it runs plain causal attention over each row, and
    packed samples would see each other); one row is also free of padding. Every backend reads the same row.
    Example: one pack of samples [a b] and [c d e], labels trained on b, d, e:
    input_ids [a b c d e], position_ids [0 1 0 1 2], targets [b -100 d e -100]
    (b is a's next token; b -> c crosses a sample boundary, so it is masked).
    """
    ids, positions, targets = [], [], []
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        if not (len(row["labels"]) == len(row["position_ids"]) == n):
            raise TrajtuneError(f"pack {b}: input_ids, labels and position_ids differ in length; rebuild the dataset")
        pos = torch.tensor(row["position_ids"], dtype=torch.long)
        labels = torch.tensor(row["labels"], dtype=torch.long)
        shifted = torch.full((n,), IGNORE, dtype=torch.long)  # the pack's last token predicts nothing
        shifted[:-1] = labels[1:]
        shifted[:-1][pos[1:] == 0] = IGNORE  # next token belongs to the next sample
        ids.append(torch.tensor(row["input_ids"], dtype=torch.long))
        positions.append(pos)
        targets.append(shifted)
    lengths = torch.tensor([len(r["input_ids"]) for r in rows], dtype=torch.long)
    return {"input_ids": torch.cat(ids)[None], "position_ids": torch.cat(positions)[None],
            "targets": torch.cat(targets)[None], "lengths": lengths}


def fetch(dataset: Any, indices: list[int]) -> list[dict[str, list[int]]]:
    """Rows of `dataset` at `indices`, as plain lists (one Arrow read)."""
    cols = dataset[indices]
    return [{c: cols[c][i] for c in COLUMNS} for i in range(len(indices))]


def validation_micro_batches(num_packs: int, micro: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's share of the validation packs, in micro-batches; every rank gets the same number of batches
    (ZeRO-3 forwards are collective), an empty list standing for "no pack left, run a dummy with no targets"."""
    mine = list(range(rank, num_packs, world_size))
    per_rank = -(-num_packs // world_size)
    n_batches = -(-per_rank // micro)
    return [mine[i * micro: (i + 1) * micro] for i in range(n_batches)]
