"""The trainer-side packing invariant: a packed row's loss equals the token-weighted loss of its samples run
one by one, so packed samples cannot attend to each other. On a tiny random Llama (SDPA, CPU, fixed seed):
position_ids restart per sample, no attention_mask, use_cache=False. The companion test pins the trap from
DESIGN.md: with the default use_cache the block mask is not built and the packed logits differ."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trajtune.data_builders.pack import IGNORE_INDEX, pack_rows


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).train()  # train mode, as in SFT (dropout is 0 in LlamaConfig)


def samples():
    g = torch.Generator().manual_seed(1)
    out = []
    for n in (7, 12, 5, 9):
        ids = torch.randint(0, 97, (n,), generator=g).tolist()
        mask = [1] + [0] * (n // 3) + [1] * (n - n // 3 - 1)  # the first 1 is dropped: a sample's first label is -100
        out.append((ids, mask))
    return out


def summed_loss(logits, labels):
    """Sum of next-token cross-entropy over trained positions, and their count (labels are unshifted)."""
    shift_logits, shift_labels = logits[0, :-1], labels[0, 1:]
    loss = torch.nn.functional.cross_entropy(shift_logits.float(), shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((shift_labels != IGNORE_INDEX).sum())


def packed_batch():
    row = pack_rows(samples())
    return {k: torch.tensor([row[k]]) for k in ("input_ids", "labels", "position_ids")}, row["seq_lens"]


@torch.no_grad()
def test_packed_loss_equals_token_weighted_loss_of_samples(model):
    batch, seq_lens = packed_batch()
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    packed_sum, packed_count = summed_loss(logits, batch["labels"])

    total, count = 0.0, 0
    for ids, mask in samples():
        ids_t = torch.tensor([ids])
        labels_one = torch.tensor([[t if m else IGNORE_INDEX for t, m in zip(ids, mask)]])  # shift drops label 0
        loss_sum, n = summed_loss(model(input_ids=ids_t, use_cache=False).logits, labels_one)
        total, count = total + loss_sum, count + n
    assert packed_count == count
    assert torch.allclose(packed_sum / packed_count, total / count, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_per_sample_logits_match_and_default_cache_breaks_them(model):
    batch, seq_lens = packed_batch()
    ids, _ = samples()[1]  # the second sample: it sits after another one in the pack
    alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    start = seq_lens[0]
    packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    assert torch.allclose(packed[start:start + len(ids)], alone, atol=1e-5)
    # The trap: with the default use_cache=True the position_ids block mask is not built, so the second sample
    # attends to the first one and its logits move. If transformers ever fixes this, this assertion tells us.
    leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    assert (leaky[start:start + len(ids)] - alone).abs().max() > 1e-2
