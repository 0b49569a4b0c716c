"""The zoo's vision transformer: attention modes agree, capture and the planner see attention."""
import pytest
import torch

from hwai import graph, memory, models
from hwai.errors import UserError


def _vit(mode: str, patch: int = 4, chunk: int = 24):
    torch.manual_seed(0)
    return models.create("vit", 10, 3, 32, width=0.25, depth=2, patch_size=patch, attention=mode, chunk=chunk).eval()


def test_attention_modes_give_the_same_outputs_and_gradients():
    x = torch.randn(2, 3, 32, 32)
    outs, grads = {}, {}
    for mode in ("naive", "sdpa", "chunked"):  # chunk 24 does not divide 64 tokens: a short last chunk
        model = _vit(mode).train()
        out = model(x)
        out.sum().backward()
        outs[mode], grads[mode] = out.detach(), model.embed.weight.grad.clone()
    for mode in ("sdpa", "chunked"):
        assert torch.allclose(outs[mode], outs["naive"], atol=1e-5), mode
        assert torch.allclose(grads[mode], grads["naive"], atol=1e-5), mode
    assert outs["naive"].shape == (2, 10)


def test_capture_and_planner_see_attention():
    x = torch.randn(1, 3, 32, 32)
    naive, sdpa = graph.capture(_vit("naive", patch=2), x), graph.capture(_vit("sdpa", patch=2), x)
    assert naive.method == "fx" and sdpa.method == "fx"
    tokens, dim, heads = 256, 32, 4
    matmuls = [n for n in naive.nodes if n.op == "matmul"]
    assert len(matmuls) == 4 and all(n.macs == tokens * tokens * dim for n in matmuls)  # q k^T and a v, 2 blocks
    assert any(n.output_shape == (1, heads, tokens, tokens) for n in matmuls)  # the N x N scores
    # the planner predicts what fused attention saves: no N x N tensor
    assert memory.plan(naive).peak_bytes > 2 * memory.plan(sdpa).peak_bytes


def test_vit_rejects_bad_options():
    with pytest.raises(UserError, match="patch size 5 must divide"):
        models.create("vit", 10, 3, 32, patch_size=5)
    with pytest.raises(UserError, match="unknown attention"):
        models.create("vit", 10, 3, 32, attention="flash")
    assert models.create("vit", 10, 1, 28)(torch.randn(1, 1, 28, 28)).shape == (1, 10)  # MNIST: 7 x 7 tokens
