"""benchmarks/roofline.py matches hand arithmetic for XLM-RoBERTa-XL."""

from __future__ import annotations

import pytest

from benchmarks import roofline


def test_xl_gemm_flops_of_a_forward():
    T = 4096
    lengths = [512] * (T // 512)
    gemm = sum(
        c.flops for n, c in roofline.forward_ops(roofline.XL, lengths) if n not in ("attention",) and "norm" not in n
    )
    assert gemm == pytest.approx(2 * T * 36 * (4 * 2560**2 + 2 * 2560 * 10240), rel=1e-12)


def test_xl_attention_flops_count_real_tokens_only():
    cost = roofline.attention([100, 300], 32, 80)
    assert cost.flops == 4 * 2560 * (100**2 + 300**2)
    assert roofline.attention([100, 300], 32, 80, causal=True).flops == cost.flops / 2


def test_xl_encoder_weights_are_about_5_66_gb_in_bf16():
    assert roofline.encoder_weight_bytes(roofline.XL) / 1e9 == pytest.approx(5.66, abs=0.01)
    assert roofline.encoder_weight_bytes(roofline.XL, dtype_bytes=4) == 2 * roofline.encoder_weight_bytes(roofline.XL)


def test_floor_is_compute_or_memory_bound_and_pct_is_relative_to_it():
    peak = roofline.Peak(tflops=1000.0, gbs=3000.0)
    big = roofline.linear(8192, 2560, 10240)  # compute-bound
    small = roofline.linear(1, 2560, 10240)  # weight read dominates
    assert big.bound(peak) == "compute" and small.bound(peak) == "memory"
    assert big.floor_s(peak) == pytest.approx(2 * 8192 * 2560 * 10240 / 1e15)
    assert small.floor_s(peak) == pytest.approx(small.bytes / 3e12)
    ms = 2 * big.floor_s(peak) * 1e3
    assert roofline.pct_of_roofline(ms, big, peak) == pytest.approx(50.0)
    assert roofline.pct_of_roofline(ms, big, None) is None and roofline.pct_of_roofline(None, big, peak) is None


def test_int4_weight_bytes_are_a_quarter_of_bf16_plus_group_metadata():
    bf16 = roofline.linear(1, 2560, 10240, bias=False)
    int4 = roofline.int4_linear(1, 2560, 10240, bias=False)
    w_bf16 = 2560 * 10240 * 2
    assert int4.bytes - (bf16.bytes - w_bf16) == pytest.approx(2560 * 10240 / 2 + 2 * 20 * 10240 * 2)


def test_forward_floor_is_the_sum_of_op_floors():
    peak = roofline.Peak(800.0, 3000.0)
    lengths = [128]
    ops = roofline.forward_ops(roofline.XL, lengths)
    assert roofline.forward_floor_s(roofline.XL, lengths, peak) == pytest.approx(sum(c.floor_s(peak) for _, c in ops))
    whole = roofline.forward(roofline.XL, lengths).floor_s(peak)
    assert roofline.forward_floor_s(roofline.XL, lengths, peak) >= whole * (1 - 1e-12)
    assert roofline.decode_step(roofline.XL, 1, 511).bytes > roofline.encoder_weight_bytes(roofline.XL) * 0.99
