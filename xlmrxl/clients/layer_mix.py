"""COMET's layer-wise attention (scalar mix of every hidden state) accumulated on packed tokens as the layers run.

COMET's ``LayerwiseAttention`` (``comet/modules/layerwise_attention.py``) mixes the L + 1 hidden states of the encoder:

    mix = gamma * sum_k s_k * f(h_k),   s = softmax(w) or sparsemax(w),   f = identity, or with ``layer_norm=True``
    f(h)[b] = (h[b] - mean_b) / sqrt(var_b + 1e-12),  mean and variance over row b's real tokens and all H features

COMET receives all L + 1 states as padded ``(B, S, H)`` tensors (37 x B x S x 2560 values for XL). ``PackedLayerMix``
is instead handed each state once, on the packed ``(T, H)`` real tokens, by ``xlmrxl.fast.stack.encoder_forward``'s
``layer_callback``, and adds ``s_k * f(h_k)`` to one fp32 ``(T, H)`` accumulator: memory O(T x H) whatever L.
The weights are COMET's own (its ``scalar_parameters``, ``gamma`` and ``transform_fn``), read at every forward, and
the terms are added in COMET's order, so in fp32 the mix equals COMET's up to the hidden states themselves (the
per-row statistics are summed in another order: ~1e-7 relative). Layers a head reads whole (XCOMET's word layer,
``layer=<int>``) are kept packed; ``PackedLayers`` hands them out as ``(B, S, H)`` (zeros at padding) on request.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from ..fast.packing import Packing

__all__ = ["PackedLayerMix", "PackedLayers", "mix_unsupported_reason"]


def mix_unsupported_reason(module: nn.Module) -> str | None:
    """None when COMET's ``LayerwiseAttention`` ``module`` can be mixed on packed tokens, else why not."""
    params = getattr(module, "scalar_parameters", None)
    if params is None or not hasattr(module, "gamma") or not hasattr(module, "transform_fn"):
        return f"{type(module).__name__} is not laid out like COMET's LayerwiseAttention"
    if len(list(params)) != module.num_layers:
        return "COMET's layer mix lost its scalar parameters (a DataParallel replica): COMET's code runs"
    if module.training and getattr(module, "dropout", None):
        return "COMET's layer mix is in training mode with layer dropout"
    return None


class PackedLayerMix:
    """The ``layer_callback`` of one forward: accumulates COMET's mix, keeps the layers in ``keep`` (packed)."""

    def __init__(self, module: nn.Module | None, num_states: int, keep: Iterable[int] = ()) -> None:
        if module is not None and num_states != module.num_layers:
            raise ValueError(
                f"COMET's layer mix expects {module.num_layers} hidden states, the encoder gives {num_states}"
            )
        self.module = module
        self.num_states = num_states
        self.keep = {k % num_states for k in keep}
        self.kept: dict[int, torch.Tensor] = {}
        self.acc: torch.Tensor | None = None
        self.packing = None
        self._rows = None
        if module is not None:
            with torch.no_grad():
                w = torch.cat([p.detach().reshape(1) for p in module.scalar_parameters]).float()
                self.weights = module.transform_fn(w, dim=0)  # COMET's own softmax / sparsemax
                self.gamma = module.gamma.detach().float()

    @property
    def graph_key(self) -> tuple:
        """What a CUDA graph of the stack with this mix depends on (the weights are inputs, copied in by ``load``)."""
        if self.module is None:
            return (self.num_states, tuple(sorted(self.keep)), None)
        w = self.weights
        return (self.num_states, tuple(sorted(self.keep)), bool(self.module.layer_norm), w.device, w.dtype)

    def static_twin(self) -> PackedLayerMix:
        """The copy a captured graph runs: its weights and gamma are static buffers (``load`` fills them)."""
        twin = PackedLayerMix(None, self.num_states, self.keep)
        twin.module = self.module
        if self.module is not None:
            twin.weights, twin.gamma = self.weights.clone(), self.gamma.clone()
        return twin

    def load(self, other: PackedLayerMix) -> None:
        """Copy ``other``'s weights (this call's) into this twin's static buffers."""
        if self.module is not None:
            self.weights.copy_(other.weights)
            self.gamma.copy_(other.gamma)

    def begin(self, packing: Packing) -> None:
        """Start a forward (inside the graph: no state from a previous run is read)."""
        self.acc, self.kept, self._rows, self.packing = None, {}, None, packing

    def results(self) -> tuple[torch.Tensor, ...]:
        """The forward's outputs, each with the packed tokens as rows: the accumulated mix, then the kept layers."""
        acc = () if self.module is None else (self.acc,)
        return acc + tuple(self.kept[k] for k in sorted(self.keep))

    def finish(self, results: tuple[torch.Tensor, ...], packing: Packing) -> None:
        """Adopt ``results`` (of a twin's graph run, sliced to this call's tokens) as this forward's."""
        self.packing = packing
        if self.module is not None:
            self.acc, results = results[0], results[1:]
        self.kept = dict(zip(sorted(self.keep), results))

    def __call__(self, i: int, x: torch.Tensor, packing) -> None:
        self.packing = packing
        if i in self.keep:
            self.kept[i] = x.clone()  # the stream's tensor may be reused by the next layer
        if self.module is None:
            return
        term = self.weights[i].to(x.device) * (self._normalise(x, packing) if self.module.layer_norm else x.float())
        self.acc = term if self.acc is None else self.acc.add_(term)

    def _row_ids(self, packing, device, tokens: int) -> torch.Tensor:
        """(T,) row index of every packed token (from ``cu_seqlens``: no host sync, the same inside a graph)."""
        if self._rows is None:
            cu = packing.cu_seqlens.to(device)
            counts = torch.diff(cu).long()
            rows = torch.arange(counts.shape[0], device=device)
            self._rows = torch.repeat_interleave(rows, counts, output_size=tokens)
        return self._rows

    def _normalise(self, x: torch.Tensor, packing) -> torch.Tensor:
        """COMET's per-row normalisation (its ``_layer_norm``) on packed tokens, in fp32."""
        xf = x.float()
        rows = self._row_ids(packing, x.device, x.shape[0])
        B, H = packing.cu_seqlens.shape[0] - 1, x.shape[-1]
        count = torch.diff(packing.cu_seqlens.to(x.device)).float() * H  # real elements per row
        mean = torch.zeros(B, device=x.device).index_add_(0, rows, xf.sum(-1)) / count
        centred = xf - mean[rows, None]
        var = torch.zeros(B, device=x.device).index_add_(0, rows, centred.square().sum(-1)) / count
        return centred.div_(torch.sqrt(var + 1e-12)[rows, None])

    def mixed(self, dtype: torch.dtype) -> torch.Tensor:
        """The mix, ``(B, S, H)`` in ``dtype``, zeros at padded positions."""
        if self.acc is None:
            raise RuntimeError("no layer was mixed: the encoder forward did not run the packed layer mix")
        return self.packing.unpack((self.gamma.to(self.acc.device) * self.acc).to(dtype))


class PackedLayers:
    """Stands for COMET's ``encoder_out["all_layers"]`` (L + 1 states): the layers kept are served as (B, S, H),
    and the patched ``LayerwiseAttention`` reads the packed mix from it; no other layer exists any more."""

    def __init__(self, mix: PackedLayerMix, attention_mask: torch.Tensor, dtype: torch.dtype) -> None:
        self.mix = mix
        self.attention_mask = attention_mask
        self.dtype = dtype

    def __len__(self) -> int:
        return self.mix.num_states

    def __getitem__(self, i):
        if not isinstance(i, int):
            raise TypeError(f"the accelerated COMET encoder serves single layers by index, not {type(i).__name__}")
        k = i % self.mix.num_states if -self.mix.num_states <= i < self.mix.num_states else None
        if k is None:
            raise IndexError(f"layer {i} out of range for {self.mix.num_states} hidden states")
        if k not in self.mix.kept:
            raise KeyError(
                f"hidden state {i} was not kept by xlmrxl's accelerated COMET encoder (kept: {sorted(self.mix.kept)}; "
                "the layer mix is computed as the layers run); call xlmrxl.deaccelerate(model) to get every layer"
            )
        return self.mix.packing.unpack(self.mix.kept[k]).to(self.dtype)

    def mixed(self, module: nn.Module, mask: torch.Tensor | None) -> torch.Tensor:
        """The mix of ``module`` for ``mask`` (the one the encoder ran with)."""
        if self.mix.module is not module:
            raise RuntimeError("these hidden states were mixed for another LayerwiseAttention module")
        if mask is not None and mask is not self.attention_mask and not torch.equal(mask, self.attention_mask):
            raise ValueError("the layer mix was asked with another attention mask than the encoder ran with")
        return self.mix.mixed(self.dtype)
