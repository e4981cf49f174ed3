"""Fast encoder path: padding-free, fused execution of the XLM-RoBERTa-XL layer stack (kernel or reference ops).

Contract with the model layer (``xlmrxl.modeling``), which calls, at the top of its encoder's forward:

    reason = fast_path.unsupported_reason(encoder, attention_mask=..., head_mask=..., output_attentions=...,
                                          encoder_hidden_states=..., past_key_values=..., use_cache=...,
                                          training=..., causal=..., allow_cache=True)
    if reason is None and not (causal and (past_key_values is not None or use_cache)):
        last_hidden_state, all_hidden_states = fast_path.encoder_forward(
            encoder, hidden_states, attention_mask, backend, output_hidden_states=..., causal=...)
    elif reason is None:  # cached causal decoding; the caller normalises the cache (legacy tuples, use_cache
        # without one) and hands over its self-attention part, and None for an all-ones mask
        last_hidden_state, all_hidden_states = fast_path.decoder_forward(
            encoder, hidden_states, attention_mask, self_cache, backend, output_hidden_states=...)

``encoder`` is any module laid out like transformers' ``XLMRobertaXLEncoder``
(``encoder.layer[i].attention.self.query``,
..., ``encoder.LayerNorm``): ours or transformers' own (4.56.x and 5.x keep these names), which is how
``xlmrxl.accelerate`` reuses this file. ``hidden_states`` is the embeddings output (B, S, H); ``attention_mask`` the
2D (B, S) mask (nonzero = real token) or None. It returns ``last_hidden_state`` (B, S, H) after the final LayerNorm
(**padded positions are zeros**) and, when asked, the tuple of hidden states with transformers' semantics (entry 0 is
the embeddings exactly as given, entries 1..L-1 the residual stream after layers 0..L-2, the last entry the final
LayerNorm output; all (B, S, H), zeros at padded positions except entry 0); otherwise None.
``unsupported_reason`` logs its reason once itself (``xlmrxl.backend.log_once``): callers need not log it.
``encoder_forward`` assumes ``unsupported_reason`` returned None for the same call: that check also refreshes the
structure cache (per-layer plans keyed on the identity of every module and weight it uses), so a module swapped since
the last check (``quantize``, ``prune_heads``) is seen.

What one forward does (``T`` = number of real tokens):

1. **Pack once.** With padding, the real tokens are gathered into a ``(T, H)`` tensor (indices from the mask,
   ``cu_seqlens`` int32 ``(B+1,)``, ``max_seqlen``); the lengths are read on the host once per forward (one sync),
   never per layer. Without padding (mask None or all ones) nothing is gathered: ``(B*S, H)`` is a view.
2. **Per layer**, on ``(T, H)`` tensors only:
   ``h = LN_attn(x)`` -> one QKV GEMM ``(T, 3H)`` against a fused ``(3H, H)`` weight -> ``attention_varlen`` on strided
   q/k/v views of it -> ``x = x + a @ Wo^T + bo`` (``linear_residual``) -> ``h = LN_ffn(x)`` ->
   ``u = gelu(h @ Wi^T + bi)`` (``linear_gelu``) -> ``x = x + u @ Wd^T + bd`` (``linear_residual``).
   Residual adds live in the GEMM epilogues: per projection that is read x + write x' there and read x' + write h
   in the LayerNorm (4 passes over ``T x H``), against 5 for "bias GEMM, then ``add_layernorm``" (write y, read y,
   read x, write x', write h). int4 ``QuantLinear`` projections (``backend.int4_matmul``: bias and GELU in its
   epilogue, no residual) take the other route: their output stays pending and the next ``add_layernorm`` fuses the
   residual add with the following LayerNorm, across the layer boundary too.
   Where the backend picks the PyTorch reference for attention (CPU, ``backend="reference"``), the attention runs
   as torch SDPA per sequence (the same maths; ``attention_varlen_ref`` is an oracle with masks and fp32 copies).
3. **Final LayerNorm**, then scatter back to ``(B, S, H)`` (zeros at padding) only at the output, or, with
   ``encoder_forward(..., return_packed=True)``, return the ``(T, H)`` outputs with their ``Packing`` (indices,
   ``cu_seqlens``, ``unpack()``) for callers that want padding-free outputs.

The fused QKV weight: the first fast forward of a layer concatenates q/k/v weights (and biases) into one contiguous
``(3H, H)`` buffer and re-points the three ``nn.Linear`` parameters at views of it (``param.data = view``), so no
memory is doubled, the Parameter objects stay the same, and ``state_dict`` keys and values are unchanged. A later
``model.to(...)``/``half()`` replaces the storages; the next forward sees the views broken (data_ptr check) and fuses
again. int4 q/k/v layers are concatenated along N once, and their buffers become views of the concatenation (no copy).

Inference only: with autograd recording (grad mode on and parameters or inputs requiring grad) the call is
unsupported (the kernels have no backward and the fused buffer is not a graph node), as are training mode with
dropout, ``output_attentions``, relative positions, ``head_mask``, cross-attention, a KV cache (unless the caller
opts in, below), non-exact-GELU activations and forward hooks on encoder submodules. Decoder (causal)
self-attention without a cache is supported; with a cache, ``decoder_forward`` runs the same fused layer unpacked
(callers opt in with ``unsupported_reason(..., allow_cache=True)``; our encoder does for ``use_cache`` /
``past_key_values`` decoding with any cache, so ``xlmrxl.generation`` steps run fused, and ``xlmrxl.accelerate``
does for transformers' causal LMs).
``chunk_size_feed_forward`` is ignored (the same maths).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backend import Backend, log_once

logger = logging.getLogger("xlmrxl")

__all__ = [
    "unsupported_reason",
    "encoder_forward",
    "decoder_forward",
    "pack",
    "Packing",
    "PackedEncoderOutput",
    "fuse_qkv",
]

# transformers 5.x installs these on layers once hidden states are first requested; they are inert unless a
# collection is active, which the caller (xlmrxl.accelerate) checks itself.
_IGNORED_HOOK_NAMES = ("output_capturing_hook",)


# ---------------------------------------------------------------------------------------------------------------
# eligibility
# ---------------------------------------------------------------------------------------------------------------
def unsupported_reason(
    encoder,
    *,
    attention_mask=None,
    head_mask=None,
    output_attentions=False,
    encoder_hidden_states=None,
    past_key_values=None,
    use_cache=False,
    training=None,
    causal=False,
    hidden_states=None,
    allow_cache=False,
    **_ignored,
) -> str | None:
    """None when this call can take the fast path, else a one-line reason (logged once here, at INFO).

    ``allow_cache=True`` (a caller that runs ``decoder_forward`` for cached causal calls) accepts
    ``past_key_values`` / ``use_cache`` when ``causal``."""
    if allow_cache and causal:
        past_key_values, use_cache = None, False
    reason = _reason(
        encoder,
        attention_mask=attention_mask,
        head_mask=head_mask,
        output_attentions=output_attentions,
        encoder_hidden_states=encoder_hidden_states,
        past_key_values=past_key_values,
        use_cache=use_cache,
        training=training,
        hidden_states=hidden_states,
    )
    if reason is not None:
        # a forgotten no_grad() silently costs the whole speed-up: say so where users see it
        level = logging.WARNING if reason.startswith("autograd is recording") else logging.INFO
        log_once(f"xlmrxl: the encoder runs the exact (unfused) path: {reason}", level)
    return reason


def _reason(
    encoder,
    *,
    attention_mask,
    head_mask,
    output_attentions,
    encoder_hidden_states,
    past_key_values,
    use_cache,
    training,
    hidden_states,
) -> str | None:
    if output_attentions:
        return "output_attentions=True needs the attention probabilities, which the fused attention never forms"
    if head_mask is not None and not (isinstance(head_mask, (list, tuple)) and all(h is None for h in head_mask)):
        return "head_mask is set (the fused attention has no per-head probability scaling)"
    if encoder_hidden_states is not None:
        return "cross-attention (encoder_hidden_states) is not fused"
    if past_key_values is not None or use_cache:
        return "a KV cache (past_key_values / use_cache) is in use: decoding runs the exact path"
    if attention_mask is not None and attention_mask.dim() != 2:
        return f"attention_mask has {attention_mask.dim()} dims; the fast path takes the 2D (batch, seq) padding mask"
    layers = getattr(encoder, "layer", None)
    if layers is None or len(layers) == 0:
        return f"{type(encoder).__name__} has no .layer list laid out like XLMRobertaXLEncoder"
    training = encoder.training if training is None else training
    if training:
        for m in encoder.modules():
            if isinstance(m, nn.Dropout) and m.p > 0:
                return f"training mode with dropout p={m.p} (call model.eval() for inference)"
        p = getattr(layers[0].attention.self, "dropout_prob", 0.0)
        if p:
            return f"training mode with attention dropout p={p} (call model.eval() for inference)"
    if torch.is_grad_enabled():
        if hidden_states is not None and hidden_states.requires_grad:
            return (
                "autograd is recording (the inputs require grad) and the fast path is inference-only; "
                "run under torch.inference_mode() / torch.no_grad()"
            )
        if any(p.requires_grad for p in encoder.parameters()):
            return (
                "autograd is recording (grad mode on and parameters require grad) and the fast path is "
                "inference-only; run under torch.inference_mode() / torch.no_grad(), or call "
                "model.requires_grad_(False)"
            )
    g = nn.modules.module
    if getattr(g, "_global_forward_hooks", None) or getattr(g, "_global_forward_pre_hooks", None):
        return "global module forward hooks are registered; the fused path would skip them"
    reason, modules = _structure(encoder)
    if reason is not None:
        return reason
    for m in modules:
        if m is not encoder and (m._forward_hooks or m._forward_pre_hooks):
            hooks = list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values())
            if any(getattr(h, "__name__", "") not in _IGNORED_HOOK_NAMES for h in hooks):
                return (
                    f"{type(m).__name__} has forward hooks that the fused path would skip; remove them "
                    "to take the fast path"
                )
    return None


def _fingerprint(encoder) -> tuple | None:
    """Identity of every module and weight the structural checks look at (dict reads only: this runs per call)."""
    try:
        fp = [id(encoder._modules["LayerNorm"])]
        add = fp.append
        for layer in encoder._modules["layer"]._modules.values():
            lm = layer._modules
            am = lm["attention"]._modules
            sm = am["self"]._modules
            inter = lm["intermediate"]
            for m in (
                sm["query"],
                sm["key"],
                sm["value"],
                am["output"]._modules["dense"],
                inter._modules["dense"],
                lm["output"]._modules["dense"],
            ):
                add(id(m))
                add(id(m._parameters.get("weight", None) if "weight" in m._parameters else m._buffers.get("qweight")))
            add(id(am["self_attn_layer_norm"]))
            add(id(lm["LayerNorm"]))
            add(id(inter._modules.get("intermediate_act_fn") or inter.__dict__.get("intermediate_act_fn")))
        return tuple(fp)
    except (KeyError, AttributeError, TypeError):
        return None


def _structure(encoder):
    """(reason or None, flat module list), cached on the encoder until a checked module or weight is replaced."""
    key = _fingerprint(encoder)
    cached = encoder.__dict__.get("_xlmrxl_structure")
    if key is not None and cached is not None and cached[0] == key:
        return cached[1], cached[2]
    reason = None
    for i, layer in enumerate(encoder.layer):
        r = _layer_reason(layer)
        if r is not None:
            reason = f"layer {i}: {r}"
            break
    if reason is None and not isinstance(getattr(encoder, "LayerNorm", None), nn.LayerNorm):
        reason = "the encoder has no final LayerNorm (encoder.LayerNorm)"
    modules = list(encoder.modules())
    if key is not None and reason is None:  # only a pass is cached (a meta weight can be filled in place later)
        encoder.__dict__["_xlmrxl_structure"] = (key, reason, modules)
    return reason, modules


def _layer_reason(layer) -> str | None:
    try:
        attn = layer.attention
        sa = attn.self
        mods = dict(
            q=sa.query, k=sa.key, v=sa.value, o=attn.output.dense, up=layer.intermediate.dense, down=layer.output.dense
        )
        lns = dict(attn_ln=attn.self_attn_layer_norm, ffn_ln=layer.LayerNorm)
    except AttributeError as exc:
        return f"not laid out like XLMRobertaXLLayer ({exc})"
    pe = getattr(sa, "position_embedding_type", "absolute") or "absolute"
    if pe != "absolute":
        return f"position_embedding_type={pe!r} (relative positions are not fused)"
    for name, ln in lns.items():
        if not isinstance(ln, nn.LayerNorm) or ln.weight is None or len(ln.normalized_shape) != 1:
            return f"{name} is not an affine 1-D nn.LayerNorm"
    for name, m in mods.items():
        if not (isinstance(m, nn.Linear) or _is_int4(m)):
            return f"{name} is a {type(m).__name__}, neither nn.Linear nor an int4 QuantLinear"
        w = _weight_of(m)
        if w.is_meta:
            return f"{name} weights are on the meta device (not loaded yet)"
    if not _is_exact_gelu(layer.intermediate):
        return "the FFN activation is not exact (erf) GELU"
    heads = _num_heads(sa)
    if heads is None or _out_features(mods["q"]) % heads:
        return "cannot tell the number of attention heads"
    if not (_out_features(mods["q"]) == _out_features(mods["k"]) == _out_features(mods["v"])):
        return "q, k and v have different widths"
    return None


def _is_int4(m) -> bool:
    return all(hasattr(m, a) for a in ("qweight", "scales", "zeros", "group_size"))


def _weight_of(m) -> torch.Tensor:
    return m.qweight if _is_int4(m) else m.weight


def _out_features(m) -> int:
    return int(getattr(m, "out_features", None) or _weight_of(m).shape[0])


def _num_heads(sa) -> int | None:
    n = getattr(sa, "num_attention_heads", None)
    if n is None:
        cfg = getattr(sa, "config", None)
        n = getattr(cfg, "num_attention_heads", None)
    return int(n) if n else None


def _is_exact_gelu(intermediate) -> bool:
    act = getattr(intermediate, "intermediate_act_fn", None)
    if act is None:
        act = getattr(intermediate, "act_fn", None)
    if act is None:
        return False
    if act is F.gelu:
        return True
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    name = type(act).__name__
    if name == "GELUActivation":  # transformers: self.act is F.gelu, or its own exact erf formula
        inner = getattr(act, "act", None)
        return inner is F.gelu or getattr(inner, "__name__", "") == "_gelu_python"
    return bool(getattr(act, "xlmrxl_exact_gelu", False))


# ---------------------------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Packing:
    """Where the packed rows come from. ``indices`` (T,) int64 into the flattened (B*S) positions, or None when
    nothing was dropped (no padding); ``cu_seqlens`` int32 (B+1,); ``max_seqlen`` the longest row."""

    batch: int
    seqlen: int
    indices: torch.Tensor | None
    cu_seqlens: torch.Tensor
    max_seqlen: int
    lengths: tuple[int, ...] = ()  # per-row lengths on the host (read once, in pack)

    @property
    def num_tokens(self) -> int:
        return self.batch * self.seqlen if self.indices is None else int(self.indices.shape[0])

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, ...) -> (T, ...)."""
        flat = x.reshape(self.batch * self.seqlen, *x.shape[2:])
        return flat if self.indices is None else flat.index_select(0, self.indices)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (B, S, ...), zeros at padded positions."""
        if self.indices is None:
            return x.reshape(self.batch, self.seqlen, *x.shape[1:])
        out = x.new_zeros((self.batch * self.seqlen, *x.shape[1:]))
        out.index_copy_(0, self.indices, x)
        return out.reshape(self.batch, self.seqlen, *x.shape[1:])


def pack(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, Packing]:
    """Gather the real tokens of ``hidden_states`` (B, S, H) per the 2D ``attention_mask`` (nonzero = real).

    One host sync (the per-row lengths) when a mask is given; none without one."""
    B, S = hidden_states.shape[:2]
    dev = hidden_states.device
    if attention_mask is not None and tuple(attention_mask.shape) != (B, S):
        raise ValueError(
            f"attention_mask must have shape (batch, seq) = ({B}, {S}) to match the hidden states, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask is None:
        cu = torch.arange(0, (B + 1) * S, S, dtype=torch.int32, device=dev)
        p = Packing(B, S, None, cu, S, (S,) * B)
        return p.pack(hidden_states), p
    keep = attention_mask.to(device=dev) != 0
    lengths = keep.sum(dim=1, dtype=torch.int32)
    lens = lengths.tolist()  # the one host sync of the forward
    total = sum(lens)
    cu = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    cu[1:] = torch.cumsum(lengths, dim=0, dtype=torch.int32)
    if total == B * S:
        p = Packing(B, S, None, cu, S, tuple(lens))
    else:
        # Stable sort puts real positions first, in order: their indices without a second sync (nonzero would sync).
        order = torch.argsort((~keep).reshape(-1).to(torch.int8), stable=True)
        p = Packing(B, S, order[:total], cu, max(lens) if lens else 0, tuple(lens))
    return p.pack(hidden_states), p


@dataclass
class PackedEncoderOutput:
    """``encoder_forward(..., return_packed=True)``: outputs on the real tokens only (T, H) and how to unpack them."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    packing: Packing


# ---------------------------------------------------------------------------------------------------------------
# fused QKV
# ---------------------------------------------------------------------------------------------------------------
def _views_intact(parts, fused: torch.Tensor) -> bool:
    """Are ``parts`` still the consecutive row blocks of ``fused`` (pointer arithmetic only: runs per layer)?"""
    ptr, row = fused.data_ptr(), fused[0].numel() * fused.element_size() if fused.dim() > 1 else fused.element_size()
    off = 0
    for p in parts:
        if p.data_ptr() != ptr + off * row or p.dtype != fused.dtype or not p.is_contiguous():
            return False
        off += p.shape[0]
    return off == fused.shape[0]


def fuse_qkv(self_attn) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused ``(3H, H)`` weight and ``(3H,)`` bias of ``self_attn.{query,key,value}`` (nn.Linear), making the
    three parameters views of it on first use (or after ``.to()`` broke the views). Memory is not doubled."""
    mods = self_attn._modules  # dict reads, not nn.Module.__getattr__: this runs per layer and call
    ws = [mods[n]._parameters["weight"] for n in ("query", "key", "value")]
    bs = [mods[n]._parameters.get("bias") for n in ("query", "key", "value")]
    # the common case, per layer and call: the same storages as last time (the cache holds W and b alive, so a
    # new storage can never reuse their addresses); a data pointer comparison is enough
    key = tuple(t.data_ptr() if t is not None else 0 for t in ws + bs)
    cached = self_attn.__dict__.get("_xlmrxl_qkv")
    if cached is not None:
        W, b, seen = cached
        if seen == key:
            return W, b
        if _views_intact(ws, W) and (b is None or all(x is None for x in bs) or _views_intact(bs, b)):
            self_attn._xlmrxl_qkv = (W, b, key)
            return W, b
    # Never create the buffer as an inference tensor: the parameters become views of it and must stay usable
    # outside torch.inference_mode() (autograd, optimizers).
    with torch.no_grad(), torch.inference_mode(False):
        W = torch.cat([w.detach() for w in ws], dim=0)
        for i, w in enumerate(ws):
            off = sum(x.shape[0] for x in ws[:i])
            w.data = W[off : off + w.shape[0]]
        if all(x is None for x in bs):
            b = None
        else:
            b = torch.cat([x.detach() if x is not None else W.new_zeros(w.shape[0]) for x, w in zip(bs, ws)])
            for i, x in enumerate(bs):
                if x is not None:
                    off = sum(w.shape[0] for w in ws[:i])
                    x.data = b[off : off + x.shape[0]]
    self_attn._xlmrxl_qkv = (W, b, tuple(t.data_ptr() if t is not None else 0 for t in ws + bs))
    logger.debug("xlmrxl: fused q/k/v of %s into one (%d, %d) buffer", type(self_attn).__name__, *W.shape)
    return W, b


def _fused_qkv_module(sa):
    """What to run the QKV GEMM with: ("dense", W, b) or ("int4", QuantLinear) or ("split", None)."""
    mods = (sa.query, sa.key, sa.value)
    if all(isinstance(m, nn.Linear) for m in mods):
        W, b = fuse_qkv(sa)
        return ("dense", W, b)
    if all(_is_int4(m) for m in mods) and len({m.group_size for m in mods}) == 1:
        cached = getattr(sa, "_xlmrxl_qkv_int4", None)
        if cached is None or not all(
            a[0] is m.qweight and a[1] is m.scales and a[2] is m.zeros and a[3] is m.bias
            for a, m in zip(cached[1], mods)
        ):
            from .quantization import QuantLinear

            # the three layers' buffers become views of the concatenated ones: no second copy of the weights
            with torch.no_grad(), torch.inference_mode(False):
                cat = QuantLinear.concat(mods, share_storage=True)
            cached = (cat, tuple((m.qweight, m.scales, m.zeros, m.bias) for m in mods))
            sa._xlmrxl_qkv_int4 = cached
        return ("int4", cached[0])
    return ("split", None)


# ---------------------------------------------------------------------------------------------------------------
# the forward
# ---------------------------------------------------------------------------------------------------------------
class _Ops:
    """The op functions of one forward, resolved through the backend once each (not once per layer and call)."""

    def __init__(self, be: Backend, device: torch.device):
        self.be, self.device = be, device

    def __getattr__(self, name):
        fn = self.be.op(name, self.device)
        setattr(self, name, fn)
        return fn


class _Stream:
    """The residual stream of one forward; holds a pending (y, residual) pair when an int4 projection left its
    residual add to the next LayerNorm."""

    def __init__(self, x: torch.Tensor, ops: _Ops):
        self.x = x
        self.pending: torch.Tensor | None = None
        self.ops = ops

    def norm(self, ln: nn.LayerNorm) -> torch.Tensor:
        if self.pending is not None:
            h, self.x = self.ops.add_layernorm(self.pending, self.x, ln.weight, ln.bias, ln.eps)
            self.pending = None
        else:
            h, _ = self.ops.add_layernorm(self.x, None, ln.weight, ln.bias, ln.eps)
        return h

    def add_projection(self, inp: torch.Tensor, lin, int4: bool) -> None:
        """x <- x + lin(inp)."""
        if self.pending is not None:
            self.materialize()
        if int4:
            self.pending = _int4(self.ops, inp, lin, lin.bias)
        else:
            self.x = self.ops.linear_residual(inp, lin.weight, lin.bias, self.x)

    def materialize(self) -> torch.Tensor:
        if self.pending is not None:
            self.x = self.pending + self.x
            self.pending = None
        return self.x


def _int4(ops: _Ops, x, m, bias, activation=None):
    return ops.int4_matmul(x, m.qweight, m.scales, m.zeros, group_size=m.group_size, bias=bias, activation=activation)


def _attention(ops: _Ops, q, k, v, packing: Packing, scale: float, causal: bool) -> torch.Tensor:
    """Varlen attention on the packed (T, heads, D) views. Where the backend picks the PyTorch reference (CPU, or
    backend='reference'), the same maths runs as torch SDPA per sequence instead: ``attention_varlen_ref`` is an
    oracle (masks, fp32 copies, a host sync per call) and would cost more than all the GEMMs on a CPU."""
    from xlmrxl_kernels.reference import attention_varlen_ref

    fn = ops.attention_varlen
    if fn is not attention_varlen_ref or not packing.lengths:
        return fn(
            q,
            k,
            v,
            packing.cu_seqlens,
            packing.cu_seqlens,
            packing.max_seqlen,
            packing.max_seqlen,
            scale=scale,
            causal=causal,
        )
    T, nh, d = q.shape
    if packing.indices is None:  # equal lengths: one batched call on (B, heads, S, D) views
        B, S = packing.batch, packing.seqlen
        qs, ks, vs = (t.reshape(B, S, nh, d).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale, is_causal=causal and S > 1)
        return o.transpose(1, 2).reshape(T, nh, d)
    out = q.new_empty((T, nh, d))
    start = 0
    for n in packing.lengths:
        if n:
            sl = slice(start, start + n)
            qs, ks, vs = (t[sl].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale, is_causal=causal and n > 1)
            out[sl] = o[0].transpose(0, 1)
        start += n
    return out


def _is_causal(encoder) -> bool:
    cfg = getattr(encoder, "config", None)
    if cfg is not None and getattr(cfg, "is_decoder", False):
        return True
    layer0 = encoder.layer[0]
    return bool(getattr(layer0, "is_decoder", False))


class _LayerPlan:
    """The modules one layer runs with, looked up once per structure (not per forward)."""

    __slots__ = ("sa", "ln_attn", "ln_ffn", "o", "up", "down", "heads", "scale", "o_int4", "up_int4", "down_int4")

    def __init__(self, layer):
        attn = layer.attention
        self.sa = attn.self
        self.ln_attn, self.ln_ffn = attn.self_attn_layer_norm, layer.LayerNorm
        self.o, self.up, self.down = attn.output.dense, layer.intermediate.dense, layer.output.dense
        self.o_int4, self.up_int4, self.down_int4 = _is_int4(self.o), _is_int4(self.up), _is_int4(self.down)
        self.heads = _num_heads(self.sa)
        self.scale = getattr(self.sa, "scaling", None)


def _plans(encoder):
    """Per-layer plans, cached with the structure check (refreshed whenever ``unsupported_reason`` sees a module or
    weight replaced)."""
    cached = encoder.__dict__.get("_xlmrxl_plans")
    st = encoder.__dict__.get("_xlmrxl_structure")
    if cached is not None and st is not None and cached[0] is st:
        return cached[1]
    plans = [_LayerPlan(layer) for layer in encoder.layer]
    if st is not None:
        encoder.__dict__["_xlmrxl_plans"] = (st, plans)
    return plans


def _layer(plan: _LayerPlan, st: _Stream, attend, layer_idx: int) -> None:
    ops = st.ops
    T = st.x.shape[0]
    h = st.norm(plan.ln_attn)
    kind, *what = _fused_qkv_module(plan.sa)
    if kind == "dense":
        W, b = what
        qkv = F.linear(h, W, b)
    elif kind == "int4":
        cat = what[0]
        qkv = _int4(ops, h, cat, cat.bias)
    else:
        sa = plan.sa
        outs = []
        for m in (sa.query, sa.key, sa.value):
            outs.append(_int4(ops, h, m, m.bias) if _is_int4(m) else F.linear(h, m.weight, m.bias))
        qkv = torch.cat(outs, dim=-1)
    width = qkv.shape[-1] // 3
    d = width // plan.heads
    qkv = qkv.view(T, 3, plan.heads, d)
    a = attend(qkv[:, 0], qkv[:, 1], qkv[:, 2], plan.scale or d**-0.5, layer_idx)
    st.add_projection(a.reshape(T, width), plan.o, plan.o_int4)
    h = st.norm(plan.ln_ffn)
    up = plan.up
    u = _int4(ops, h, up, up.bias, "gelu") if plan.up_int4 else ops.linear_gelu(h, up.weight, up.bias)
    st.add_projection(u, plan.down, plan.down_int4)


def encoder_forward(
    encoder,
    hidden_states,
    attention_mask,
    backend,
    *,
    output_hidden_states=False,
    return_packed=False,
    causal=None,
    layer_callback=None,
):
    """Run ``encoder``'s layer stack and final LayerNorm on the packed real tokens (see the module docstring).

    ``backend``: an ``xlmrxl.backend.Backend`` or a backend name (None: the default). ``causal``: decoder
    self-attention; None reads ``encoder.config.is_decoder`` (or ``encoder.layer[0].is_decoder``).
    ``layer_callback(i, x, packing)``, when given, sees hidden state ``i`` of transformers' numbering as the layers
    run (0: the embeddings, i < L: the residual stream after layer i - 1, L: the final LayerNorm output) on the
    packed ``(T, H)`` tokens, without it being kept (COMET's layer mix accumulates there; it must not modify x).
    Returns ``(last_hidden_state, all_hidden_states_or_None)`` in (B, S, H), or with ``return_packed=True`` a
    ``PackedEncoderOutput`` with (T, H) tensors and the ``Packing`` to unpack them."""
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (batch, seq, hidden), got shape {tuple(hidden_states.shape)}")
    be = backend if isinstance(backend, Backend) else Backend(backend)
    causal = _is_causal(encoder) if causal is None else bool(causal)
    x, packing = pack(hidden_states, attention_mask)
    layers = encoder.layer
    if packing.num_tokens == 0:  # every row fully padded: nothing to compute
        zeros = x.new_zeros((0, hidden_states.shape[-1]))
        collected = [zeros] * len(layers) + [zeros] if output_hidden_states else None
        for i in range(len(layers) + 1) if layer_callback is not None else ():
            layer_callback(i, zeros, packing)
        return _finish(hidden_states, zeros, collected, packing, return_packed)
    ops = _Ops(be, x.device)
    st = _Stream(x, ops)

    def attend(q, k, v, scale, layer_idx):
        return _attention(ops, q, k, v, packing, scale, causal)

    collected = [x] if output_hidden_states else None
    if layer_callback is not None:
        layer_callback(0, x, packing)
    for i, plan in enumerate(_plans(encoder)):
        _layer(plan, st, attend, i)
        if output_hidden_states and i < len(layers) - 1:
            collected.append(st.materialize())
        if layer_callback is not None and i < len(layers) - 1:
            layer_callback(i + 1, st.materialize(), packing)
    out = st.norm(encoder.LayerNorm)
    if output_hidden_states:
        collected.append(out)
    if layer_callback is not None:
        layer_callback(len(layers), out, packing)
    return _finish(hidden_states, out, collected, packing, return_packed)


def decoder_forward(
    encoder, hidden_states, attention_mask, cache, backend, *, output_hidden_states=False, cache_position=None
):
    """Causal self-attention with a KV cache (incremental decoding, or a prefill that fills the cache).

    ``hidden_states`` (B, S, H) are the new tokens' embeddings; ``attention_mask`` the 2D (B, past + S) keep mask
    (left padding: zeros over the pads of the cached prefix and of the new tokens) or None (every key is real; pass
    None for an all-ones mask, so no mask is read per layer); ``cache`` anything with
    ``update(key_states, value_states, layer_idx[, cache_kwargs]) -> (keys, values)`` in (B, heads, K, D) and
    ``get_seq_length()`` (xlmrxl's ``DynamicCache`` / ``StaticCache``, transformers' ``DynamicCache``; pass
    ``.self_attention_cache`` of an encoder-decoder cache). ``cache_position``, when given, is handed to ``update``
    as ``cache_kwargs={"cache_position": ...}`` (as the exact path does).

    Nothing is packed (the cache is laid out per row). Per layer, on the ``B * S`` new rows only: one fused-QKV GEMM,
    ``cache.update`` with this step's K/V (``StaticCache``: the compiled ``cache_update`` op writes strided views of
    the QKV output in place; other caches get compact copies, so they never pin the QKV buffer),
    ``backend.attention(q, K, V, mask, causal=True)`` with the S new queries against the cache's filled prefix
    (queries aligned to the end of the keys; the kernel's decode path serves S <= 4), output projection + residual,
    GELU FFN + residual. The cached length is read once per call (a host int for xlmrxl's caches): no host sync per
    layer. Query rows that see no real key (left-padding positions of a prefill) come out of the kernel as zeros (of
    the reference route: attending to their own key); only real positions are meaningful, as on the exact path.
    Returns ``(last_hidden_state, all_hidden_states_or_None)``, both (B, S, H) per entry."""
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (batch, seq, hidden), got shape {tuple(hidden_states.shape)}")
    be = backend if isinstance(backend, Backend) else Backend(backend)
    B, S, H = hidden_states.shape
    past = int(cache.get_seq_length())
    if attention_mask is not None and tuple(attention_mask.shape) != (B, past + S):
        raise ValueError(
            f"attention_mask must be (batch, past + seq) = ({B}, {past + S}) with {past} cached "
            f"positions, got {tuple(attention_mask.shape)}"
        )
    x = hidden_states.reshape(B * S, H)
    ops = _Ops(be, x.device)
    st = _Stream(x, ops)
    compact = not _copies_states(cache, past)
    extra = () if cache_position is None else ({"cache_position": cache_position},)
    sdpa = _SdpaCausal(attention_mask, B, S, past, x.device) if _reference_attention(ops) else None

    def attend(q, k, v, scale, layer_idx):
        T, nh, d = q.shape
        q4, k4, v4 = (t.reshape(B, S, nh, d).transpose(1, 2) for t in (q, k, v))
        if compact:  # the cache keeps what it is given: hand it compact K/V, not views pinning the QKV buffer
            k4, v4 = k4.contiguous(), v4.contiguous()
        keys, values = cache.update(k4, v4, layer_idx, *extra)
        if sdpa is not None:
            o = sdpa(q4, keys, values, scale)
        else:
            o = ops.attention(q4, keys, values, attention_mask, scale=scale, causal=True)
        return o.transpose(1, 2).reshape(T, nh, d)

    collected = [hidden_states] if output_hidden_states else None
    plans = _plans(encoder)
    for i, plan in enumerate(plans):
        _layer(plan, st, attend, i)
        if output_hidden_states and i < len(plans) - 1:
            collected.append(st.materialize().reshape(B, S, H))
    last = st.norm(encoder.LayerNorm).reshape(B, S, H)
    if output_hidden_states:
        collected.append(last)
        return last, tuple(collected)
    return last, None


def _reference_attention(ops: _Ops) -> bool:
    from xlmrxl_kernels.reference import attention_ref

    return ops.attention is attention_ref


class _SdpaCausal:
    """Where the backend picks the PyTorch reference for ``attention`` (CPU, ``backend="reference"``), the cached
    causal attention runs as torch SDPA with a boolean keep mask built once per forward (not per layer):
    ``attention_ref`` is an oracle (fp32 copies of the whole cache, explicit masks) and SDPA is the same maths, as the
    exact path computes it. No mask at all for a one-token step without padding; ``is_causal`` for a prefill without
    padding. A query row that would see no key (a pad position of a left-padded prefill) is let see its own key, so
    no SDPA backend can return NaN for it; no real position ever reads a pad position's output."""

    def __init__(self, mask2d, B: int, S: int, past: int, device):
        self.is_causal = mask2d is None and S > 1 and past == 0
        keep = None
        if mask2d is not None or (S > 1 and past > 0):
            K = past + S
            i = torch.arange(S, device=device)[:, None]
            keep = torch.arange(K, device=device)[None, :] <= i + past  # (S, K) causal, aligned to the end
            if mask2d is not None:
                keep = keep[None, None] & (mask2d != 0)[:, None, None, :]  # (B, 1, S, K)
                own = torch.zeros_like(keep[0, 0])
                own[:, past:] = torch.eye(S, dtype=torch.bool, device=device)
                keep = keep | (own & ~keep.any(dim=-1, keepdim=True))
        self.keep = keep

    def __call__(self, q, k, v, scale):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep, is_causal=self.is_causal, scale=scale)


def _copies_states(cache, past: int) -> bool:
    """Does ``cache.update`` copy the states it is given (so strided views of the QKV output may be handed over)?
    xlmrxl's ``StaticCache`` always (``cache_update`` writes its own buffers); xlmrxl's ``DynamicCache`` once it
    holds tokens (``torch.cat``); anything else is not assumed to."""
    from .cache import DynamicCache
    from .static_cache import StaticCache

    if type(cache) is StaticCache:
        return True
    return type(cache) is DynamicCache and past > 0


def _finish(hidden_states, out, collected, packing: Packing, return_packed: bool):
    if return_packed:
        return PackedEncoderOutput(out, tuple(collected) if collected is not None else None, packing)
    last = packing.unpack(out)
    if collected is None:
        return last, None
    # entry 0 is the embeddings exactly as given (padded positions included), as transformers returns it
    all_hs = (hidden_states,) + tuple(packing.unpack(t) for t in collected[1:-1]) + (last,)
    return last, all_hs
