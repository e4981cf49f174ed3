"""``xlmrxl.clients.layer_mix.PackedLayerMix`` against COMET's own ``LayerwiseAttention`` on padded hidden states:
softmax and sparsemax weights, with and without per-layer normalisation, random weights and gamma (fp32 <= 1e-6)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("comet")

from comet.modules.layerwise_attention import LayerwiseAttention  # noqa: E402

from xlmrxl.clients.layer_mix import PackedLayerMix, PackedLayers  # noqa: E402
from xlmrxl.fast import pack  # noqa: E402


@pytest.mark.parametrize("transform", ["softmax", "sparsemax"])
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("num_states", [2, 7])
def test_packed_mix_matches_comet(transform, layer_norm, num_states):
    torch.manual_seed(num_states)
    B, S, H = 4, 11, 40
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 1:] = 0  # one real token
    mask[3, 5:] = 0
    layers = [torch.randn(B, S, H) * (1 + k) + k for k in range(num_states)]
    module = LayerwiseAttention(num_states, layer_norm=layer_norm, layer_transformation=transform, dropout=0.1).eval()
    with torch.no_grad():
        for p in module.scalar_parameters:
            p.copy_(torch.randn(1))
        module.gamma.copy_(torch.tensor([0.7]))
        want = module(layers, mask)
    mix = PackedLayerMix(module, num_states, keep=[1])
    for k, h in enumerate(layers):
        x, packing = pack(h, mask)
        mix(k, x, packing)
    got = PackedLayers(mix, mask, torch.float32)
    out = got.mixed(module, mask)
    assert out.shape == want.shape and out.dtype == want.dtype
    real = mask.bool()
    err = (out - want).abs()[real].max().item()
    assert err <= 1e-6, f"packed mix vs COMET's: max error {err:.3g}"
    assert (out[~real] == 0).all(), "padded positions must be zeros"
    assert torch.equal(got[1][real], layers[1][real]), "a kept layer comes back unchanged"
    with pytest.raises(KeyError, match="not kept"):
        got[0]
