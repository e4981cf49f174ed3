"""GPTQ: int4 group-wise weights that compensate each column's rounding error with the Hessian of real inputs.

Per linear layer with weight ``W`` (N, K) and calibration inputs ``X`` (real tokens only), ``H = sum x x^T`` (the ``2
/ n`` factor of ``H = 2 X^T X / n`` is dropped: GPTQ only uses ``H`` relative to its damping). Following Frantar et
al. (2022), no act-order: ``H += percdamp * mean(diag H) * I``, ``U = cholesky(H^-1, upper)``; the columns are
processed left to right in blocks of ``blocksize``; at the first column of each group its ``(scale, zero)`` are chosen
from the group's current (error-updated) weights (``params``: ``"rtn"`` min-max or ``"mse"`` searched, see
``params.py``), each column is rounded, and its error ``(w - w_hat) / U[i, i]`` is spread onto the columns not yet
processed. The result is the plain format: the same kernels and files serve.

Model level (``gptq_quantize``): the calibration batch goes through the embeddings once; then per encoder layer
the Hessians of its target linears are accumulated from forward pre-hooks over real tokens (right-padded batches
with an additive mask; q / k / v receive the same tensor and share one Hessian, so their rows are quantized as one
(3H, H) matrix), the layer's linears are replaced by ``QuantLinear``, and the layer runs again, now quantized, to
give the next layer its inputs. Memory: one layer's activations for the calibration set and that layer's
Hessians. Deterministic: two runs with one seed give identical bits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from xlmrxl_kernels.reference.int4 import pack_int4

from ..progress import progress_bar
from .calibration import batches
from .linear import QuantLinear
from .params import codes, group_params

logger = logging.getLogger("xlmrxl")

GPTQ_DEFAULTS = {"percdamp": 0.01, "blocksize": 128, "batch_size": 8, "seed": 0, "max_samples": None, "params": "mse"}


def gptq_matrix(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int = 128,
    percdamp: float = 0.01,
    blocksize: int = 128,
    params: str = "mse",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of one weight ``(N, K)`` given ``hessian`` ``(K, K)``: ``(qweight, scales, zeros)`` in the plain layout,
    ``scales`` / ``zeros`` in ``weight.dtype``."""
    N, K = weight.shape
    if K % group_size:
        raise ValueError(f"in_features K={K} is not a multiple of group_size={group_size}")
    if tuple(hessian.shape) != (K, K):
        raise ValueError(f"hessian must be ({K}, {K}) for a weight with K={K}, got {tuple(hessian.shape)}")
    dtype = weight.dtype
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0  # inputs that never fire: any value is exact, quantize them as zero weights
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = _inverse_cholesky(H, percdamp)
    bs = group_size * max(1, blocksize // group_size)  # blocks start on group boundaries
    G = group_size
    q_all = torch.empty(N, K, dtype=torch.uint8, device=W.device)
    scales = torch.empty(N, K // G, dtype=torch.float32, device=W.device)
    zeros = torch.empty_like(scales)
    for i1 in range(0, K, bs):
        i2 = min(i1 + bs, K)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % G == 0:
                s, z = group_params(W1[:, i : i + G], dtype, params)
                scales[:, col // G], zeros[:, col // G] = s.squeeze(-1), z.squeeze(-1)
            w = W1[:, i]
            q = codes(w.unsqueeze(-1), s, z).squeeze(-1)
            q_all[:, col] = q.to(torch.uint8)
            w_hat = ((q - 8) * s.squeeze(-1) + z.squeeze(-1)).to(dtype).float()
            err = (w - w_hat) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return pack_int4(q_all, G), scales.to(dtype).t().contiguous(), zeros.to(dtype).t().contiguous()


def _inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped ``H^-1``; more damping (x10, three times) if ``H`` is not positive."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    damp = float(percdamp) * torch.diag(H).mean()
    for _ in range(4):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0:
                return U
        damp = damp * 10
    raise ValueError(
        f"GPTQ: the calibration Hessian ({H.shape[0]} inputs) is not positive definite even with damping "
        f"{float(damp):.3g}; pass more (or more varied) calibration texts or a larger percdamp"
    )


def _base_model(model: nn.Module) -> tuple[str, nn.Module]:
    for name, m in model.named_modules():
        if hasattr(m, "embeddings") and hasattr(getattr(m, "encoder", None), "layer"):
            return name, m
    raise ValueError(f"{type(model).__name__}: no submodule with .embeddings and .encoder.layer; GPTQ cannot run it")


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype, causal: bool) -> torch.Tensor | None:
    """(B, 1, 1 or L, L) additive mask: padding keys masked (and future keys in a decoder); None if nothing is."""
    B, L = mask.shape
    if not causal and bool(mask.all()):
        return None
    neg = torch.finfo(dtype).min
    out = torch.zeros(B, 1, 1, L, dtype=dtype, device=mask.device).masked_fill(~mask.bool()[:, None, None, :], neg)
    if causal:
        future = torch.ones(L, L, dtype=torch.bool, device=mask.device).triu(1)
        out = out.masked_fill(future[None, None], neg)
    return out


def gptq_quantize(
    model: nn.Module,
    names: Sequence[str],
    seqs: Sequence[torch.Tensor],
    group_size: int = 128,
    *,
    percdamp: float = 0.01,
    blocksize: int = 128,
    batch_size: int = 8,
    params: str = "mse",
    progress: bool | None = None,
) -> dict[str, float]:
    """Replace the encoder-layer linears among ``names`` with GPTQ ``QuantLinear`` layers calibrated on ``seqs``
    (real token ids, one 1-D tensor per text); return each one's relative weight error ``||W - Wq|| / ||W||``.
    Names outside the encoder layers are left to the caller."""
    base_name, base = _base_model(model)
    config = model.config
    if getattr(config, "add_cross_attention", False):
        raise ValueError(
            "GPTQ calibrates encoder layers on texts alone; this model has cross-attention (it needs encoder "
            "states). Use method='mse' (data-free) for it"
        )
    prefix = f"{base_name}.encoder.layer." if base_name else "encoder.layer."
    emb_weight = base.embeddings.word_embeddings.weight
    device, dtype = emb_weight.device, emb_weight.dtype
    causal = bool(getattr(config, "is_decoder", False))
    pad = int(getattr(config, "pad_token_id", 1))
    backend = getattr(model, "backend", None)
    errors: dict[str, float] = {}
    was_training = model.training
    model.eval()
    layers = base.encoder.layer
    bar = progress_bar(len(layers), "xlmrxl quantize gptq", "layer", progress)
    try:
        with torch.no_grad():
            data = []
            for ids, mask in batches(seqs, batch_size, pad):
                ids, mask = ids.to(device), mask.to(device)
                data.append([base.embeddings(input_ids=ids), mask.bool(), _additive_mask(mask, dtype, causal)])
            for i, layer in enumerate(layers):
                mine = [n for n in names if n.startswith(f"{prefix}{i}.")]
                if mine:
                    errors.update(_quantize_layer(model, layer, mine, data, group_size, percdamp, blocksize, params))
                    for n in mine:
                        model.get_submodule(n).backend = backend
                for item in data:  # this layer's (now quantized) output is the next layer's input
                    item[0] = layer(item[0], attention_mask=item[2])[0]
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return errors


def _quantize_layer(model, layer, names, data, group_size, percdamp, blocksize, params) -> dict[str, float]:
    hess: dict[str, torch.Tensor] = {}
    key_of: dict[str, str] = {}
    current: dict[str, object] = {"mask": None, "seen": []}

    def hook_for(name):
        def pre(mod, args):
            x = args[0]
            key = next((k for obj, k in current["seen"] if obj is x), None)
            if key is None:
                current["seen"].append((x, name))  # keeps x alive for the call: ids cannot be reused
                key = name
                mask = current["mask"]
                rows = x[mask] if x.dim() == 3 and x.shape[:2] == mask.shape else x.reshape(-1, x.shape[-1])
                rows = rows.float()
                h = rows.t() @ rows
                hess[key] = hess[key] + h if key in hess else h
            if key_of.setdefault(name, key) != key:
                raise RuntimeError(f"GPTQ: {name} shared its input with different layers across batches")

        return pre

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        for hs, mask, add in data:
            current["mask"], current["seen"] = mask, []
            layer(hs, attention_mask=add)
    finally:
        for h in handles:
            h.remove()
        current["seen"] = []
    missing = [n for n in names if n not in key_of]
    if missing:
        raise ValueError(f"GPTQ: {missing} received no calibration inputs in the layer's forward")
    errors = {}
    for key in dict.fromkeys(key_of.values()):
        members = [n for n in names if key_of[n] == key]
        lins = [model.get_submodule(n) for n in members]
        W = torch.cat([lin.weight for lin in lins])
        qweight, scales, zeros = gptq_matrix(W, hess.pop(key), group_size, percdamp, blocksize, params)
        off = 0
        for n, lin in zip(members, lins):
            rows = slice(off, off + lin.out_features)
            q = QuantLinear.from_parts(
                lin, qweight[rows].contiguous(), scales[:, rows].contiguous(), zeros[:, rows].contiguous(), group_size
            )
            w = lin.weight.float()
            errors[n] = float((q.dequantize().float() - w).norm() / w.norm().clamp(min=1e-30))
            _replace(model, n, q)
            off += lin.out_features
    return errors


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
