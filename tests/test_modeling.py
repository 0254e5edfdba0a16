"""Model loading: packed samples never attend to each other in any CPU-runnable backend, backend choice,
FLOPs per token against a hand count, LoRA training, gradient checkpointing."""

import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import TEMPLATES

from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.tokenizer import byte_level_tokenizer
from trajtune.trainer import attention
from trajtune.trainer.attention import choose_backend, cu_seqlens_from_position_ids
from trajtune.trainer.modeling import flops_per_token, load_model, make_tiny_llama, matmul_params


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tok = byte_level_tokenizer((TEMPLATES / "qwen2.5-instruct.jinja").read_text())
    return make_tiny_llama(str(tmp_path_factory.mktemp("tiny")), len(tok), tok)


def _packed(vocab: int, lens: list[int], seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, vocab, (n,), generator=g) for n in lens]
    ids = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    return seqs, ids, pos


@pytest.mark.parametrize("attn", ["sdpa", "varlen", "eager"])
def test_packed_logits_equal_per_sample_logits(tiny_dir, attn):
    model, backend = load_model(tiny_dir, dtype=torch.float32, attn=attn)
    model.eval()
    seqs, ids, pos = _packed(model.config.vocab_size, [5, 11, 3, 7])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos).logits[0]
        single = torch.cat([model(input_ids=s[None]).logits[0] for s in seqs])
    assert backend == {"varlen": attention.VARLEN_NAME}.get(attn, attn)
    torch.testing.assert_close(packed, single, rtol=1e-5, atol=1e-5)


def test_varlen_handles_padded_rows_batch_of_two(tiny_dir):
    """Two packed rows in one batch; the second ends in a pad run restarting at 0, as the collator writes."""
    model, _ = load_model(tiny_dir, dtype=torch.float32, attn="varlen")
    model.eval()
    row_a, ids_a, pos_a = _packed(model.config.vocab_size, [6, 4], seed=2)
    row_b, ids_b, pos_b = _packed(model.config.vocab_size, [7], seed=3)
    ids = torch.cat([ids_a, torch.cat([ids_b, torch.zeros(1, 3, dtype=torch.long)], 1)])
    pos = torch.cat([pos_a, torch.cat([pos_b, torch.arange(3)[None]], 1)])
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=pos).logits
        want_b = model(input_ids=row_b[0][None]).logits[0]
        want_a1 = model(input_ids=row_a[1][None]).logits[0]
    torch.testing.assert_close(logits[1, :7], want_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[0, 6:], want_a1, rtol=1e-5, atol=1e-5)


def test_load_model_turns_cache_off_because_cache_breaks_packing(tiny_dir):
    model, _ = load_model(tiny_dir, dtype=torch.float32, attn="sdpa")
    model.eval()
    seqs, ids, pos = _packed(model.config.vocab_size, [5, 6])
    assert model.config.use_cache is False
    with torch.no_grad():
        exact = model(input_ids=ids, position_ids=pos).logits[0, 5:]
        leaky = model(input_ids=ids, position_ids=pos, use_cache=True).logits[0, 5:]
        alone = model(input_ids=seqs[1][None]).logits[0]
    torch.testing.assert_close(exact, alone, rtol=1e-5, atol=1e-5)
    assert (leaky - alone).abs().max() > 1e-3  # the trap the default avoids: sample 2 sees sample 1


def test_cu_seqlens_from_position_ids_cuts_at_restarts_and_rows():
    pos = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]])
    cu, longest = cu_seqlens_from_position_ids(pos)
    assert cu.tolist() == [0, 3, 5, 9, 10] and cu.dtype == torch.int32
    assert longest == 4


def test_choose_backend_order_and_errors(monkeypatch):
    assert choose_backend("auto", "cpu") == "sdpa"
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    assert choose_backend("auto", "cuda") == attention.VARLEN_NAME
    assert choose_backend("auto", "cuda", half=False) == "sdpa"  # the fused kernels take bf16/fp16 only
    with pytest.raises(TrajtuneError, match="bf16"):
        choose_backend("varlen", "cuda", half=False)
    mistral_like = SimpleNamespace(sliding_window=4096, use_sliding_window=True)
    assert choose_backend("auto", "cuda", mistral_like) == "sdpa"
    with pytest.raises(TrajtuneError, match="sliding-window"):
        choose_backend("varlen", "cuda", mistral_like)
    with pytest.raises(TrajtuneError, match="pip install flash-attn"):
        choose_backend("flash", "cuda")
    with pytest.raises(TrajtuneError, match="not one of"):
        choose_backend("fast", "cpu")
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    assert choose_backend("auto", "cuda") == "flash_attention_2"
    with pytest.raises(TrajtuneError, match="CUDA"):
        choose_backend("flash_attention_2", "cpu")


# Stand-ins with the signatures of PyTorch's varlen_attn over its releases (bodies never run).
def _varlen_torch_2_9(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    raise AssertionError("not called")


def _varlen_no_gqa(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                   window_size=(-1, -1), seqused_k=None, block_table=None, num_splits=None):
    raise AssertionError("not called")


def _varlen_torch_2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                       window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    return query


@pytest.mark.parametrize("fn", [_varlen_torch_2_9, _varlen_no_gqa, _varlen_torch_2_13])
def test_torch_varlen_is_chosen_only_when_its_signature_takes_our_keywords(monkeypatch, caplog, fn):
    """An older varlen_attn would raise a TypeError at the first forward: auto falls back to SDPA and says so."""
    from torch.nn.attention import varlen

    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    monkeypatch.setattr(varlen, "varlen_attn", fn)
    q = torch.zeros(2, 1, 4)
    cu = torch.tensor([0, 2], dtype=torch.int32)
    try:  # the call varlen_attention_forward makes
        fn(q, q, q, cu, cu, 2, 2, scale=None, window_size=(-1, 0), enable_gqa=False)
        takes_our_call = True
    except TypeError:
        takes_our_call = False
    with caplog.at_level(logging.INFO, logger="trajtune.attention"):
        chosen = choose_backend("auto", "cuda")
    assert chosen == (attention.VARLEN_NAME if takes_our_call else "sdpa")
    assert takes_our_call == (fn is _varlen_torch_2_13)
    if takes_our_call:
        assert choose_backend("varlen", "cuda") == attention.VARLEN_NAME
    else:
        assert "using sdpa" in caplog.text and "enable_gqa" in caplog.text
        with pytest.raises(TrajtuneError, match=r"varlen_attn taking scale, window_size, enable_gqa"):
            choose_backend("varlen", "cuda")
        assert choose_backend("varlen", "cpu") == attention.VARLEN_NAME  # CPU runs the reference loop, no kernel


def test_flops_per_token_matches_hand_count(tiny_dir):
    model, _ = load_model(tiny_dir, dtype=torch.float32, attn="sdpa")
    c = model.config  # hidden 64, 2 layers, 4 heads x 16, 2 KV heads, MLP 128, vocab 260
    per_layer = (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64) + 3 * 64 * 128  # q, k, v, o + gate, up, down
    n = 2 * per_layer + 64 * c.vocab_size  # + LM head; the embedding lookup costs no FLOPs
    assert matmul_params(c) == n
    assert flops_per_token(c, 100) == 6 * n + 12 * 2 * 4 * 16 * 100
    # The same N from the real module: every parameter except the input embedding and the norms.
    counted = sum(p.numel() for name, p in model.named_parameters() if "norm" not in name and "embed" not in name)
    assert counted == n


def test_lora_trains_only_adapters_and_lowers_loss(tiny_dir):
    lora = SimpleNamespace(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"])
    model, _ = load_model(tiny_dir, dtype=torch.float32, attn="sdpa", lora=lora)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    _, ids, pos = _packed(model.config.vocab_size, [16, 16])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, position_ids=pos, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n


def test_lora_unknown_target_is_a_clear_error(tiny_dir):
    with pytest.raises(TrajtuneError, match="query_key_value"):
        load_model(tiny_dir, dtype=torch.float32, lora=SimpleNamespace(r=4, alpha=8, dropout=0.0,
                                                                       targets=["query_key_value"]))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir):
    _, ids, pos = _packed(260, [9, 7])
    grads = []
    for ckpt in (False, True):
        model, _ = load_model(tiny_dir, dtype=torch.float32, attn="sdpa", gradient_checkpointing=ckpt)
        assert model.is_activation_checkpointing == ckpt
        model(input_ids=ids, position_ids=pos, labels=ids).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_missing_model_dir_is_a_trajtune_error(tmp_path):
    with pytest.raises(TrajtuneError, match="not found: no local directory"):  # see tests/test_pretrained.py
        load_model(str(tmp_path / "nope"), dtype=torch.float32)
    with pytest.raises(TrajtuneError, match="config.json"):
        load_model(str(tmp_path), dtype=torch.float32)


def test_varlen_uses_precomputed_boundaries_when_given(tiny_dir):
    """cu_seq_lens_q / max_length_q passed to forward replace the per-layer derivation (same logits)."""
    model, _ = load_model(tiny_dir, dtype=torch.float32, attn="varlen")
    model.eval()
    _, ids, pos = _packed(model.config.vocab_size, [4, 8, 5])
    cu, longest = cu_seqlens_from_position_ids(pos)
    with torch.no_grad():
        derived = model(input_ids=ids, position_ids=pos).logits
        given = model(input_ids=ids, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest,
                      max_length_k=longest).logits
        # Wrong boundaries (one sample) must change the result: proof the given ones are used.
        whole = torch.tensor([0, 17], dtype=torch.int32)
        wrong = model(input_ids=ids, position_ids=pos, cu_seq_lens_q=whole, cu_seq_lens_k=whole, max_length_q=17,
                      max_length_k=17).logits
    torch.testing.assert_close(given, derived)
    assert (wrong - derived).abs().max() > 1e-3
