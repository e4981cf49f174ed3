"""``QuantLinear``: an ``nn.Linear`` whose weight is int4 group-wise (``qweight`` / ``scales`` / ``zeros``).

Buffers: ``qweight`` uint8 ``(N, K // 2)``, ``scales`` / ``zeros`` ``(K // G, N)`` in the model's dtype (persistent,
so they are what ``state_dict`` and the checkpoint hold), ``bias`` a Parameter. Layout and maths are
``xlmrxl_kernels.reference.int4``'s; the forward dispatches ``int4_matmul`` through ``xlmrxl.backend.Backend`` (the
Triton kernel on CUDA, dequantize + ``F.linear`` elsewhere). How the (scale, zero) pairs were chosen (rtn / mse /
gptq) does not matter here: every method writes this one format.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..backend import Backend
from .params import quantize_weight

ERRORS_ATTR = "_xlmrxl_int4_weight_errors"  # on a quantized model: {linear: ||W - Wq||_F / ||W||_F}

logger = logging.getLogger("xlmrxl")


class QuantLinear(nn.Module):
    """``nn.Linear`` with an int4 group-wise weight: ``y = x @ dequantize(qweight, scales, zeros).T + bias``."""

    uses_backend = True  # the model's set_backend() hands it the model's Backend

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        group_size: int = 128,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        if group_size < 2 or group_size % 2 or in_features % group_size:
            raise ValueError(
                f"QuantLinear: in_features={in_features} must be a multiple of group_size="
                f"{group_size} (an even number); choose a group size that divides it"
            )
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(in_features // group_size, out_features, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.empty(in_features // group_size, out_features, dtype=dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.backend: Backend | None = None  # None: Backend() (XLMRXL_BACKEND, else "auto")

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128, method: str = "rtn", **options) -> QuantLinear:
        """Quantize ``linear`` where it lives (its device, its dtype); the bias Parameter is shared, not copied.

        ``method``: ``"rtn"`` (min-max, torchao's) or ``"mse"`` (searched per group; ``options`` as
        ``xlmrxl.quantization.params.quantize_weight`` takes them)."""
        cls(linear.in_features, 1, bias=False, group_size=group_size, device="meta")  # checks K and G, in its words
        with torch.no_grad():
            packed = quantize_weight(linear.weight.detach(), group_size, method, **options)
        return cls.from_parts(linear, *packed, group_size=group_size)

    @classmethod
    def from_parts(
        cls, linear: nn.Linear, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int = 128
    ) -> QuantLinear:
        """A QuantLinear replacing ``linear`` with given packed tensors (e.g. GPTQ's); ``linear``'s bias is shared."""
        q = cls(
            linear.in_features,
            linear.out_features,
            bias=False,
            group_size=group_size,
            dtype=scales.dtype,
            device="meta",
        )
        q.qweight, q.scales, q.zeros = qweight, scales, zeros
        q.bias = linear.bias  # same object: keeps ties such as lm_head.bias <-> lm_head.decoder.bias
        return q

    @classmethod
    def concat(cls, mods: Sequence[QuantLinear], share_storage: bool = False) -> QuantLinear:
        """One QuantLinear computing ``cat([m(x) for m in mods], -1)`` (e.g. fused q/k/v): rows stack along N.

        ``share_storage=True`` then makes each source's ``qweight`` / ``scales`` / ``zeros`` / ``bias`` views of
        the concatenated tensors, so the fused copy costs no memory (the scales / zeros views are column slices:
        strided, which ``int4_matmul`` and the reference accept)."""
        if not mods or len({(m.in_features, m.group_size, m.scales.dtype) for m in mods}) != 1:
            raise ValueError("QuantLinear.concat needs QuantLinears with one in_features, group size and dtype")
        first = mods[0]
        has_bias = any(m.bias is not None for m in mods)
        out = cls(
            first.in_features,
            sum(m.out_features for m in mods),
            bias=False,
            group_size=first.group_size,
            dtype=first.scales.dtype,
            device="meta",
        )
        with torch.no_grad():
            out.qweight = torch.cat([m.qweight for m in mods], dim=0)
            out.scales = torch.cat([m.scales for m in mods], dim=1)
            out.zeros = torch.cat([m.zeros for m in mods], dim=1)
            if has_bias:
                out.bias = nn.Parameter(
                    torch.cat([m.bias if m.bias is not None else m.scales.new_zeros(m.out_features) for m in mods]),
                    requires_grad=False,
                )
            if share_storage:
                off = 0
                for m in mods:
                    n = m.out_features
                    m.qweight = out.qweight[off : off + n]
                    m.scales = out.scales[:, off : off + n]
                    m.zeros = out.zeros[:, off : off + n]
                    if m.bias is not None:
                        m.bias.data = out.bias.data[off : off + n]
                    off += n
        out.backend = first.backend
        return out

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        """The buffers as they are, except strided views (the fused q/k/v's ``scales`` / ``zeros`` column slices,
        see ``concat``): a contiguous copy of those, so ``state_dict`` never hands out a view that overlaps another
        layer's (transformers' ``save_pretrained`` measures each tensor's extent with ``view(-1)``)."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in ("qweight", "scales", "zeros"):
            t = destination.get(prefix + name)
            if t is not None and not t.is_contiguous():
                destination[prefix + name] = t.detach().contiguous()

    def dequantize(self) -> torch.Tensor:
        """The full-precision weight ``(out_features, in_features)`` this layer computes with."""
        from xlmrxl_kernels.reference.int4 import dequantize_int4_ref

        return dequantize_int4_ref(self.qweight, self.scales, self.zeros, self.group_size)

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        if torch.compiler.is_compiling():  # the backend's per-call choice (its logged reasons) is not traceable
            from xlmrxl_kernels.reference.int4 import int4_matmul_ref

            return int4_matmul_ref(
                x, self.qweight, self.scales, self.zeros, group_size=self.group_size, bias=bias, activation=activation
            )
        backend = self.backend if self.backend is not None else _default_backend()
        return backend.int4_matmul(
            x, self.qweight, self.scales, self.zeros, group_size=self.group_size, bias=bias, activation=activation
        )

    @property
    def weight(self):
        raise AttributeError(
            f"{type(self).__name__} has no full-precision weight; use .dequantize() (or .qweight / .scales / .zeros)"
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"group_size={self.group_size}, dtype={str(self.scales.dtype).replace('torch.', '')}"
        )


_DEFAULT_BACKEND: list[Backend] = []


def _default_backend() -> Backend:
    if not _DEFAULT_BACKEND:
        _DEFAULT_BACKEND.append(Backend())
    return _DEFAULT_BACKEND[0]
