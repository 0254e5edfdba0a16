"""GPU: in bf16, the flash-attn 2 and torch-varlen backends give SDPA's packed logits and gradients, and packed
samples stay apart (logits equal per-sample runs). Skipped without CUDA (flash-attn cases also without flash-attn)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from trajtune.trainer.attention import VARLEN_NAME, flash_attn_installed
from trajtune.trainer.modeling import load_model, make_tiny_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BACKENDS = [
    pytest.param("varlen", id="torch-varlen"),
    pytest.param("flash", id="flash-attn-2", marks=pytest.mark.skipif(not flash_attn_installed(),
                                                                   reason="flash-attn not installed")),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # head_dim 64 and a few layers: shapes the fused kernels accept, small enough to run in seconds.
    return make_tiny_llama(str(tmp_path_factory.mktemp("gpu-tiny")), 1000, hidden_size=256, intermediate_size=512,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def _packed(lens, vocab=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, vocab, (n,), generator=g) for n in lens]
    ids = torch.cat(seqs)[None].cuda()
    pos = torch.cat([torch.arange(n) for n in lens])[None].cuda()
    return seqs, ids, pos


def _run(model_dir, attn, ids, pos):
    model, backend = load_model(model_dir, dtype=torch.bfloat16, attn=attn)
    model.cuda()
    out = model(input_ids=ids, position_ids=pos, labels=ids)
    out.loss.backward()
    grad = model.model.layers[0].self_attn.q_proj.weight.grad.float()
    return model, backend, out.logits.float().detach(), grad


@pytest.mark.parametrize("attn", BACKENDS)
def test_backend_matches_sdpa_in_bf16(model_dir, attn):
    seqs, ids, pos = _packed([300, 57, 700, 1, 200])
    _, _, ref_logits, ref_grad = _run(model_dir, "sdpa", ids, pos)
    model, backend, logits, grad = _run(model_dir, attn, ids, pos)
    assert backend == {"varlen": VARLEN_NAME, "flash": "flash_attention_2"}[attn]
    torch.testing.assert_close(logits, ref_logits, rtol=0.02, atol=0.02)
    assert (grad - ref_grad).norm() / ref_grad.norm() < 0.02
    # Isolation: a packed sample's logits are its own run's logits.
    with torch.no_grad():
        alone = model(input_ids=seqs[2][None].cuda()).logits.float()
    torch.testing.assert_close(logits[:, 357:1057], alone, rtol=0.02, atol=0.02)


def test_auto_picks_a_varlen_backend_on_cuda(model_dir):
    _, backend = load_model(model_dir, dtype=torch.bfloat16, attn="auto")
    assert backend == ("flash_attention_2" if flash_attn_installed() else VARLEN_NAME)


def test_bench_runs_tiny_on_gpu(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--preset", "tiny",
                           "--steps", "3", "--warmup", "1", "--seq-len", "512", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["trajtune"]["trained_tokens_per_s"] > 0 and figures["trl"]["trained_tokens_per_s"] > 0
