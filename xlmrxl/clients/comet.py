"""Find the XLM-RoBERTa-XL encoder in a COMET metric and serve COMET's layer mix from the packed layer stack.

A COMET model (``comet.models``: RegressionMetric, ReferencelessRegression, UnifiedMetric, XCOMETMetric, ...) keeps its
transformers encoder at ``metric.encoder.model``: that is what ``xlmrxl.accelerate`` patches. COMET's call chain then is
``metric.encoder(ids, mask)`` (``XLMREncoder.forward``, which ``XLMRXLEncoder`` inherits: the model with
``output_hidden_states=True``, returning every layer as ``all_layers``), then ``metric.layerwise_attention(all_layers,
mask)`` and, for XCOMET's word-level head (``word_level_training``), ``all_layers[word_layer]``; a fixed ``layer=<int>``
reads one layer. ``attach`` replaces, on the instances, (1) the encoder wrapper's ``forward``: embeddings, then
``xlmrxl.fast.run`` on the packed tokens with ``PackedLayerMix`` as its layer callback, returning
COMET's dict with ``all_layers`` a ``PackedLayers`` (the mix plus the one or two layers a head reads), and (2) the layer
mix's ``forward``: handed a ``PackedLayers``, it returns the mix computed as the layers ran; handed anything else,
COMET's own code. Whatever the fused path cannot run (training mode, i.e. ``mc_dropout``; autograd recording; a wrapper
whose ``forward`` is not ``XLMREncoder.forward``) runs COMET's own code, with one logged reason. ``detach`` removes
both. comet is an optional extra: it is imported only where a COMET model was given.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..backend import Backend, log_once
from ..fast.routing import PACKED, Call, route
from ..fast.stack import run
from .base import Client, describe, is_xlmrxl_model
from .layer_mix import PackedLayerMix, PackedLayers, mix_unsupported_reason

logger = logging.getLogger("xlmrxl")

__all__ = ["find_encoder", "attach", "detach"]

_PATCH = "_xlmrxl_comet"  # on the encoder wrapper: the _EncoderForward installed as its forward


def find_encoder(metric: nn.Module) -> Client:
    """The ``Client`` of a COMET model whose encoder is XLM-RoBERTa-XL (an unsupported one, ``supported=False``, when
    it wraps another transformers model); TypeError naming what was found when it wraps none."""
    wrapper = getattr(metric, "encoder", None)
    model = getattr(wrapper, "model", None)
    kind = f"COMET {type(metric).__name__}"
    if isinstance(model, nn.Module) and hasattr(model, "config") and not is_xlmrxl_model(model):
        # another transformers encoder (XLM-R base/large, BERT): accelerate() warns and returns the model unchanged
        return Client(kind=f"{kind} ({type(model).__name__})", model=model, supported=False)
    if model is None or not is_xlmrxl_model(model):
        what = (
            f"{type(wrapper).__name__} wrapping {describe(model)}" if wrapper is not None else "no .encoder attribute"
        )
        raise TypeError(
            f"xlmrxl accelerates XLM-RoBERTa-XL / XXL encoders; the {kind} given has {what} (metric.encoder.model). "
            "COMET models built on XLM-RoBERTa-XL (XCOMET-XL/XXL, CometKiwi-XL/XXL) are supported."
        )
    return Client(
        kind=f"{kind} ({type(wrapper).__name__})",
        model=model,
        attach=lambda backend: attach(metric, backend),
        detach=lambda: detach(metric),
    )


def attach(metric: nn.Module, backend: Backend) -> None:
    """Install the packed layer-mix forward on ``metric.encoder`` and ``metric.layerwise_attention`` (idempotent:
    a second call only updates the backend)."""
    wrapper = metric.encoder
    patch = wrapper.__dict__.get(_PATCH)
    if patch is not None:
        patch.backend = backend
        return
    from comet.encoders.xlmr import XLMREncoder  # optional extra: only here, where a COMET model was given

    if type(wrapper).forward is not XLMREncoder.forward:
        log_once(
            f"xlmrxl: {type(wrapper).__name__}.forward is not COMET's XLMREncoder.forward; only its transformers "
            "model is accelerated (COMET's layer mix runs on every padded layer)"
        )
        return
    patch = _EncoderForward(metric, backend)
    wrapper.__dict__[_PATCH] = patch
    wrapper.forward = patch
    mix = getattr(metric, "layerwise_attention", None)
    if mix is not None:
        mix.forward = _MixForward(mix)


def detach(metric: nn.Module) -> None:
    """Undo ``attach``: COMET's own forwards run again."""
    wrapper = getattr(metric, "encoder", None)
    if wrapper is None or wrapper.__dict__.pop(_PATCH, None) is None:
        return
    wrapper.__dict__.pop("forward", None)
    mix = getattr(metric, "layerwise_attention", None)
    if mix is not None and isinstance(mix.__dict__.get("forward"), _MixForward):
        del mix.__dict__["forward"]


def _wanted_layers(metric) -> list[int]:
    """The single layers COMET's heads read from ``all_layers``: XCOMET's word layer, a fixed ``layer=<int>``."""
    hp = getattr(metric, "hparams", {})
    keep = []
    if getattr(metric, "word_level", False) and isinstance(hp.get("word_layer"), int):
        keep.append(hp["word_layer"])
    for name in ("sent_layer", "layer"):
        if isinstance(hp.get(name), int):
            keep.append(hp[name])
    return keep


class _EncoderForward:
    """``metric.encoder.forward`` while accelerated: COMET's ``XLMREncoder.forward`` on the packed layer stack.
    A module-level class (not a closure), so the model still pickles and deep-copies."""

    def __init__(self, metric, backend: Backend):
        self.metric = metric
        self.backend = backend

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> dict:
        metric = self.metric
        wrapper = metric.encoder
        model = wrapper.model
        mix = getattr(metric, "layerwise_attention", None)
        if "forward" not in model.encoder.__dict__:  # the transformers model was deaccelerated on its own
            return type(wrapper).forward(wrapper, input_ids, attention_mask, **kwargs)
        emb = model.embeddings(input_ids=input_ids)  # COMET passes no token types or positions
        # the encoder's one decision, logged once (the accelerated model inside COMET's own code decides the same):
        # training with dropout (mc_dropout), autograd recording, hooks, a non-2D mask
        r = route(model.encoder, Call(hidden_states=emb, attention_mask=attention_mask, causal=False))
        callback = None
        if r.path == PACKED:
            reason = None if mix is None else mix_unsupported_reason(mix)
            if reason is not None:
                log_once(f"xlmrxl: COMET's own encoder code runs: {reason}")
                return type(wrapper).forward(wrapper, input_ids, attention_mask, **kwargs)
            callback = PackedLayerMix(mix, len(model.encoder.layer) + 1, keep=_wanted_layers(metric))
        out = run(
            model.encoder,
            r,
            emb,
            self.backend,
            return_packed=True,
            layer_callback=callback,
            exact=lambda: type(wrapper).forward(wrapper, input_ids, attention_mask, **kwargs),
        )
        if r.path != PACKED:
            return out
        last = out.packing.unpack(out.last_hidden_state)
        return {
            "sentemb": last[:, 0, :],
            "wordemb": last,
            "all_layers": PackedLayers(callback, attention_mask, last.dtype),
            "attention_mask": attention_mask,
        }


class _MixForward:
    """``metric.layerwise_attention.forward`` while accelerated: the packed mix when handed ``PackedLayers``."""

    def __init__(self, module):
        self.module = module

    def __call__(self, tensors, mask: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(tensors, PackedLayers):
            return tensors.mixed(self.module, mask)
        return type(self.module).forward(self.module, tensors, mask)
