"""The op table: the only list of implementations, per op, in order: our Triton kernel(s), PyTorch's own, and the
reference last. ``xlmrxl_kernels.tuning.choose`` is the only place that picks one of them.

Each entry has the op's signature and returns the op's result (same shape, dtype and meaning). It states its hard
limits only (``not_supported(*args, **kwargs) -> list[Reason]``: dtype, device, shapes, features), never speed:
which of the entries that can take a call runs is measured (CUDA, ``backend="auto"``) or ruled
(``xlmrxl_kernels.tuning``). ``rule=True`` marks the entries a rule may pick where nothing is measured
(``backend="reference"``, CPU): the PyTorch maths of the reference, the reference itself last.

| op | entries after ``triton`` |
|---|---|
| ``linear_gelu`` | ``cublas``: ``F.gelu(F.linear(x, w, b))`` (GEMM with the bias in its epilogue, exact GELU) |
| ``linear_residual`` | ``cublas``: linear, then ``+= residual``; ``cublas-addmm``: ``addmm(residual + b, x, w.T)`` |
| ``attention`` | ``sdpa`` (PyTorch's choice), ``sdpa-flash`` / ``-efficient`` / ``-cudnn``, ``sdpa-causal`` (rule) |
| ``attention_varlen`` | ``flash-varlen``, ``varlen_attn`` (torch >= 2.9), ``sdpa-seq`` (per sequence, rule) |
| ``add_layernorm`` | ``torch``: ``h = x + residual; F.layer_norm(h, ...)`` (the composite) |
| ``int4_matmul`` | ``dequant-cublas``: dequantize to the activation dtype, then ``F.linear`` (+ GELU) |

Every op ends with ``reference`` (``xlmrxl_kernels.reference.<op>_ref``), never timed.
Left out on purpose: cuBLASLt's GELU epilogue (``torch._addmm_activation(..., use_gelu=True)``) computes the tanh
approximation, not the exact erf GELU of XLM-R, so it is not the same maths. torchao's int4 kernels need their own
packed weights; they join as an entry once the model layer keeps a torchao copy of the weight.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import reasons as R
from ._utils import interpreting
from .reasons import Reason
from .reference.add_layernorm import add_layernorm_ref
from .reference.int4 import int4_matmul_ref

_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KINDS = ("triton", "torch", "reference")


@dataclass(frozen=True)
class Entry:
    """One implementation of ``op``: ``fn`` has the op's signature; ``not_supported`` lists the hard limits that
    keep it from a call (plain strings become ``Reason(KERNEL, ...)``); ``cuda_only``: it never runs on another
    device; ``kind``: "triton", "torch" or "reference"; ``rule``: a rule may pick it where nothing is measured;
    ``lean(args, kwargs)``: a launcher bound to calls like this one (config chosen, checks done), or None."""

    op: str
    name: str
    fn: Callable
    not_supported: Callable[..., list[str]]
    cuda_only: bool = False
    kind: str = "torch"
    rule: bool = False
    lean: Callable | None = None

    def reasons(self, device: torch.device, args: tuple, kwargs: dict) -> list[Reason]:
        """Why this entry cannot take the call (its hard limits only; empty: it can)."""
        if self.cuda_only and device.type != "cuda":
            return [Reason(R.DEVICE, f"{self.name} runs on CUDA only (tensors on {device.type})")]
        return [r if isinstance(r, Reason) else Reason(R.KERNEL, r) for r in self.not_supported(*args, **kwargs)]

    def bind(self, args: tuple, kwargs: dict) -> Callable:
        """The callable to store for calls like this one: the lean launcher when the entry has one, else ``fn``."""
        return self.fn if self.lean is None else self.lean(args, kwargs)


Candidate = Entry  # (the measured choice's name for an entry)


def _none(*args, **kwargs) -> list[str]:
    return []


# -- Triton -----------------------------------------------------------------------------------------------------------
def _triton(op: str) -> Entry:
    import xlmrxl_kernels as pkg  # the package binds the kernels (or stubs without Triton)

    kernel = getattr(pkg, op)
    kernel_not_supported = getattr(pkg, f"{op}_not_supported")
    missing = pkg.TRITON_UNAVAILABLE_REASON

    def not_supported(*args, **kwargs) -> list[str]:
        if missing:
            return [Reason(R.TRITON, missing)]
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is not None and first.device.type != "cuda" and not interpreting():
            return [Reason(R.DEVICE, f"Triton kernels need CUDA tensors (tensors on {first.device.type})")]
        return list(kernel_not_supported(*args, **kwargs))

    return Entry(op, "triton", kernel, not_supported, kind="triton", lean=_lean(op))


def _lean(op: str) -> Callable | None:
    """The kernel's lean binder (``xlmrxl_kernels.lean``), None without Triton or for an op without one."""
    import xlmrxl_kernels as pkg

    if pkg.TRITON_UNAVAILABLE_REASON:  # no kernel modules to bind (the stubs refuse every call)
        return None
    try:
        from .lean import BINDERS
    except ImportError:
        return None
    return BINDERS.get(op)


# -- GEMM + epilogue --------------------------------------------------------------------------------------------------
def _linear_reasons(x, weight, bias, residual=None) -> list[str]:
    reasons = []
    if x.dtype not in _FLOATS or weight.dtype != x.dtype:
        reasons.append(f"needs x and weight of one float dtype, got {x.dtype} and {weight.dtype}")
    if bias is not None and bias.dtype != x.dtype:
        reasons.append(f"bias dtype {bias.dtype} differs from x dtype {x.dtype}")
    if residual is not None and residual.dtype != x.dtype:
        reasons.append(f"residual dtype {residual.dtype} differs from x dtype {x.dtype}")
    return reasons


def linear_gelu_cublas(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)``: cuBLAS GEMM with the bias in its epilogue, then PyTorch's exact GELU."""
    return F.gelu(F.linear(x, weight, bias))


def linear_residual_cublas(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor
) -> torch.Tensor:
    """``residual + x @ weight.T + bias``: GEMM with the bias in its epilogue, then one in-place add."""
    y = F.linear(x, weight, bias)
    return y.add_(residual)


def linear_residual_addmm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor
) -> torch.Tensor:
    """``residual + x @ weight.T + bias`` as one ``addmm`` reading ``residual + bias`` as its C operand."""
    N = weight.shape[0]
    c = residual.reshape(-1, N)
    if bias is not None:
        c = c + bias
    return torch.addmm(c, x.reshape(-1, x.shape[-1]), weight.t()).reshape(residual.shape)


# -- add + LayerNorm --------------------------------------------------------------------------------------------------
def add_layernorm_torch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch composite: ``h = x + residual`` then ``F.layer_norm`` (fp32 statistics inside for half inputs)."""
    if (weight is not None and weight.dtype != x.dtype) or (bias is not None and bias.dtype != x.dtype):
        return add_layernorm_ref(x, residual, weight, bias, eps)  # mixed dtypes: the upcasting reference
    h = x if residual is None else x + residual
    return F.layer_norm(h, (x.shape[-1],), weight, bias, eps), h


def _add_layernorm_reasons(x, residual, weight, bias, eps=1e-5) -> list[str]:
    if x.dtype not in _FLOATS:
        return [f"x has dtype {x.dtype}; expected a float dtype"]
    if residual is not None and residual.dtype != x.dtype:
        return [f"residual dtype {residual.dtype} differs from x dtype {x.dtype}"]
    return []


# -- attention --------------------------------------------------------------------------------------------------------
def _sdpa(q, k, v, attention_mask=None, *, scale=None, causal=False):
    S_q, S_k = q.shape[2], k.shape[2]
    mask = None
    if attention_mask is not None:
        mask = (attention_mask != 0)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=bool(causal) and S_q == S_k, scale=scale)
    if mask is not None:
        # a query whose keys are all masked returns zeros (the op's contract), never NaN
        out = torch.where(mask.any(-1, keepdim=True), out, 0.0)
    return out


def _sdpa_reasons(q, k, v, attention_mask=None, *, scale=None, causal=False) -> list[str]:
    reasons = []
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return ["needs (B, H, S, D) tensors"]
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _FLOATS:
        reasons.append(f"needs q, k, v of one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if causal and q.shape[2] != k.shape[2]:
        reasons.append("causal with S_q != S_k: SDPA aligns the diagonal top-left, the op bottom-right")
    if causal and attention_mask is not None:
        reasons.append("SDPA takes either is_causal or a mask, not both")
    return reasons


def _sdpa_backend(name: str) -> Callable:
    backend = getattr(torch.nn.attention.SDPBackend, name)

    def fn(q, k, v, attention_mask=None, *, scale=None, causal=False):
        with torch.nn.attention.sdpa_kernel(backend):
            return _sdpa(q, k, v, attention_mask, scale=scale, causal=causal)

    return fn


def _flash_reasons(q, k, v, attention_mask=None, *, scale=None, causal=False) -> list[str]:
    reasons = _sdpa_reasons(q, k, v, attention_mask, scale=scale, causal=causal)
    if attention_mask is not None:
        reasons.append("SDPA's flash backend takes no mask")
    if q.dtype not in _HALF:
        reasons.append(f"flash attention needs float16/bfloat16, got {q.dtype}")
    return reasons


# -- varlen attention -------------------------------------------------------------------------------------------------
def attention_varlen_flash(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale=None, causal=False, **_host_lengths
):
    """PyTorch's bundled FlashAttention-2 varlen forward (``aten._flash_attention_forward``)."""
    out = torch.ops.aten._flash_attention_forward(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        int(max_seqlen_q),
        int(max_seqlen_k),
        0.0,
        bool(causal),
        False,
        scale=scale,
    )[0]
    return out


def _varlen_attn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def attention_varlen_torch(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale=None, causal=False, **_host_lengths
):
    """``torch.nn.attention.varlen.varlen_attn`` (torch >= 2.9), causal aligned bottom-right as flash-attn does."""
    fn = _varlen_attn()
    params = inspect.signature(fn).parameters
    kw = {"scale": scale}
    if "window_size" in params:
        kw["window_size"] = (-1, 0) if causal else (-1, -1)
    elif causal:
        kw["is_causal"] = True
    return fn(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), **kw)


def _varlen_reasons(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale=None, causal=False, **_host_lengths
):
    reasons = []
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        return ["needs packed (T, H, D) tensors"]
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _HALF:
        reasons.append(f"flash attention needs float16/bfloat16 q, k, v, got {q.dtype}, {k.dtype}, {v.dtype}")
    d = q.shape[-1]
    if d % 8 or d > 256:
        reasons.append(f"flash attention needs a head dim that is a multiple of 8 up to 256, got {d}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            reasons.append(f"flash attention needs {name}'s last dim contiguous")
    if not hasattr(torch.ops.aten, "_flash_attention_forward"):
        reasons.append("this torch has no aten._flash_attention_forward")
    return reasons


def _varlen_attn_reasons(*args, **kwargs) -> list[str]:
    if _varlen_attn() is None:
        return ["this torch has no torch.nn.attention.varlen"]
    return _varlen_reasons(*args, **kwargs)


def attention_varlen_sdpa_seq(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale=None, causal=False, seqlens_q=None,
    seqlens_k=None,
):  # fmt: skip
    """Torch SDPA per sequence, the sequences delimited by the host lengths ``seqlens_q`` (no device sync): one
    batched call on ``(B, heads, S, D)`` views when every sequence has the same length, else one call per sequence."""
    T, nh, d = q.shape
    lens = seqlens_q
    B = len(lens)
    S = lens[0] if B else 0
    if B and B * S == T and all(n == S for n in lens):
        qs, ks, vs = (t.reshape(B, S, nh, d).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale, is_causal=causal and S > 1)
        return o.transpose(1, 2).reshape(T, nh, d)
    out = q.new_empty((T, nh, d))
    start = 0
    for n in lens:
        if n:
            sl = slice(start, start + n)
            qs, ks, vs = (t[sl].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale, is_causal=causal and n > 1)
            out[sl] = o[0].transpose(0, 1)
        start += n
    return out


def _sdpa_seq_reasons(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale=None, causal=False, seqlens_q=None,
    seqlens_k=None,
) -> list[str]:  # fmt: skip
    if seqlens_q is None:
        return ["needs the host lengths (seqlens_q)"]
    if seqlens_k is not None and seqlens_k is not seqlens_q:
        return ["needs self-attention over one packing (seqlens_k is seqlens_q)"]
    if q.dim() != 3 or q.shape != k.shape or k.shape != v.shape:
        return ["needs packed (T, H, D) q, k, v of one shape"]
    return []


def attention_sdpa_causal(q, k, v, attention_mask=None, *, scale=None, causal=True):
    """Causal attention (queries aligned to the end of the keys) as torch SDPA with a boolean keep mask: no mask
    for one query without padding, ``is_causal`` for a prefill without padding. A query that would see no key (a pad
    position of a left-padded prefill) sees its own key, so no SDPA backend returns NaN for it."""
    S, K = q.shape[2], k.shape[2]
    past = K - S
    is_causal = attention_mask is None and S > 1 and past == 0
    keep = None
    if attention_mask is not None or (S > 1 and past > 0):
        i = torch.arange(S, device=q.device)[:, None]
        keep = torch.arange(K, device=q.device)[None, :] <= i + past  # (S, K) causal, aligned to the end
        if attention_mask is not None:
            keep = keep[None, None] & (attention_mask != 0)[:, None, None, :]  # (B, 1, S, K)
            own = torch.zeros_like(keep[0, 0])
            own[:, past:] = torch.eye(S, dtype=torch.bool, device=q.device)
            keep = keep | (own & ~keep.any(dim=-1, keepdim=True))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=is_causal, scale=scale)


def _sdpa_causal_reasons(q, k, v, attention_mask=None, *, scale=None, causal=False) -> list[str]:
    if not causal:
        return ["causal attention only"]
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return ["needs (B, H, S, D) tensors"]
    if k.shape[2] < q.shape[2]:
        return ["needs at least as many keys as queries"]
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _FLOATS:
        return [f"needs q, k, v of one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}"]
    return []


# -- int4 -------------------------------------------------------------------------------------------------------------
def int4_matmul_dequant(x, qweight, scales, zeros, group_size=128, bias=None, activation=None) -> torch.Tensor:
    """Dequantize the whole weight to ``x.dtype`` and run cuBLAS (cheap relative to the GEMM at large M)."""
    return int4_matmul_ref(x, qweight, scales, zeros, group_size, bias, activation)


# -- the table --------------------------------------------------------------------------------------------------------
def _sdpa_entries() -> list[Entry]:
    out = [Entry("attention", "sdpa", _sdpa, _sdpa_reasons)]
    names = {"FLASH_ATTENTION": "sdpa-flash", "EFFICIENT_ATTENTION": "sdpa-efficient", "CUDNN_ATTENTION": "sdpa-cudnn"}
    for backend, name in names.items():
        if hasattr(torch.nn.attention.SDPBackend, backend):
            reasons = _flash_reasons if backend == "FLASH_ATTENTION" else _sdpa_reasons
            out.append(Entry("attention", name, _sdpa_backend(backend), reasons, cuda_only=True))
    return out


def reference_entry(op: str) -> Entry:
    """The op's reference: the table's last entry, what runs when nothing else can take a call (never timed: the
    varlen one syncs)."""
    from . import reference

    return Entry(op, "reference", getattr(reference, f"{op}_ref"), _none, kind="reference", rule=True)


def build() -> dict[str, tuple[Entry, ...]]:
    """Every op's entries in order: Triton first (the default when it can take a call), PyTorch's own, the
    reference last."""
    table = {
        "linear_gelu": [
            _triton("linear_gelu"),
            Entry("linear_gelu", "cublas", linear_gelu_cublas, _linear_reasons),
        ],
        "linear_residual": [
            _triton("linear_residual"),
            Entry("linear_residual", "cublas", linear_residual_cublas, _linear_reasons),
            Entry("linear_residual", "cublas-addmm", linear_residual_addmm, _linear_reasons),
        ],
        "attention": [
            _triton("attention"),
            *_sdpa_entries(),
            Entry("attention", "sdpa-causal", attention_sdpa_causal, _sdpa_causal_reasons, rule=True),
        ],
        "attention_varlen": [
            _triton("attention_varlen"),
            Entry("attention_varlen", "flash-varlen", attention_varlen_flash, _varlen_reasons, cuda_only=True),
            Entry("attention_varlen", "varlen_attn", attention_varlen_torch, _varlen_attn_reasons, cuda_only=True),
            Entry("attention_varlen", "sdpa-seq", attention_varlen_sdpa_seq, _sdpa_seq_reasons, rule=True),
        ],
        "add_layernorm": [
            _triton("add_layernorm"),
            Entry("add_layernorm", "torch", add_layernorm_torch, _add_layernorm_reasons),
        ],
        "int4_matmul": [
            _triton("int4_matmul"),
            Entry("int4_matmul", "dequant-cublas", int4_matmul_dequant, _none),
        ],
    }
    return {op: (*entries, reference_entry(op)) for op, entries in table.items()}
