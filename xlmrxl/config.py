"""``XLMRobertaXLConfig``: the model configuration, a plain object that reads and writes transformers' config.json.

Contract:
- Same fields, defaults and ``model_type`` (``"xlm-roberta-xl"``) as transformers 4.56.2's ``XLMRobertaXLConfig``
  (the defaults are the XL sizes), plus the inherited ``PretrainedConfig`` fields the model uses
  (``is_decoder``, ``add_cross_attention``, ``tie_word_embeddings``, ``chunk_size_feed_forward``, labels,
  ``problem_type``, ``output_*``, ``return_dict``, ``architectures``, ``dtype``/``torch_dtype``, ...).
- Unknown keyword arguments (and unknown config.json keys) are kept as attributes and written back on save.
- ``save_pretrained(dir)`` writes a ``config.json`` that transformers 4.56.2 and 5.x load; ``from_pretrained``
  reads a directory or a json file, ours or transformers'. ``torch_dtype`` is accepted as an alias of ``dtype``.
- ``hidden_size % num_attention_heads != 0`` raises ``ValueError`` at construction.
- transformers is never imported.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import uuid
from typing import Any

from .parsing import parse_dtype

logger = logging.getLogger("xlmrxl")

CONFIG_NAME = "config.json"
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")

_MAX_CONFIG_BYTES = 64 << 20  # a config.json is a few KB (a 250k-label id2label map stays far below this)
# runtime-only attributes: never serialised
_NOT_SERIALISED = ("_attn_implementation", "_commit_hash", "_name_or_path_internal")


def _dtype_to_str(dtype) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    return str(dtype).replace("torch.", "")


HIDDEN_ACTS = ("gelu", "relu", "silu", "swish", "tanh", "gelu_new", "gelu_pytorch_tanh")
_BOOL_FIELDS = (
    "use_cache",
    "is_decoder",
    "add_cross_attention",
    "is_encoder_decoder",
    "tie_word_embeddings",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)


def _check_int(name: str, value: Any, low: int, high: int | None = None, why: str = "") -> None:
    """``value`` must be an int (not a bool, not a float such as 64.0, not a string) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(
            f"config field {name}={value!r} ({type(value).__name__}) is not allowed: it must be an integer {span}"
            + (f" ({why})" if why else "")
        )


def _check_float(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    """``value`` must be a finite real number (int or float, not a bool or string) in ``[low, high]``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"config field {name}={value!r} is not allowed: it must be a number in {span}")


class XLMRobertaXLConfig:
    """Configuration of an XLM-RoBERTa-XL / XXL model (defaults: facebook/xlm-roberta-xl)."""

    model_type = "xlm-roberta-xl"

    def __init__(
        self,
        vocab_size: int = 250880,
        hidden_size: int = 2560,
        num_hidden_layers: int = 36,
        num_attention_heads: int = 32,
        intermediate_size: int = 10240,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 514,
        type_vocab_size: int = 1,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-5,
        pad_token_id: int | None = 1,
        bos_token_id: int | None = 0,
        eos_token_id: int | None = 2,
        position_embedding_type: str = "absolute",
        use_cache: bool = True,
        classifier_dropout: float | None = None,
        *,
        is_decoder: bool = False,
        add_cross_attention: bool = False,
        is_encoder_decoder: bool = False,
        tie_word_embeddings: bool = True,
        chunk_size_feed_forward: int = 0,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        problem_type: str | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        architectures: list | None = None,
        dtype=None,
        quantization_config: dict | None = None,
        attn_implementation: str | None = None,
        **kwargs,
    ):
        torch_dtype = kwargs.pop("torch_dtype", None)
        if dtype is None:
            dtype = torch_dtype

        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.position_embedding_type = position_embedding_type
        self.use_cache = use_cache
        self.classifier_dropout = classifier_dropout

        self.is_decoder = is_decoder
        self.add_cross_attention = add_cross_attention
        self.is_encoder_decoder = is_encoder_decoder
        self.tie_word_embeddings = tie_word_embeddings
        self.chunk_size_feed_forward = chunk_size_feed_forward
        self.problem_type = problem_type
        self.output_attentions = output_attentions
        self.output_hidden_states = output_hidden_states
        self.return_dict = return_dict
        self.architectures = architectures
        self.dtype = _dtype_to_str(dtype)
        if quantization_config is not None:
            self.quantization_config = quantization_config

        if num_labels is not None:
            _check_int("num_labels", num_labels, 1)
        try:
            self._set_labels(num_labels, id2label, label2id)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"id2label={id2label!r} / label2id={label2id!r} are not label maps ({exc}); id2label maps label ids "
                '(integers, or their strings) to names: {"0": "negative", "1": "positive"}'
            ) from None

        self._name_or_path = str(kwargs.pop("name_or_path", kwargs.pop("_name_or_path", "")))
        kwargs.pop("model_type", None)
        kwargs.pop("transformers_version", None)
        kwargs.pop("_commit_hash", None)
        self.attn_implementation = attn_implementation or kwargs.pop("_attn_implementation", None)
        # Unknown keys are kept (and written back on save), as transformers does: any string, "my-key" included
        # (read back with getattr(config, "my-key")); only names that would shadow the config's own methods and
        # properties, or dunder names, are refused
        for key, value in kwargs.items():
            if not isinstance(key, str) or not key or key.startswith("__") or hasattr(type(self), key):
                raise ValueError(
                    f"config key {key!r} cannot be set: it is not a field name (or it names a method or a read-only "
                    "property of the config); remove it from config.json / the keyword arguments"
                )
            setattr(self, key, value)
        self.validate()

    def _set_labels(self, num_labels, id2label, label2id) -> None:
        for name, value in (("id2label", id2label), ("label2id", label2id)):
            if value is not None and not isinstance(value, dict):
                raise ValueError(
                    f"config field {name}={value!r} must be a JSON object mapping "
                    + ("label ids to label names" if name == "id2label" else "label names to label ids")
                    + ', e.g. {"0": "NEGATIVE", "1": "POSITIVE"}'
                )
        if id2label is not None:
            try:
                id2label = {int(k): v for k, v in id2label.items()}
            except (TypeError, ValueError):
                raise ValueError(f"config field id2label={id2label!r}: its keys must be label ids (integers)") from None
        if label2id is not None:
            try:
                label2id = {k: int(v) for k, v in label2id.items()}
            except (TypeError, ValueError):
                raise ValueError(
                    f"config field label2id={label2id!r}: its values must be label ids (integers)"
                ) from None
        if id2label is None:
            if num_labels is not None and label2id is not None and len(label2id) == num_labels:
                id2label = {int(v): k for k, v in label2id.items()}
            else:
                id2label = {i: f"LABEL_{i}" for i in range(num_labels if num_labels is not None else 2)}
                label2id = None
        elif num_labels is not None and len(id2label) != num_labels:
            logger.warning(
                "num_labels=%d does not match the id2label map of length %d; id2label wins", num_labels, len(id2label)
            )
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.label2id = dict(label2id) if label2id is not None else {v: k for k, v in self.id2label.items()}

    # -- derived / aliased attributes ---------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        _check_int("num_labels", value, 1)
        if self.num_labels != value:
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def torch_dtype(self):
        """Alias of ``dtype`` (the name transformers < 4.56 and the hub config.json files use)."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value) -> None:
        self.dtype = _dtype_to_str(value)

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @property
    def attn_implementation(self) -> str:
        """``"sdpa"`` (default) or ``"eager"``: which exact-path attention transformers would run (see modeling)."""
        return self._attn_implementation

    @attn_implementation.setter
    def attn_implementation(self, value: str | None) -> None:
        value = value or "sdpa"
        if value not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={value!r} is not supported; choose one of {', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        self._attn_implementation = value

    def validate(self) -> None:
        """Check every field's type and range; a ``ValueError`` names the field, the value and what is allowed."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            _check_int(name, getattr(self, name), 1)
        _check_int("num_hidden_layers", self.num_hidden_layers, 1)
        _check_int("type_vocab_size", self.type_vocab_size, 1)
        _check_int("chunk_size_feed_forward", self.chunk_size_feed_forward, 0)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads}); head_dim = hidden_size / num_attention_heads would be "
                f"{self.hidden_size / self.num_attention_heads:g}. Choose sizes that divide evenly "
                "(XL: 2560 / 32 = 80, XXL: 4096 / 32 = 128)."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            _check_float(name, getattr(self, name), 0.0, 1.0)
        if self.classifier_dropout is not None:
            _check_float("classifier_dropout", self.classifier_dropout, 0.0, 1.0)
        _check_float("initializer_range", self.initializer_range, 0.0, math.inf)
        _check_float("layer_norm_eps", self.layer_norm_eps, 0.0, 1.0, low_open=True)
        if not callable(self.hidden_act) and self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; choose one of {', '.join(HIDDEN_ACTS)}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if name == "eos_token_id" and isinstance(value, list) else [value]
            for v in ids:
                if v is not None:
                    _check_int(name, v, 0, self.vocab_size - 1, why="a token id inside the vocabulary")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported; choose one of "
                f"{', '.join(POSITION_EMBEDDING_TYPES)}"
            )
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"problem_type={self.problem_type!r} is not understood; choose one of "
                f"{', '.join(PROBLEM_TYPES)} (or None to infer it from the labels)"
            )
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        if not isinstance(self.id2label, dict) or not self.id2label:
            raise ValueError(f"id2label={self.id2label!r} must be a non-empty mapping of label ids to names")
        if self.architectures is not None and (
            not isinstance(self.architectures, list) or not all(isinstance(a, str) for a in self.architectures)
        ):
            raise ValueError(f"architectures={self.architectures!r} must be a list of class names (or null)")
        if self.dtype is not None:
            try:
                parse_dtype(self.dtype, "dtype")
            except ValueError as exc:
                raise ValueError(f"config {exc}") from None

    def get_text_config(self, *args, **kwargs) -> XLMRobertaXLConfig:
        return self

    # -- (de)serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every attribute (known and unknown) as JSON-ready values, plus ``model_type``."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in _NOT_SERIALISED:
                continue
            out[key] = copy.deepcopy(value)
        out["dtype"] = _dtype_to_str(self.dtype)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        qc = out.get("quantization_config")
        if qc is not None and not isinstance(qc, dict) and hasattr(qc, "to_dict"):
            out["quantization_config"] = qc.to_dict()
        out["model_type"] = self.model_type
        return out

    def to_json_string(self, use_diff: bool = False) -> str:
        d = self.to_dict()
        if use_diff:
            default = XLMRobertaXLConfig(
                hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads
            ).to_dict()
            keep = {
                "model_type",
                "architectures",
                "hidden_size",
                "num_attention_heads",
                "vocab_size",
                "num_hidden_layers",
                "intermediate_size",
                "max_position_embeddings",
                "dtype",
            }
            d = {k: v for k, v in d.items() if k in keep or k not in default or default[k] != v}
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        with open(json_file_path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> XLMRobertaXLConfig:
        """Build from a dict (``to_dict()`` output or a transformers config.json); ``kwargs`` override keys."""
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"a config must be a JSON object (a dict of fields), got {type(config_dict).__name__}; "
                'config.json holds the model\'s fields, e.g. {"hidden_size": 2560, ...}'
            )
        d = dict(config_dict)
        model_type = d.get("model_type")
        if model_type is not None and model_type not in (cls.model_type, "xlm-roberta-xl"):
            logger.warning("config has model_type=%r; loading it as %r", model_type, cls.model_type)
        if "torch_dtype" in d and d.get("dtype") is None:
            d["dtype"] = d.pop("torch_dtype")
        else:
            d.pop("torch_dtype", None)
        if (
            "num_labels" in kwargs
            and "id2label" not in kwargs
            and kwargs["num_labels"] is not None
            and len(d.get("id2label") or {}) != kwargs["num_labels"]
        ):
            # an explicit num_labels= overrides the file's label maps (as transformers does)
            d.pop("id2label", None)
            d.pop("label2id", None)
        d.update(kwargs)
        if "torch_dtype" in kwargs:
            d["dtype"] = d.pop("torch_dtype")
        bad = [k for k in d if not isinstance(k, str) or k == "self"]
        if bad:
            raise ValueError(f"config keys {bad!r} are not field names")
        return cls(**d)

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> XLMRobertaXLConfig:
        with open(json_file, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> XLMRobertaXLConfig:
        """Read ``<dir>/config.json`` (or the json file itself); ``kwargs`` override its values."""
        path = os.fspath(pretrained_model_name_or_path)
        file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(
                f"no config found at {path!r} (looked for {file!r}); pass a local directory holding config.json "
                "or the path of a json file"
            )
        if os.path.getsize(file) > _MAX_CONFIG_BYTES:
            raise ValueError(
                f"{file!r} is {os.path.getsize(file)} bytes: far too big for a model config (a few KB); it is not one"
            )
        with open(file, "rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise ValueError(f"{file!r} is not valid JSON: {detail}") from None
        if not isinstance(d, dict):
            raise ValueError(
                f"{file!r} holds a JSON {type(d).__name__}, not an object of config fields; it is not a model config"
            )
        d.setdefault("_name_or_path", path)
        try:
            return cls.from_dict(d, **kwargs)
        except ValueError as exc:
            raise ValueError(f"{file}: {exc}") from None

    def to_config_json(self) -> str:
        """The text ``save_pretrained`` writes: every field, sorted, with the dtype under both spellings
        (``torch_dtype`` for transformers 4.x, ``dtype`` for 5.x)."""
        d = self.to_dict()
        d.pop("_name_or_path", None)
        if d.get("quantization_config") is None:
            d.pop("quantization_config", None)
        if d.get("dtype") is not None:
            d["torch_dtype"] = d["dtype"]
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> str:
        """Write ``<save_directory>/config.json`` (loadable by transformers 4.56.2 and 5.x); returns its path."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={save_directory!r} is a file; give a directory")
        os.makedirs(save_directory, exist_ok=True)
        file = os.path.join(save_directory, CONFIG_NAME)
        tmp = os.path.join(save_directory, f".xlmrxl-tmp.{os.getpid()}.{uuid.uuid4().hex[:16]}.{CONFIG_NAME}")
        try:  # written beside the old file, fsynced, renamed over it: never half-written
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.to_config_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return file

    # -- misc ---------------------------------------------------------------------------------------------------
    def __eq__(self, other) -> bool:
        return isinstance(other, XLMRobertaXLConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def copy(self) -> XLMRobertaXLConfig:
        return copy.deepcopy(self)

    def update(self, config_dict: dict[str, Any]) -> None:
        for key, value in config_dict.items():
            setattr(self, key, value)
