"""The base class of every model: config handling, weight init and tying, backend selection, loading and saving."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .. import sizing
from ..backend import Backend
from ..checkpoint import load_pretrained, save_pretrained
from ..config import XLMRobertaXLConfig
from ..outputs import BaseModelOutputWithPoolingAndCrossAttentions
from ..record import LastRoute, last_route
from .encoder import XLMRobertaXLEncoder
from .layers import XLMRobertaXLLMHead

_SKIP_INIT = [False]


@contextlib.contextmanager
def nested_model() -> Iterator[None]:
    """Build a sub-model (``self.roberta``) without initialising its weights; the outer ``post_init`` does it once."""
    prev = _SKIP_INIT[0]
    _SKIP_INIT[0] = True
    try:
        yield
    finally:
        _SKIP_INIT[0] = prev


class XLMRobertaXLPreTrainedModel(nn.Module):
    """Common base: config handling, weight init and tying, backend selection, loading and saving."""

    config_class = XLMRobertaXLConfig
    base_model_prefix = "roberta"
    main_input_name = "input_ids"
    _no_split_modules = ["XLMRobertaXLEmbeddings", "XLMRobertaXLLayer"]
    _tied_weights_keys: dict[str, str] | None = None

    def __init__(self, config: XLMRobertaXLConfig | dict) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = XLMRobertaXLConfig.from_dict(config)
        elif not isinstance(config, XLMRobertaXLConfig):
            if hasattr(config, "to_dict"):  # e.g. a transformers XLMRobertaXLConfig
                config = XLMRobertaXLConfig.from_dict(config.to_dict())
            else:
                raise TypeError(f"config must be an XLMRobertaXLConfig (or its dict), got {type(config).__name__}")
        if not _SKIP_INIT[0]:  # the outermost model: absurd sizes are refused before any module is built
            sizing.check_fits(config, torch.get_default_device(), torch.get_default_dtype(), what=type(self).__name__)
        self.config = config
        self.backend = Backend()

    # -- init / tying -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init: N(0, initializer_range) for Linear/Embedding, zero biases and padding rows,
        LayerNorm 1/0, LM-head bias 0."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.zero_()
            module.weight.fill_(1.0)
        elif isinstance(module, XLMRobertaXLLMHead):
            module.bias.zero_()

    def post_init(self) -> None:
        """Initialise weights (unless this is a sub-model being built by a head), tie them, share the backend."""
        if not _SKIP_INIT[0]:
            self.apply(self._init_weights)
        self.tie_weights()
        self.set_backend(self.backend)

    init_weights = post_init

    def tied_weights_map(self) -> dict[str, str]:
        """The aliases in effect for this model: ``{alias key: source key}`` (the decoder weight only when
        ``config.tie_word_embeddings``; the decoder bias always, as in transformers 4.56.2)."""
        keys = dict(self._tied_weights_keys or {})
        if not self.config.tie_word_embeddings:
            keys.pop("lm_head.decoder.weight", None)
        return keys

    def tie_weights(self) -> None:
        out = self.get_output_embeddings()
        if out is not None and self.config.tie_word_embeddings:
            out.weight = self.get_input_embeddings().weight
        for module in self.modules():
            if isinstance(module, XLMRobertaXLLMHead):
                module._tie_weights()

    def get_input_embeddings(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self).get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        getattr(self, self.base_model_prefix, self).set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return None

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        raise AttributeError(f"{type(self).__name__} has no output embeddings")

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def last_route(self) -> LastRoute | None:
        """The route of this model's last forward (``xlmrxl.record.LastRoute``: ``path``, ``reasons``, ``graph``,
        ``why``); None before the first."""
        encoder = getattr(self.base_model, "encoder", None)
        return last_route(encoder) if encoder is not None else None

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        first = None
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
            first = first or p.dtype
        return first or torch.get_default_dtype()

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Unique parameters (tied ones counted once); ``exclude_embeddings`` drops the nn.Embedding tables."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel() for p in self.parameters() if id(p) not in skip and (p.requires_grad or not only_trainable)
        )

    # -- backend ------------------------------------------------------------------------------------------------
    def set_backend(self, name: str | Backend | None = None) -> XLMRobertaXLPreTrainedModel:
        """Use ``Backend(name)`` (``"auto"``, ``"triton"``, ``"reference"``) for every part of the model."""
        backend = name if isinstance(name, Backend) else Backend(name)
        for module in self.modules():
            if isinstance(module, (XLMRobertaXLPreTrainedModel, XLMRobertaXLEncoder)) or getattr(
                module, "uses_backend", False
            ):  # e.g. xlmrxl.quantization.QuantLinear
                module.backend = backend
        return self

    # -- CUDA graphs -------------------------------------------------------------------------------------------
    def set_cuda_graphs(
        self, mode: bool | str | None = "auto", *, max_tokens: int | None = None
    ) -> XLMRobertaXLPreTrainedModel:
        """CUDA graphs for the fused encoder calls: ``"auto"`` (graphs on CUDA when the call takes the packed route
        and its token count fits the buckets; eager otherwise, the reason in ``xlmrxl.fast.stack.graph_reasons``),
        True, False, or ``"emulate"`` (the bucketed static-buffer path without capture: CPU tests). ``"auto"`` / None
        defer to ``XLMRXL_CUDA_GRAPHS`` (auto / on / off / emulate), read now. The packed layer stack is captured
        once per (token bucket, segment bucket) on first use; the ``StaticCache`` decode step once per KV-length
        bucket. Any change drops the graphs captured so far; ``max_tokens``: the largest token bucket (4096)."""
        from ..fast.stack import set_graph_mode

        for module in self.modules():
            if isinstance(module, XLMRobertaXLEncoder):
                set_graph_mode(module, mode, max_tokens=max_tokens)
        return self

    # -- IO -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        backend: Backend | str | None = "auto",
        quantization: str | None = None,
        output_loading_info: bool = False,
        progress: Any = None,
        cuda_graphs: bool | str | None = "auto",
        **config_overrides: Any,
    ) -> Any:
        """Load a checkpoint directory (transformers' or ours); see ``xlmrxl.checkpoint.load_pretrained``.
        ``cuda_graphs``: see ``set_cuda_graphs`` (checked before anything is read)."""
        from ..fast.graphs import resolve_mode

        cuda_graphs = resolve_mode(cuda_graphs)  # a bad value (or XLMRXL_CUDA_GRAPHS) fails before loading
        torch_dtype = config_overrides.pop("torch_dtype", None)
        if dtype is None:
            dtype = torch_dtype
        elif torch_dtype is not None and torch_dtype != dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass only dtype=")
        loaded = load_pretrained(
            cls,
            pretrained_model_name_or_path,
            dtype=dtype,
            device=device,
            backend=backend,
            quantization=quantization,
            output_loading_info=output_loading_info,
            progress=progress,
            **config_overrides,
        )
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.set_cuda_graphs(cuda_graphs)
        return loaded

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: int | str = "50GB",
        safe_serialization: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """Write config.json and safetensors weights loadable by transformers, as one transaction (another save into
        the same directory waits for it; ``timeout`` seconds at most when given); see ``xlmrxl.checkpoint``."""
        return save_pretrained(
            self,
            save_directory,
            max_shard_size=max_shard_size,
            safe_serialization=safe_serialization,
            timeout=timeout,
        )

    # -- shared forward helpers ---------------------------------------------------------------------------------
    def _flags(self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None):
        c = self.config
        return (
            c.output_attentions if output_attentions is None else output_attentions,
            c.output_hidden_states if output_hidden_states is None else output_hidden_states,
            c.use_return_dict if return_dict is None else return_dict,
        )


def backbone_tail(outputs: BaseModelOutputWithPoolingAndCrossAttentions) -> tuple:
    """What transformers' heads append after their logits in tuple mode: the backbone tuple's ``[2:]``, i.e. the
    non-None of (past_key_values, hidden_states, attentions, cross_attentions), in that order."""
    return tuple(
        v
        for v in (outputs.past_key_values, outputs.hidden_states, outputs.attentions, outputs.cross_attentions)
        if v is not None
    )


def labels_on_padding(
    labels: torch.Tensor | None, attention_mask: torch.Tensor | None, ignore_index: int = -100
) -> bool:
    """Does a token-level loss read padded positions (a label other than ``ignore_index`` where the mask is 0)?
    One host sync, only when both are given with the same shape (and not while tracing or compiling)."""
    if labels is None or attention_mask is None or labels.shape != attention_mask.shape:
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True  # cannot look: assume it does (the route then takes the exact path, as it does under tracing)
    return bool(((attention_mask == 0) & (labels != ignore_index)).any())


def first_token_padded_reason(reader: str) -> str:
    """The route's reason when ``reader`` (the pooler, a classification head) reads position 0 (``<s>``) and some row
    is left-padded: the packed path never computes padded positions, transformers reads its value there."""
    return f"{reader} reads position 0 (<s>), which is padding in a left-padded row"
