"""The ``xlmrxl`` command line (also ``python -m xlmrxl``).

    xlmrxl fill-mask "Paris is the <mask> of France." --model DIR [--top-k 5] [--targets a,b] [--json]
    xlmrxl embed "some text" --model DIR [--pooling auto|cls|mean|none] [--normalize] [--json]
    xlmrxl classify "some text" --model DIR [--json]
    xlmrxl info DIR [--json]
    xlmrxl demo [--model DIR] [--quick] [--backends reference,triton] [--no-transformers]
    xlmrxl quantize SRC DST [--group-size 128] [--method rtn|mse|gptq] [--calibration FILE] [--force]
    xlmrxl corpus TASK --model DIR --input PATH --output DIR [--engine ray]   (see xlmrxl/corpus/cli.py)
    xlmrxl serve MODEL_DIR [--task embed] [--port 8080]   (see xlmrxl/serve/cli.py)

Contract
--------
- ``fill-mask`` / ``embed`` / ``classify`` take the text as an argument, or one input per line on stdin when it is
  omitted or ``-``; a bad stdin line gets an error record and the others their output, exit 1 if any failed
  (``xlmrxl.cli_batch``). Plain output is for people; ``--json`` writes one JSON object per input (JSON Lines).
  ``embed`` writes each embedding as a JSON array (one line per input; token states with ``--pooling none``).
- ``info`` reads ``config.json`` (validated) and the weights files' headers with the loader's own reader (a corrupt
  or truncated file is an error, exit 1; no weights are loaded, so it is instant even
  for XXL): the config summary, parameter count, stored dtypes, bytes on disk and in memory, and whether the
  checkpoint is quantized; for an int4 checkpoint, the bytes of the quantized linear layers vs their bf16 size.
- ``quantize`` = ``XLMRobertaXLForMaskedLM.from_pretrained(SRC, quantization="int4", dtype=--dtype)`` then
  ``save_pretrained(DST)`` (tokenizer files copied along); ``--group-size`` other than 128 is passed as
  ``quantization={"quant_method": "xlmrxl_int4", "bits": 4, "group_size": N}``.
  A DST that is a non-empty directory but not a checkpoint is refused unless ``--force``; the save never touches
  files of DST that are not part of a checkpoint.
- ``--backend`` / ``--device`` / ``--dtype`` on the commands that run a model. Logs go to stderr
  (``xlmrxl.logging``): warnings by default (or ``XLMRXL_VERBOSITY``), ``-v`` INFO (shows why an op runs the
  PyTorch reference instead of a kernel), ``-vv`` DEBUG: ``set_verbosity`` for the command's duration.
- ``main(argv=None) -> int``: 0 on success, 1 on an error (one line on stderr, ``-v`` adds the traceback), 2 on a
  usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cli_batch
from .checkpoint import Checkpoint, is_checkpoint_dir
from .config import XLMRobertaXLConfig
from .corpus import cli as corpus_cli
from .demo import run_demo
from .logging import DEBUG, INFO, set_verbosity
from .memory import memory_lines
from .modeling import XLMRobertaXLForMaskedLM
from .parsing import parse_device, parse_dtype
from .quantization import quality_lines, quantize_checkpoint
from .serve import cli as serve_cli

logger = logging.getLogger("xlmrxl")

_TOKENIZER_FILES = ("sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


# ---------------------------------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlmrxl", description="XLM-RoBERTa-XL / XXL with custom kernels.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"xlmrxl {__version__}")
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: INFO logs (backend fallback reasons), -vv: DEBUG"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def run_opts(sp, dtype_default=None):
        sp.add_argument(
            "--backend",
            default=None,
            choices=("auto", "triton", "reference"),
            help="kernel backend (default: $XLMRXL_BACKEND, else auto)",
        )
        sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1, auto (= cuda when usable) (default: cpu)")
        sp.add_argument(
            "--dtype",
            default=dtype_default,
            help=f"float32, bfloat16 or float16 (default: {dtype_default or 'float32'})",
        )

    cli_batch.add_parsers(sub, run_opts)

    info = sub.add_parser("info", help="summarise a checkpoint directory without loading its weights")
    info.add_argument("directory")
    info.add_argument("--json", action="store_true")

    demo = sub.add_parser(
        "demo", help="check and time the fused path against the exact one (random-weight model, or --model DIR)"
    )
    demo.add_argument("--quick", action="store_true", help="an even smaller model and fewer inputs (tests)")
    demo.add_argument("--model", default=None, help="a checkpoint directory to run on (default: random-weight model)")
    demo.add_argument("--backends", default=None, help="comma-separated subset of reference,triton to check")
    demo.add_argument("--no-transformers", action="store_true", help="do not compare with transformers")
    demo.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 10-50, about 30 s)")
    demo.add_argument("--device", default=None)
    demo.add_argument("--dtype", default=None)

    q = sub.add_parser("quantize", help="write an int4 (group-wise) copy of a masked-LM checkpoint")
    q.add_argument("src")
    q.add_argument("dst")
    q.add_argument("--group-size", type=int, default=128)
    q.add_argument(
        "--method",
        default="rtn",
        choices=("rtn", "mse", "gptq"),
        help="rtn: min-max (torchao's); mse: per-group searched scale/zero (data-free); gptq: calibrated",
    )
    q.add_argument(
        "--calibration",
        default=None,
        metavar="FILE",
        help="texts, one per line: gptq calibrates on them; every method reports its hidden-state cosine on them",
    )
    q.add_argument("--dtype", default="bfloat16", help="dtype of the layers that stay unquantized")
    q.add_argument("--device", default=None)
    q.add_argument("--backend", default=None, choices=("auto", "triton", "reference"))
    q.add_argument("--force", action="store_true", help="write into a non-empty DST that is not a checkpoint")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument("--progress", action="store_true", help="a progress bar even when stderr is not a terminal")
    corpus_cli.add_parser(sub)
    serve_cli.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    old_level = logger.level
    if args.verbose:  # else the level stays: warning, or what XLMRXL_VERBOSITY / set_verbosity chose
        set_verbosity(DEBUG if args.verbose >= 2 else INFO)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        sys.stderr.write("xlmrxl: interrupted\n")
        return 130
    except BrokenPipeError:  # e.g. `xlmrxl embed ... | head`
        return 0
    except Exception as exc:
        if args.verbose:
            logger.exception("xlmrxl: %s failed", args.command)
        sys.stderr.write(f"xlmrxl {args.command}: error: {exc}\n")
        return 1
    finally:
        logger.setLevel(old_level)


# ---------------------------------------------------------------------------------------------------------------
# commands that run a model
# ---------------------------------------------------------------------------------------------------------------
def _cmd_demo(args) -> int:

    backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else None
    result = run_demo(
        sys.stdout,
        quick=args.quick,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        repeats=args.repeats,
        backends=backends,
        compare_transformers=not args.no_transformers,
    )
    return 0 if result["ok"] else 1


def _cmd_quantize(args) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        raise FileNotFoundError(f"SRC {str(src)!r} is not a checkpoint directory")
    if dst.resolve() == src.resolve():
        raise ValueError("DST must differ from SRC (quantize writes a new checkpoint)")
    if dst.is_dir() and any(dst.iterdir()) and not is_checkpoint_dir(dst) and not args.force:
        raise FileExistsError(
            f"DST {str(dst)!r} is a non-empty directory that is not a checkpoint (no config.json with weights): "
            "quantize would write config.json and the weights into it. Pick an empty or new directory, or pass "
            "--force to write there anyway (files that are not part of a checkpoint are left alone)"
        )
    if args.group_size < 1:
        raise ValueError(f"--group-size {args.group_size} must be positive (128 is the usual choice)")
    model, quality = quantize_checkpoint(
        str(src),
        XLMRobertaXLForMaskedLM,
        group_size=args.group_size,
        method=args.method,
        calibration=args.calibration,
        dtype=parse_dtype(args.dtype),
        device=parse_device(args.device),
        backend=args.backend or "auto",
        progress=False if args.quiet else (True if args.progress else None),
    )
    model.save_pretrained(str(dst))
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    sys.stdout.write(f"wrote the int4 (group size {args.group_size}, {args.method}) checkpoint to {dst}\n")
    sys.stdout.write("".join(line + "\n" for line in quality_lines(quality)))
    _print_info(checkpoint_info(dst))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# info: headers only
# ---------------------------------------------------------------------------------------------------------------
def checkpoint_info(directory: str | os.PathLike) -> dict[str, Any]:
    """What ``xlmrxl info`` reports, as a dict (no weights are loaded)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{str(d)!r} is not a directory; pass a checkpoint directory")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(d)!r} has no config.json; is it a checkpoint directory?")
    cfg = XLMRobertaXLConfig.from_pretrained(str(cfg_path)).to_dict()  # validated as loading validates it
    ckpt = Checkpoint(str(d))  # the loader's reader: headers checked, nothing loaded
    try:
        files = sorted(Path(p) for p in ckpt.weights_paths)
        entries = {
            k: {"dtype": str(e.dtype).replace("torch.", ""), "shape": list(e.shape), "nbytes": e.nbytes}
            for k, e in ckpt.entries.items()
            if k not in ckpt.aliased
        }
    finally:
        ckpt.close()

    # drop tied aliases and legacy buffers: they are not separate tensors once loaded
    def present(k):
        return k in entries

    skip = {k for k in entries if k.endswith(("embeddings.position_ids", "embeddings.token_type_ids"))}
    if (
        cfg.get("tie_word_embeddings", True)
        and present("lm_head.decoder.weight")
        and any(k.endswith("embeddings.word_embeddings.weight") for k in entries)
    ):
        skip.add("lm_head.decoder.weight")
    if present("lm_head.decoder.bias") and present("lm_head.bias"):
        skip.add("lm_head.decoder.bias")
    live = {k: v for k, v in entries.items() if k not in skip}

    qcfg = cfg.get("quantization_config")
    group = int((qcfg or {}).get("group_size", 128))
    qprefixes = sorted(k[: -len(".qweight")] for k in live if k.endswith(".qweight"))
    quant_bytes = quant_bf16 = 0
    quant_keys = set()
    params = 0
    for p in qprefixes:
        names = [f"{p}.{s}" for s in ("qweight", "scales", "zeros") if f"{p}.{s}" in live]
        quant_keys.update(names)
        quant_bytes += sum(live[n]["nbytes"] for n in names)
        if f"{p}.scales" in live:
            n_weights = _numel(live[f"{p}.scales"]["shape"]) * group
        else:  # 4-bit values packed into the qweight bytes
            n_weights = live[f"{p}.qweight"]["nbytes"] * 2
        quant_bf16 += 2 * n_weights
        params += n_weights
    for k, v in live.items():
        if k not in quant_keys:
            params += _numel(v["shape"])
    dtypes: dict[str, int] = {}
    for v in live.values():
        dtypes[v["dtype"]] = dtypes.get(v["dtype"], 0) + v["nbytes"]
    heads = cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    info = {
        "directory": str(d),
        "model_type": cfg.get("model_type"),
        "architectures": cfg.get("architectures"),
        "hidden_size": hidden,
        "num_hidden_layers": cfg.get("num_hidden_layers"),
        "num_attention_heads": heads,
        "head_dim": hidden // heads if hidden and heads else None,
        "intermediate_size": cfg.get("intermediate_size"),
        "vocab_size": cfg.get("vocab_size"),
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "config_dtype": cfg.get("torch_dtype", cfg.get("dtype")),
        "parameters": params,
        "tensors": len(live),
        "stored_dtypes": dtypes,
        "weights_files": [f.name for f in files],
        "bytes_on_disk": sum(f.stat().st_size for f in d.iterdir() if f.is_file()),
        "weights_bytes_on_disk": sum(f.stat().st_size for f in files),
        "bytes_in_memory": sum(v["nbytes"] for v in live.values()),
        "quantized": bool(qprefixes) or qcfg is not None,
        "quantization_config": qcfg,
        "tokenizer": (d / "sentencepiece.bpe.model").is_file(),
    }
    if qprefixes:
        info["quantized_linear_layers"] = len(qprefixes)
        info["quantized_linear_bytes"] = quant_bytes
        info["quantized_linear_bf16_bytes"] = quant_bf16
    return info


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0
    return str(n)


def _print_info(info: dict[str, Any]) -> None:
    w = sys.stdout.write
    arch = ", ".join(info["architectures"] or []) or "?"
    w(f"{info['directory']}\n")
    w(f"  model        {info['model_type']} ({arch})\n")
    w(
        f"  shape        hidden {info['hidden_size']}, {info['num_hidden_layers']} layers, "
        f"{info['num_attention_heads']} heads of {info['head_dim']}, intermediate {info['intermediate_size']}, "
        f"vocab {info['vocab_size']}, max positions {info['max_position_embeddings']}\n"
    )
    n = info["parameters"]
    w(f"  parameters   {n:,} ({n / 1e9:.3f} B)\n" if n >= 1e9 else f"  parameters   {n:,} ({n / 1e6:.2f} M)\n")
    dt = ", ".join(f"{k} {_human(v)}" for k, v in sorted(info["stored_dtypes"].items(), key=lambda kv: -kv[1]))
    w(f"  dtype        config {info['config_dtype']}; stored {dt}\n")
    w(
        f"  on disk      {_human(info['bytes_on_disk'])} (weights {_human(info['weights_bytes_on_disk'])} in "
        f"{', '.join(info['weights_files'])})\n"
    )
    w(
        f"  in memory    {_human(info['bytes_in_memory'])} at the stored dtypes (tied weights counted once; "
        f"from_pretrained's dtype= changes it)\n"
    )
    if info["quantized"]:
        q = info.get("quantization_config") or {}
        fmt = q.get("format", q.get("quant_method", "int4"))
        w(f"  quantized    yes: {fmt}, {q.get('bits', 4)} bits, group size {q.get('group_size', 128)}\n")
        if "quantized_linear_bytes" in info:
            qb, bf = info["quantized_linear_bytes"], info["quantized_linear_bf16_bytes"]
            w(
                f"  int4 linears {info['quantized_linear_layers']} layers: {_human(qb)} vs {_human(bf)} in bf16 "
                f"({100.0 * qb / max(bf, 1):.1f}%)\n"
            )
    else:
        w("  quantized    no (xlmrxl quantize SRC DST writes an int4 copy)\n")

    keys = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
    )
    shape = {k: info[k] for k in keys if info.get(k)} if all(info.get(k) for k in keys[:4]) else None
    w("".join(f"  int4 size    {line}\n" for line in memory_lines(shape)))
    w(f"  tokenizer    {'sentencepiece.bpe.model present' if info['tokenizer'] else 'none in this directory'}\n")


def _cmd_info(args) -> int:
    info = checkpoint_info(args.directory)
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        _print_info(info)
    return 0


_COMMANDS = {
    "fill-mask": cli_batch.cmd_fill_mask,
    "embed": cli_batch.cmd_embed,
    "classify": cli_batch.cmd_classify,
    "info": _cmd_info,
    "demo": _cmd_demo,
    "quantize": _cmd_quantize,
    "corpus": corpus_cli.main,
    "serve": serve_cli.main,
}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
