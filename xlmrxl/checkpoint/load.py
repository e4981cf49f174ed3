"""``load_pretrained``: build a model class from a checkpoint directory, tensors straight into their dtype and device.

The model is built on the meta device and every parameter / persistent buffer is materialised straight from the file
in its final dtype and on its final device, one module at a time, a chunk of rows at a time (peak memory: the final
weights plus a few MB). ``dtype=None`` gives float32 (transformers 4.56's default), ``"auto"`` the config's
``torch_dtype`` (else the checkpoint's first floating dtype); floating entries are cast, integer ones keep the dtype
the module declares. ``device=None`` gives cpu (see :mod:`xlmrxl.parsing`). Missing tensors are initialised with
``model._init_weights(module)`` and listed in a warning; unexpected keys are a warning when the checkpoint was saved
from this very class, else info. ``output_loading_info=True`` returns ``(model, {"missing_keys", "unexpected_keys",
"mismatched_keys", "error_msgs"})``. Keyword arguments that are parameters of ``cls.__init__`` (``add_pooling_layer``)
go to the constructor; transformers' loader keywords are used (``torch_dtype``, ``config=``, ``device_map`` naming one
device, ``subfolder``, ``use_safetensors``, ``ignore_mismatched_sizes``) or ignored (``low_cpu_mem_usage``, Hub
options); everything else is a config override (``num_labels=3``), set after the file's values, then the whole config
is validated. ``quantization=`` other than None asks ``xlmrxl.quantization.load_hook`` for a per-module hook that runs
right after each module's tensors have arrived.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import quantization as quant_mod
from .. import sizing
from ..parsing import AUTO, DeviceArg, DtypeArg, parse_device, parse_dtype
from ..progress import resolve as resolve_progress
from . import journal
from .errors import CheckpointError
from .files import CONFIG_NAME, WEIGHTS_FILES, Checkpoint, resolve_config_file, sha256_of
from .plan import NoRandomInitOnMeta, Plan, materialise
from .record import config_mismatch

logger = logging.getLogger("xlmrxl")

_PROGRESS_MIN_BYTES = 1 << 30  # progress bar on (when stderr is a tty) above 1 GB of weights
# transformers' from_pretrained keywords: used (config, torch_dtype, ignore_mismatched_sizes, device_map,
# use_safetensors, subfolder, Hub options) or accepted and ignored (the rest); never written into the config
_USED_OPTIONS = ("config", "torch_dtype", "ignore_mismatched_sizes", "device_map", "use_safetensors", "subfolder")
_LOADER_OPTIONS = _USED_OPTIONS + (
    "local_files_only",
    "revision",
    "cache_dir",
    "token",
    "low_cpu_mem_usage",
    "trust_remote_code",
    "force_download",
    "resume_download",
    "proxies",
    "use_auth_token",
    "offload_folder",
    "offload_state_dict",
    "variant",
    "_fast_init",
)


def resolve_directory(name_or_path: str | os.PathLike, options: dict[str, Any]) -> str:
    """A local checkpoint directory, or a Hub repo id fetched with ``huggingface_hub`` when it is installed."""
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.isfile(path):
        raise NotADirectoryError(
            f"{path!r} is a file; pass the directory that holds config.json and the weights "
            f"({', '.join(WEIGHTS_FILES)})"
        )
    hub_error = None
    if re.fullmatch(r"[\w\-]+(\.[\w\-]+)*/[\w\-.]+", path):  # looks like a Hub repo id: owner/name
        try:
            return _hub_download(path, options)
        except ImportError:
            hub_error = "huggingface_hub is not installed, so repo ids cannot be downloaded"
        except Exception as exc:  # network, auth, missing repo: reported with the local-path error below
            detail = str(exc).splitlines()[0] if str(exc) else ""
            hub_error = f"fetching it from the Hugging Face Hub failed ({type(exc).__name__}: {detail[:200]})"
    msg = f"checkpoint directory {path!r} does not exist"
    if hub_error:
        msg += f"; as a Hub repo id: {hub_error}"
    raise FileNotFoundError(msg + f". Pass a local directory holding config.json and one of {', '.join(WEIGHTS_FILES)}")


def _hub_download(repo_id: str, options: dict[str, Any]) -> str:
    """Optional convenience: a Hub repo id via ``huggingface_hub`` (config, tokenizer files and one weights layout,
    safetensors first). Offline or with ``local_files_only=True`` only the local cache is used."""
    # an optional dependency, imported where it is needed so that xlmrxl works without it
    from huggingface_hub import HfApi, snapshot_download

    kw = {k: options[k] for k in ("revision", "cache_dir", "token") if options.get(k) is not None}
    offline = options.get("local_files_only") or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    if offline:
        return snapshot_download(repo_id, local_files_only=True, **kw)
    files = set(HfApi().list_repo_files(repo_id, revision=kw.get("revision"), token=kw.get("token")))
    weights = next((w for w in WEIGHTS_FILES if w in files), None)
    patterns = ["*.json", "*.model", "*.txt"]
    if weights in ("model.safetensors", "pytorch_model.bin"):
        patterns.append(weights)
    elif weights == "model.safetensors.index.json":
        patterns.append("model-*.safetensors")
    elif weights == "pytorch_model.bin.index.json":
        patterns.append("pytorch_model-*.bin")
    return snapshot_download(repo_id, allow_patterns=patterns, **kw)


def _resolve_device(device: DeviceArg, device_map: Any) -> torch.device:
    if device is None and device_map is not None:
        if isinstance(device_map, dict):
            placed = set(device_map.values())
            if len(placed) != 1:
                raise ValueError(
                    f"device_map={device_map!r} spreads the model over several devices, which xlmrxl does "
                    "not do; pass device='cuda' (or one device) instead"
                )
            device_map = placed.pop()
        device = device_map
    return parse_device(device)


def _resolve_dtype(dtype: DtypeArg, config: Any, ckpt: Checkpoint) -> torch.dtype:
    parsed = parse_dtype(dtype)
    if parsed is None:
        return torch.float32
    if parsed != AUTO:
        return parsed
    for attr in ("torch_dtype", "dtype"):
        value = getattr(config, attr, None)
        if value is not None:
            stored = parse_dtype(value, f"config.{attr}")
            if stored != AUTO:
                return stored
    for e in ckpt.entries.values():
        if e.dtype.is_floating_point:
            return e.dtype
    return torch.float32


def _split_kwargs(cls: type, kwargs: dict[str, Any]) -> tuple[dict, dict, dict]:
    options = {k: kwargs.pop(k) for k in _LOADER_OPTIONS if k in kwargs}
    init_kwargs = {}
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        params = {}
    for k in list(kwargs):
        if k in params and k not in ("self", "config"):
            init_kwargs[k] = kwargs.pop(k)
    return options, init_kwargs, kwargs


def _load_config(cls: type, directory: str, options: dict, overrides: dict, config_file: str | None = None) -> Any:
    """``config.json`` (or a copy of ``config=``), then each override set as an attribute, after the file's values,
    as transformers does (so ``num_labels=5`` rebuilds ``id2label`` even when the file lists 3 labels); then the
    whole config is validated."""
    config = options.get("config")
    if config is None:
        if not os.path.isfile(os.path.join(directory, CONFIG_NAME)):
            raise FileNotFoundError(
                f"no {CONFIG_NAME} in {directory!r}; a checkpoint directory needs the config saved with its weights"
            )
        config = cls.config_class.from_pretrained(config_file or os.path.join(directory, CONFIG_NAME))
        config._name_or_path = str(directory)  # as transformers: the directory loaded (its tokenizer lives there)
    else:
        config = copy.deepcopy(config)
    for key, value in overrides.items():
        setattr(config, key, value)
    if hasattr(config, "validate"):
        config.validate()
    return config


def _open_checkpoint(cls: type, directory: str, options: dict, overrides: dict) -> tuple[Checkpoint, Any]:
    """The live weights of ``directory`` and the config, after an interrupted save was rolled forward
    (:mod:`.journal`), the config checked against the digest the weights record. Files of two saves (a save ran
    meanwhile) are read once more after that save has finished. A ``config.json`` that is not the one saved with the
    weights (edited by hand, copied from elsewhere) is used, as transformers does, with a warning naming both files."""
    problem = None
    for attempt in range(3):
        if attempt:
            journal.roll_forward(directory, wait=True)
        try:
            ckpt = Checkpoint(directory, options.get("use_safetensors"))
        except (CheckpointError, FileNotFoundError):
            if attempt == 2:
                raise
            continue
        try:
            if options.get("config") is not None:
                return ckpt, _load_config(cls, directory, options, overrides)
            config_file = resolve_config_file(directory, ckpt.record)
            # one version of the config, hashed and parsed: saves replace config.json by a rename, never in place
            with open(config_file, "rb") as pinned:
                digest = hashlib.sha256(pinned.read()).hexdigest()
                problem = config_mismatch(directory, ckpt, config_file, digest)
                # a mismatch is read twice (the second time after any save running meanwhile) before it is believed
                if problem is None or attempt == 2 or (attempt == 1 and not journal.busy(directory)):
                    proc = f"/proc/self/fd/{pinned.fileno()}"
                    same = os.path.exists(proc)
                    try:
                        config = _load_config(cls, directory, options, overrides, proc if same else config_file)
                    except ValueError as exc:  # its message names config.json, not the descriptor
                        if proc not in str(exc):
                            raise
                        raise _renamed(exc, str(exc).replace(proc, config_file)) from None
                    if same or sha256_of(config_file) == digest:  # not replaced by a save while it was read
                        if problem is not None:  # edited by hand, or copied from elsewhere: used, as transformers
                            logger.warning(problem)
                        return ckpt, config
        except BaseException:
            ckpt.close()
            raise
        ckpt.close()
    raise CheckpointError(f"{directory}: another save kept replacing the checkpoint while it was read; load it again")


def _renamed(exc: ValueError, message: str) -> ValueError:
    try:
        return type(exc)(message)
    except Exception:  # an exception class with another constructor
        return ValueError(message)


def _progress_bar(progress: bool | None, total_bytes: int, n: int) -> Any:
    if progress is None:  # xlmrxl.progress's rule (stderr a terminal, or XLMRXL_PROGRESS=on), for big checkpoints
        progress = total_bytes > _PROGRESS_MIN_BYTES and resolve_progress(None)
    if not progress:
        return None
    return tqdm(total=n, desc="Loading weights", unit="tensor", file=sys.stderr)


def _quantization_hook(
    model: nn.Module,
    quant: Any,
    *,
    dtype: torch.dtype,
    device: torch.device,
    method: str | None = None,
    options: dict | None = None,
) -> Callable | None:
    """The seam for quantize-while-loading. ``None`` -> no hook.

    Otherwise ``xlmrxl.quantization.load_hook(model, quantization, dtype=..., device=...)`` returns a callable
    ``hook(module_name, module) -> Optional[nn.Module]``; the loader calls it for every module right after that
    module's own tensors are materialised (children are visited after their parent, so a Linear is complete when
    its hook runs). Returning a module replaces ``module`` in its parent (e.g. a ``QuantLinear`` for an
    ``nn.Linear``); returning None keeps it (quantized in place, or untouched).
    """
    if quant is None:
        if method is not None or options:
            raise ValueError("quantization_method / quantization_options need quantization='int4'")
        return None
    extra = {k: v for k, v in (("method", method), ("options", options)) if v is not None}
    return quant_mod.load_hook(model, quant, dtype=dtype, device=device, **extra)


def load_pretrained(
    cls: type,
    pretrained_model_name_or_path: str | os.PathLike,
    *,
    dtype: DtypeArg = None,
    device: DeviceArg = None,
    backend: Any = "auto",
    quantization: Any = None,
    output_loading_info: bool = False,
    progress: bool | None = None,
    **config_overrides: Any,
) -> nn.Module | tuple[nn.Module, dict[str, list]]:
    """Build ``cls`` from a checkpoint directory; see the module docstring for the rules."""
    kwargs = dict(config_overrides)
    q_method = kwargs.pop("quantization_method", None)  # xlmrxl.quantization: rtn / mse / gptq ...
    q_options = kwargs.pop("quantization_options", None)  # ... and its options (gptq: calibration, tokenizer)
    options, init_kwargs, overrides = _split_kwargs(cls, kwargs)
    if dtype is None and options.get("torch_dtype") is not None:
        dtype = options["torch_dtype"]
    parse_dtype(dtype)  # a bad dtype is reported before anything is read
    device = _resolve_device(device, options.get("device_map"))
    directory = resolve_directory(pretrained_model_name_or_path, options)
    if options.get("subfolder"):
        directory = os.path.join(directory, options["subfolder"])
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"subfolder {options['subfolder']!r} does not exist: no directory {directory!r}")
    ignored = sorted(k for k in options if k not in _USED_OPTIONS)
    if ignored:
        logger.debug("xlmrxl: from_pretrained ignores %s (transformers options with no effect here)", ignored)
    journal.roll_forward(directory)  # an interrupted save of the first checkpoint here may still owe its config.json
    if options.get("config") is None and not os.path.isfile(os.path.join(directory, CONFIG_NAME)):
        _load_config(cls, directory, options, overrides)  # the "no config.json" error, before the weights
    ckpt, config = _open_checkpoint(cls, directory, options, overrides)
    try:
        target = _resolve_dtype(dtype, config, ckpt)
        int4 = quantization is not None or getattr(config, "quantization_config", None) is not None
        sizing.check_fits(config, device, target, 128 if int4 else None, what=cls.__name__)  # before anything is read
        previous = torch.get_default_dtype()
        torch.set_default_dtype(target)  # modules create floating tensors in the target dtype ...
        try:
            with torch.device("meta"), NoRandomInitOnMeta():  # ... and nowhere: nothing is allocated until
                model = cls(config, **init_kwargs)  # the file is read
        finally:
            torch.set_default_dtype(previous)
        if hasattr(model, "tie_weights"):
            model.tie_weights()  # on meta: makes the tied tensors one object, so one read feeds all
        if getattr(config, "quantization_config", None) is not None:
            quant_mod.prepare_quantized_model(model, config.quantization_config)  # its QuantLinears, on meta
        plan = Plan(model, ckpt, bool(options.get("ignore_mismatched_sizes", False)))
        hook = _quantization_hook(model, quantization, dtype=target, device=device, method=q_method, options=q_options)
        bar = _progress_bar(progress, ckpt.total_bytes, plan.n_tensors())
        try:
            materialise(model, plan, ckpt, device, hook, bar)
        finally:
            if bar is not None:
                bar.close()
    finally:
        ckpt.close()
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    for attr in ("torch_dtype", "dtype"):
        if hasattr(model.config, attr) or attr == "torch_dtype":
            with contextlib.suppress(Exception):
                setattr(model.config, attr, target)
    _report(model, plan, directory)
    if hasattr(model, "set_backend"):
        model.set_backend(backend)
    model.eval()
    if quantization is not None:  # gptq quantizes the loaded model here (rtn / mse were done while loading)
        quant_mod.finish_loading(model, quantization, method=q_method, options=q_options)
    if output_loading_info:
        info = {
            "missing_keys": list(plan.missing),
            "unexpected_keys": list(plan.unexpected),
            "mismatched_keys": list(plan.mismatched),
            "error_msgs": [],
        }
        return model, info
    return model


def _report(model: nn.Module, plan: Plan, directory: str) -> None:
    name = type(model).__name__
    if plan.unexpected:
        archs = getattr(model.config, "architectures", None) or []
        log = logger.warning if name in archs else logger.info
        log(
            f"Some weights of the model checkpoint at {directory} were not used when initializing {name}: "
            f"{plan.unexpected}\n- This is expected if the checkpoint was saved from another architecture or task "
            f"(e.g. a masked-LM checkpoint loaded into a classifier); it is not expected for a checkpoint of {name}."
        )
    if plan.missing:
        logger.warning(
            f"Some weights of {name} were not initialized from the model checkpoint at {directory} and "
            f"are newly initialized: {plan.missing}\nYou should probably TRAIN this model on a down-stream "
            "task to be able to use it for predictions and inference."
        )
    if plan.mismatched:
        lines = "\n".join(
            f"- {k}: found shape {tuple(h)} in the checkpoint and {tuple(w)} in the model instantiated"
            for k, h, w in plan.mismatched
        )
        logger.warning(
            f"Some weights of {name} were not initialized from the model checkpoint at {directory} and "
            f"are newly initialized because the shapes did not match:\n{lines}\nYou should probably "
            "TRAIN this model on a down-stream task to be able to use it for predictions and inference."
        )
