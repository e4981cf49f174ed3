"""FLOPs and bytes of each measured op and of a whole forward, and the time floor they imply on a given device.

    python -m benchmarks.roofline [--model xl|xxl] [--tokens T | --lengths L1 L2 ...] [--peaks probe.json]

A ``Cost`` is the arithmetic (FLOPs) and the memory traffic (bytes read + written, each tensor once) an op cannot
avoid. With a device's measured peaks (bf16 dense GEMM TFLOP/s and copy GB/s, from ``benchmarks.probe`` in the same
run: never datasheet numbers) its floor is ``max(flops / peak_flops, bytes / peak_bandwidth)``, and
``pct_of_roofline(ms, cost, peak)`` says how close a measured time is to that floor (100 % = at the hardware limit).

What is counted:
- GEMMs: 2 x M x K x N FLOPs; bytes = activations in and out, the weight, the bias, a residual read.
- Attention: QK^T and PV on real tokens only (4 x sum(L^2) x hidden FLOPs per layer; causal halves it); bytes = Q, K,
  V read and the output written (scores stay on chip in a fused kernel).
- Decode attention: one query per sequence against its cached keys and values (bytes: the K/V cache read).
- add + LayerNorm, int4 dequant-matmul (packed weights, scales and zeros), KV-cache update: their own formulas below.
- A forward is the sum of its ops; its floor is the sum of the ops' floors (each op is bound by its own limit).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

XL = {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32, "intermediate_size": 10240}
XXL = {"hidden_size": 4096, "num_hidden_layers": 48, "num_attention_heads": 32, "intermediate_size": 16384}
MODELS = {"xl": XL, "xxl": XXL}


@dataclass(frozen=True)
class Peak:
    """A device's measured limits: dense bf16 GEMM TFLOP/s and copy bandwidth in GB/s (read + write)."""

    tflops: float
    gbs: float


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes moved by one op (or a sum of ops)."""

    flops: float
    bytes: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, k: float) -> Cost:
        return Cost(self.flops * k, self.bytes * k)

    __rmul__ = __mul__

    def floor_s(self, peak: Peak) -> float:
        """The least time this op can take on a device with ``peak`` (compute-bound or memory-bound)."""
        return max(self.flops / (peak.tflops * 1e12), self.bytes / (peak.gbs * 1e9))

    def bound(self, peak: Peak) -> str:
        return "compute" if self.flops / (peak.tflops * 1e12) >= self.bytes / (peak.gbs * 1e9) else "memory"


def pct_of_roofline(ms: float | None, cost: Cost | float | None, peak: Peak | None) -> float | None:
    """100 x floor / measured time; ``cost`` is a Cost or an already computed floor in seconds. None if unknown."""
    if ms is None or cost is None or ms <= 0:
        return None
    if isinstance(cost, Cost):
        if peak is None:
            return None
        floor = cost.floor_s(peak)
    else:
        floor = float(cost)
    return 100.0 * floor / (ms * 1e-3)


def linear(M: int, K: int, N: int, *, dtype_bytes: int = 2, bias: bool = True, residual: bool = False) -> Cost:
    """``y = x @ w.T (+ b) (+ r)``: x [M, K], w [N, K], y [M, N]."""
    elems = M * K + N * K + M * N + (N if bias else 0) + (M * N if residual else 0)
    return Cost(2.0 * M * K * N, float(elems * dtype_bytes))


def int4_linear(
    M: int, K: int, N: int, *, group: int = 128, dtype_bytes: int = 2, bias: bool = True, residual: bool = False
) -> Cost:
    """int4 weight-only matmul: packed weight K x N / 2 bytes, one scale and one zero per group, x in, y out."""
    weight = K * N / 2 + 2 * (K / group) * N * dtype_bytes
    act = (M * K + M * N + (N if bias else 0) + (M * N if residual else 0)) * dtype_bytes
    return Cost(2.0 * M * K * N, float(weight + act))


def attention(lengths: list[int], heads: int, head_dim: int, *, causal: bool = False, dtype_bytes: int = 2) -> Cost:
    """Prefill attention over sequences of the given real lengths (no padding is counted)."""
    width = heads * head_dim
    flops = 4.0 * width * sum(L * L for L in lengths) * (0.5 if causal else 1.0)
    tokens = sum(lengths)
    return Cost(flops, float(4 * tokens * width * dtype_bytes))  # Q, K, V read, O written


def decode_attention(batch: int, context: int, heads: int, head_dim: int, *, dtype_bytes: int = 2) -> Cost:
    """One new query per sequence against ``context`` cached keys and values."""
    width = heads * head_dim
    return Cost(4.0 * batch * context * width, float((2 * batch * context + 2 * batch) * width * dtype_bytes))


def add_layernorm(rows: int, width: int, *, residual: bool = True, dtype_bytes: int = 2) -> Cost:
    """``h = x + r; y = LayerNorm(h)``: reads x (and r), writes y (and h), plus the weight and bias."""
    elems = rows * width * (4 if residual else 2) + 2 * width
    return Cost(8.0 * rows * width, float(elems * dtype_bytes))


def cache_update(tokens: int, heads: int, head_dim: int, *, dtype_bytes: int = 2) -> Cost:
    """Writing new keys and values into a KV cache: both read once and written once."""
    return Cost(0.0, float(4 * tokens * heads * head_dim * dtype_bytes))


def encoder_weight_bytes(cfg: dict, *, dtype_bytes: int = 2) -> float:
    """Bytes of the encoder layers' weights (embeddings excluded): 4 H^2 + 2 H I matrices, biases, LayerNorms."""
    H, I, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    per_layer = 4 * H * H + 2 * H * I + 4 * H + I + H + 4 * H
    return float(layers * per_layer * dtype_bytes)


def forward_ops(cfg: dict, lengths: list[int], *, dtype_bytes: int = 2, int4: bool = False) -> list[tuple[str, Cost]]:
    """The ops of one encoder forward over sequences of these real lengths (padding-free), layers included."""
    H, I, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    T = sum(lengths)
    lin = int4_linear if int4 else linear
    ops = [
        ("layernorm_attn", add_layernorm(T, H, residual=False, dtype_bytes=dtype_bytes)),
        ("qkv", lin(T, H, 3 * H, dtype_bytes=dtype_bytes)),
        ("attention", attention(lengths, heads, H // heads, dtype_bytes=dtype_bytes)),
        ("attn_out+residual", lin(T, H, H, dtype_bytes=dtype_bytes, residual=True)),
        ("add_layernorm_ffn", add_layernorm(T, H, residual=False, dtype_bytes=dtype_bytes)),
        ("ffn_up+gelu", lin(T, H, I, dtype_bytes=dtype_bytes)),
        ("ffn_down+residual", lin(T, I, H, dtype_bytes=dtype_bytes, residual=True)),
    ]
    return [(name, cost * layers) for name, cost in ops]


def forward(cfg: dict, lengths: list[int], **kw) -> Cost:
    total = Cost(0.0, 0.0)
    for _, cost in forward_ops(cfg, lengths, **kw):
        total = total + cost
    return total


def forward_floor_s(cfg: dict, lengths: list[int], peak: Peak, **kw) -> float:
    """The least time of a forward: each op at its own limit (a sum of floors, not the floor of a sum)."""
    return sum(cost.floor_s(peak) for _, cost in forward_ops(cfg, lengths, **kw))


def decode_step(cfg: dict, batch: int, context: int, *, dtype_bytes: int = 2) -> Cost:
    """One decoding step of ``batch`` sequences with ``context`` cached tokens: every weight read once."""
    H, I, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    per_layer = (
        linear(batch, H, 3 * H, dtype_bytes=dtype_bytes)
        + decode_attention(batch, context, heads, H // heads, dtype_bytes=dtype_bytes)
        + cache_update(batch, heads, H // heads, dtype_bytes=dtype_bytes)
        + linear(batch, H, H, dtype_bytes=dtype_bytes, residual=True)
        + linear(batch, H, I, dtype_bytes=dtype_bytes)
        + linear(batch, I, H, dtype_bytes=dtype_bytes, residual=True)
        + add_layernorm(batch, H, dtype_bytes=dtype_bytes) * 2
    )
    return per_layer * layers


def read_peaks(path: str | Path) -> Peak:
    data = json.loads(Path(path).read_text())
    return Peak(float(data["bf16_tflops"]), float(data["copy_gbs"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(MODELS), default="xl")
    p.add_argument("--tokens", type=int, default=16384, help="one sequence batch of this many tokens (512 each)")
    p.add_argument("--lengths", type=int, nargs="*", default=None, help="real sequence lengths instead of --tokens")
    p.add_argument("--peaks", default=None, help="probe.json from benchmarks.probe (default: H100-like 700/2800)")
    args = p.parse_args(argv)
    cfg = MODELS[args.model]
    lengths = args.lengths or [512] * (args.tokens // 512) + ([args.tokens % 512] if args.tokens % 512 else [])
    peak = read_peaks(args.peaks) if args.peaks else Peak(700.0, 2800.0)
    print(f"{args.model}: {sum(lengths)} tokens in {len(lengths)} sequences")
    print(f"peaks {peak.tflops} TFLOP/s, {peak.gbs} GB/s")
    print("| op | GFLOP | MB | bound | floor ms |")
    print("|---|---|---|---|---|")
    for name, cost in forward_ops(cfg, lengths):
        print(f"| {name} | {cost.flops / 1e9:.1f} | {cost.bytes / 1e6:.1f} | {cost.bound(peak)} | "
              f"{cost.floor_s(peak) * 1e3:.3f} |")  # fmt: skip
    total = forward(cfg, lengths)
    print(f"forward: {total.flops / 1e12:.2f} TFLOP, {total.bytes / 1e9:.2f} GB, "
          f"floor {forward_floor_s(cfg, lengths, peak) * 1e3:.2f} ms; "
          f"encoder weights {encoder_weight_bytes(cfg) / 1e9:.2f} GB (bf16)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
