"""The compiled KV-cache ops (xlmrxl_kernels._C via xlmrxl_kernels.kv_cache) against their PyTorch references.

Caches start as fresh random values (the sentinel): after an op, written slots must equal the new K/V bit for bit
(a copy has no rounding) and every other slot must be unchanged.
"""

import importlib
import logging

import pytest
import torch

from xlmrxl_kernels import logs
from xlmrxl_kernels._utils import env_flag, refresh
from xlmrxl_kernels.reference.cache_update import cache_reorder_ref, cache_reset_ref, cache_update_ref

cu = importlib.import_module("xlmrxl_kernels.kv_cache")  # the module (xlmrxl_kernels.kv_cache is the function)

HAS_CUDA = torch.cuda.is_available()
REQUIRE = env_flag("XLMRXL_REQUIRE_EXT")
needs_ext = pytest.mark.skipif(
    not cu.cache_extension_available() and not REQUIRE,
    reason=f"compiled extension missing: {cu.cache_extension_unavailable_reason()}",
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _caches(B, H, L, D, dtype, device="cpu"):
    k = torch.randn(B, H, L, D, device=device).to(dtype)
    v = torch.randn(B, H, L, D, device=device).to(dtype)
    return k, v


def _naive_update(k_cache, v_cache, k_new, v_new, positions, lengths=None):
    """Oracle of the oracle: a Python loop over every written row."""
    k, v = k_cache.clone(), v_cache.clone()
    for b, p in enumerate(positions.tolist()):
        n = k_new.shape[2] if lengths is None else int(lengths[b])
        for t in range(n):
            k[b, :, p + t] = k_new[b, :, t]
            v[b, :, p + t] = v_new[b, :, t]
    return k, v


def _assert_equal(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape}/{got.dtype} vs {want.shape}"
    err = (got.float() - want.float()).abs().max().item() if got.numel() else 0.0
    assert torch.equal(got, want), f"{what}: max abs error {err}"


# -- cache_update ----------------------------------------------------------------------------------------------------
PATTERNS = {
    # name: (positions, lengths) for B = 3, T = 4, max_len = 13
    "left_padding": ([5, 5, 5], None),  # one shared start (pads written, masked by the attention mask)
    "ragged": ([0, 9, 4], None),  # per-sequence cache lengths; row 1 ends exactly at max_len
    "right_padding": ([2, 7, 0], [4, 1, 3]),  # per-row new lengths: trailing pads are not written
    "empty_row": ([12, 3, 13], [1, 4, 0]),  # a zero-length row may start at max_len
}


@pytest.mark.ext
@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_update_matches_reference(dtype, pattern, index_dtype):
    B, H, L, D, T = 3, 5, 13, 16, 4
    pos_list, len_list = PATTERNS[pattern]
    positions = torch.tensor(pos_list, dtype=index_dtype)
    lengths = None if len_list is None else torch.tensor(len_list, dtype=index_dtype)
    k_cache, v_cache = _caches(B, H, L, D, dtype)
    k_new, v_new = torch.randn(B, H, T, D).to(dtype), torch.randn(B, H, T, D).to(dtype)
    want_k, want_v = _naive_update(k_cache, v_cache, k_new, v_new, positions, lengths)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    cache_update_ref(ref_k, ref_v, k_new, v_new, positions, lengths)
    _assert_equal(ref_k, want_k, "reference K vs naive loop")
    _assert_equal(ref_v, want_v, "reference V vs naive loop")
    out = cu.cache_update(k_cache, v_cache, k_new, v_new, positions, lengths)
    assert out is None
    _assert_equal(k_cache, want_k, f"K {pattern} {dtype}")
    _assert_equal(v_cache, want_v, f"V {pattern} {dtype}")


def _layouts(B, H, T, D, dtype):
    """New K/V in the layouts a model produces: contiguous, (B, T, H, D) transposed, last dim strided."""
    base = torch.randn(B, T, H, D).to(dtype)
    yield "contiguous", base.transpose(1, 2).contiguous()
    yield "bthd_transposed", base.transpose(1, 2)
    yield "last_dim_strided", torch.randn(B, H, D, T).to(dtype).transpose(2, 3)
    yield "sliced_head_dim", torch.randn(B, H, T, D + 3).to(dtype)[..., 1 : D + 1]


@pytest.mark.ext
@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cache_layout", ["contiguous", "blhd_transposed", "slice_of_larger"])
def test_update_non_contiguous(dtype, cache_layout):
    B, H, L, D, T = 2, 3, 9, 80, 3  # D = 80: the XL head dim
    if cache_layout == "contiguous":
        k_cache, v_cache = _caches(B, H, L, D, dtype)
    elif cache_layout == "blhd_transposed":
        k_cache = torch.randn(B, L, H, D).to(dtype).transpose(1, 2)
        v_cache = torch.randn(B, L, H, D).to(dtype).transpose(1, 2)
    else:
        k_cache = torch.randn(B + 1, H, L + 4, D).to(dtype)[1:, :, 2 : L + 2]
        v_cache = torch.randn(B + 1, H, L + 4, D).to(dtype)[1:, :, 2 : L + 2]
    positions = torch.tensor([6, 1])
    for name, k_new in _layouts(B, H, T, D, dtype):
        v_new = k_new.flip(0)  # another view, another stride pattern
        want_k, want_v = _naive_update(k_cache, v_cache, k_new, v_new, positions)
        cu.cache_update(k_cache, v_cache, k_new, v_new, positions)
        _assert_equal(k_cache, want_k, f"K cache {cache_layout}, new {name}")
        _assert_equal(v_cache, want_v, f"V cache {cache_layout}, new {name}")


@pytest.mark.ext
@needs_ext
def test_update_parallel_many_rows_and_expanded_positions():
    """Enough (batch, head) pairs to split across threads; positions given as an expanded (stride 0) scalar."""
    B, H, L, D, T = 4, 8, 50, 80, 37
    k_cache, v_cache = _caches(B, H, L, D, torch.bfloat16)
    k_new, v_new = torch.randn(B, H, T, D).to(torch.bfloat16), torch.randn(B, H, T, D).to(torch.bfloat16)
    positions = torch.tensor([13]).expand(B)
    want_k, want_v = _naive_update(k_cache, v_cache, k_new, v_new, positions)
    cu.cache_update(k_cache, v_cache, k_new, v_new, positions)
    _assert_equal(k_cache, want_k, "K")
    _assert_equal(v_cache, want_v, "V")


@pytest.mark.ext
@needs_ext
def test_extension_available_and_parallel():
    assert cu.cache_extension_available()
    assert cu.cache_extension_unavailable_reason() is None
    assert cu._C.with_openmp(), "built without OpenMP: the CPU op would run on one thread"


# -- argument checks: the C++ messages -------------------------------------------------------------------------------
def _args(dtype=torch.float32):
    k_cache, v_cache = _caches(2, 3, 8, 4, dtype)
    return dict(
        k_cache=k_cache,
        v_cache=v_cache,
        k_new=torch.randn(2, 3, 2, 4).to(dtype),
        v_new=torch.randn(2, 3, 2, 4).to(dtype),
        positions=torch.tensor([0, 3]),
    )


BAD_CALLS = {
    "k_new_rank": (
        lambda a: a.update(k_new=a["k_new"][0], v_new=a["v_new"][0]),
        ValueError,
        "k_new must have 4 dims (B, H, T, D), got 3",
    ),
    "k_cache_rank": (
        lambda a: a.update(k_cache=a["k_cache"][0], v_cache=a["v_cache"][0]),
        ValueError,
        "k_cache must have 4 dims (B, H, max_len, D), got 3",
    ),
    "v_new_shape": (
        lambda a: a.update(v_new=a["v_new"][:, :, :1]),
        ValueError,
        "v_new must have the shape of k_new [2, 3, 2, 4], got [2, 3, 1, 4]",
    ),
    "k_new_heads": (
        lambda a: a.update(k_new=a["k_new"][:, :2], v_new=a["v_new"][:, :2]),
        ValueError,
        "k_new must have shape (B, H, T, D) = (2, 3, T, 4) to match k_cache [2, 3, 8, 4], got [2, 2, 2, 4]",
    ),
    "positions_dtype": (
        lambda a: a.update(positions=a["positions"].float()),
        TypeError,
        "positions must be int32 or int64 on cpu, got float32 on cpu",
    ),
    "positions_device": (
        lambda a: a.update(positions=torch.empty(2, dtype=torch.long, device="meta")),
        ValueError,
        "positions must be int32 or int64 on cpu, got int64 on meta",
    ),
    "positions_shape": (
        lambda a: a.update(positions=a["positions"][:, None]),
        ValueError,
        "positions must have shape (B,) = (2,), got [2, 1]",
    ),
    "k_new_dtype": (
        lambda a: a.update(k_new=a["k_new"].half()),
        TypeError,
        "k_new must have the dtype of k_cache (float32), got float16",
    ),
    "cache_dtype": (
        lambda a: a.update(k_cache=a["k_cache"].double(), v_cache=a["v_cache"].double()),
        TypeError,
        "k_cache must be float32, float16 or bfloat16, got float64",
    ),
    "v_new_device": (
        lambda a: a.update(v_new=torch.empty(2, 3, 2, 4, device="meta")),
        ValueError,
        "v_new must be on the device of k_cache (cpu), got meta",
    ),
    "overflow": (
        lambda a: a.update(positions=torch.tensor([0, 7])),
        ValueError,
        "positions[1] + T = 7 + 2 = 9 exceeds max_len = 8 of k_cache",
    ),
    "negative": (lambda a: a.update(positions=torch.tensor([-1, 0])), ValueError, "positions[0] = -1 must be >= 0"),
    "expanded_cache": (
        lambda a: a.update(k_cache=torch.randn(1, 3, 8, 4).expand(2, 3, 8, 4)),
        ValueError,
        "k_cache has internally overlapping memory",
    ),
    "same_buffer": (lambda a: a.update(v_cache=a["k_cache"]), ValueError, "k_cache and v_cache share memory"),
}


@pytest.mark.ext
@needs_ext
@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_update_errors(case):
    mutate, exc, message = BAD_CALLS[case]
    a = _args()
    mutate(a)
    before = a["k_cache"].clone()
    with pytest.raises(exc) as info:
        cu.cache_update(**a)
    assert message in str(info.value), f"{case}: got {str(info.value)!r}"
    if a["k_cache"].shape == before.shape and a["k_cache"].dtype == before.dtype:
        assert torch.equal(a["k_cache"], before), f"{case}: a failed call wrote to the cache"


@pytest.mark.ext
@needs_ext
def test_update_lengths_errors():
    a = _args()
    with pytest.raises(ValueError, match=r"lengths\[0\] = 3 must be in \[0, T = 2\]"):
        cu.cache_update(**a, lengths=torch.tensor([3, 1]))
    with pytest.raises(ValueError, match=r"positions\[1\] \+ lengths\[1\] = 7 \+ 2 = 9 exceeds max_len = 8"):
        cu.cache_update(**{**a, "positions": torch.tensor([0, 7])}, lengths=torch.tensor([1, 2]))
    cu.cache_update(**{**a, "positions": torch.tensor([0, 7])}, lengths=torch.tensor([1, 1]))  # fits: no error


def test_reference_raises_the_same_kinds():
    """The fallback raises the same exception types on the same mistakes (messages are close, not identical)."""
    for case in ("k_new_rank", "positions_dtype", "k_new_dtype", "overflow", "negative", "positions_shape"):
        mutate, exc, _ = BAD_CALLS[case]
        a = _args()
        mutate(a)
        with pytest.raises(exc):
            cache_update_ref(**a)


# -- reorder / reset -------------------------------------------------------------------------------------------------
@pytest.mark.ext
@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", [None, 5, 0])
def test_reorder(dtype, length):
    B, H, L, D = 4, 3, 7, 80
    k_cache, v_cache = _caches(B, H, L, D, dtype)
    beam_idx = torch.tensor([2, 2, 0, 3])  # repeats and a cycle: in-place moves must not read overwritten rows
    n = L if length is None else length
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want_k[:, :, :n] = k_cache[beam_idx, :, :n]
    want_v[:, :, :n] = v_cache[beam_idx, :, :n]
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    cache_reorder_ref(ref_k, ref_v, beam_idx, length)
    _assert_equal(ref_k, want_k, "reference reorder K")
    assert cu.cache_reorder(k_cache, v_cache, beam_idx.int(), length) is None
    _assert_equal(k_cache, want_k, "reorder K")
    _assert_equal(v_cache, want_v, "reorder V")


@pytest.mark.ext
@needs_ext
def test_reorder_errors():
    k_cache, v_cache = _caches(3, 2, 5, 4, torch.float32)
    with pytest.raises(ValueError, match=r"beam_idx\[1\] = 3 is out of range \[0, 3\)"):
        cu.cache_reorder(k_cache, v_cache, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match=r"beam_idx must have shape \(B,\) = \(3,\), got \[2\]"):
        cu.cache_reorder(k_cache, v_cache, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="beam_idx must be int32 or int64 on cpu, got float32 on cpu"):
        cu.cache_reorder(k_cache, v_cache, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"length must be in \[0, max_len = 5\], got 6"):
        cu.cache_reorder(k_cache, v_cache, torch.tensor([0, 1, 2]), 6)


@pytest.mark.ext
@needs_ext
@pytest.mark.parametrize("start", [0, 3, 6])
def test_reset(start):
    k_cache, v_cache = _caches(2, 3, 6, 16, torch.bfloat16)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    cache_reset_ref(want_k, want_v, start)
    assert torch.count_nonzero(want_k[:, :, start:]) == 0
    assert cu.cache_reset(k_cache, v_cache, start) is None
    _assert_equal(k_cache, want_k, f"reset K from {start}")
    _assert_equal(v_cache, want_v, f"reset V from {start}")
    with pytest.raises(ValueError, match=r"start must be in \[0, max_len = 6\], got 7"):
        cu.cache_reset(k_cache, v_cache, 7)


# -- the fallback when _C is missing -----------------------------------------------------------------------------------
def test_missing_extension_falls_back_with_one_logged_reason(monkeypatch, caplog):
    monkeypatch.delenv("XLMRXL_REQUIRE_EXT", raising=False)
    mod, reason = cu._load("xlmrxl_kernels._C_does_not_exist")
    assert mod is None and "xlmrxl_kernels._C_does_not_exist is not available" in reason
    monkeypatch.setattr(cu, "_C", None)
    monkeypatch.setattr(cu, "_REASON", reason)
    monkeypatch.setattr(logs, "_LOGGED", set())
    B, H, L, D, T = 2, 2, 6, 8, 2
    k_cache, v_cache = _caches(B, H, L, D, torch.float32)
    k_new, v_new = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    want_k, want_v = _naive_update(k_cache, v_cache, k_new, v_new, torch.tensor([1, 4]))
    with caplog.at_level(logging.INFO, logger="xlmrxl_kernels"):
        cu.cache_update(k_cache, v_cache, k_new, v_new, torch.tensor([1, 4]))
        cu.cache_update(k_cache.clone(), v_cache.clone(), k_new, v_new, torch.tensor([0, 0]))
        cu.cache_reset(k_cache.clone(), v_cache.clone(), 2)
    _assert_equal(k_cache, want_k, "fallback K")
    _assert_equal(v_cache, want_v, "fallback V")
    lines = [r.getMessage() for r in caplog.records if "PyTorch reference" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "pip install -e . --no-build-isolation" in lines[0]
    assert not cu.cache_extension_available()


def test_require_ext_makes_absence_an_import_error(monkeypatch):
    monkeypatch.setenv("XLMRXL_REQUIRE_EXT", "1")
    refresh()
    try:
        with pytest.raises(ImportError, match="XLMRXL_REQUIRE_EXT=1 but the C\\+\\+ extension"):
            cu._load("xlmrxl_kernels._C_does_not_exist")
    finally:
        monkeypatch.undo()
        refresh()


# -- the CUDA kernel's own code, emulated on the host (runs everywhere) ------------------------------------------------
def _emu_layouts(B, H, L, T, D, dtype):
    caches = {
        "contiguous": lambda: torch.randn(B, H, L, D).to(dtype),
        "blhd_transposed": lambda: torch.randn(B, L, H, D).to(dtype).transpose(1, 2),
        "slice_of_larger": lambda: torch.randn(B + 1, H, L + 3, D).to(dtype)[1:, :, 1 : L + 1],
    }
    news = {
        "bthd_transposed": lambda: torch.randn(B, T, H, D).to(dtype).transpose(1, 2),
        "last_dim_strided": lambda: torch.randn(B, H, D, T).to(dtype).transpose(2, 3),
        "odd_offset": lambda: torch.randn(B, H, T, D + 1).to(dtype)[..., 1:],  # base not 16-byte aligned
    }
    return caches, news


@pytest.mark.ext
@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [80, 128, 12, 7])
@pytest.mark.parametrize("max_grid", [65535, 2, 1], ids=["grid_full", "grid_2", "grid_1"])
def test_cuda_kernel_emulated_on_host(dtype, D, max_grid):
    """The CUDA kernel's body (csrc/cache_update_kernel.h) run over its launch grid on the host: every layout, copy
    unit, ragged lengths, and grid-stride loops (max_grid 1-2 forces several rows per block / batch per block)."""
    B, H, L, T = 3, 5, 11, 4
    caches, news = _emu_layouts(B, H, L, T, D, dtype)
    positions = torch.tensor([0, 7, 3], dtype=torch.int32)
    for cname, make_cache in caches.items():
        for nname, make_new in news.items():
            for lengths in (None, torch.tensor([4, 4, 2])):
                k_cache, v_cache = make_cache(), make_cache()
                k_new, v_new = make_new(), make_new()
                want_k, want_v = _naive_update(k_cache, v_cache, k_new, v_new, positions, lengths)
                plan = cu._C._emulate_cuda_update(k_cache, v_cache, k_new, v_new, positions, lengths, max_grid)
                what = f"{cname}/{nname}/{dtype}/D={D}/lengths={lengths is not None}/plan={plan}"
                _assert_equal(k_cache, want_k, f"emulated CUDA K {what}")
                _assert_equal(v_cache, want_v, f"emulated CUDA V {what}")
                unit, bx, by, gx, gy = plan
                assert bx * by <= 256 and gx <= max_grid and gy <= max_grid, what
                elem = k_cache.element_size()
                if nname == "last_dim_strided" or nname == "odd_offset":
                    assert unit == elem, f"{what}: misaligned or strided rows must use element copies"
                elif cname != "slice_of_larger" and (D * elem) % 16 == 0:
                    assert unit == 16, f"{what}: aligned rows must use 16-byte copies"


@pytest.mark.ext
@needs_ext
def test_cuda_kernel_emulated_skips_out_of_range_tokens():
    """On the device nothing that would need a sync is checked: tokens outside [0, max_len) are dropped."""
    k_cache, v_cache = _caches(2, 3, 11, 16, torch.float16)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    k_new, v_new = torch.randn(2, 3, 4, 16).half(), torch.randn(2, 3, 4, 16).half()
    cu._C._emulate_cuda_update(k_cache, v_cache, k_new, v_new, torch.tensor([9, -2]))
    _assert_equal(k_cache[0, :, 9:], k_new[0, :, :2], "row 0: tokens 0-1 land in slots 9-10")
    _assert_equal(v_cache[1, :, :2], v_new[1, :, 2:], "row 1: tokens 2-3 land in slots 0-1")
    _assert_equal(k_cache[0, :, :9], before_k[0, :, :9], "row 0: other slots untouched")
    _assert_equal(v_cache[1, :, 2:], before_v[1, :, 2:], "row 1: other slots untouched")
    with pytest.raises(TypeError, match="positions must be int32 or int64 on cpu, got float32 on cpu"):
        cu._C._emulate_cuda_update(k_cache, v_cache, k_new, v_new, torch.tensor([0.0, 1.0]))


# -- CUDA (skipped without a GPU) --------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [80, 128, 12])
def test_cuda_update_matches_reference(dtype, D):
    if not cu._C or not cu._C.with_cuda():
        pytest.fail("the extension was built without CUDA on a CUDA machine") if REQUIRE else pytest.skip("no CUDA op")
    B, H, L, T = 3, 32, 600, 37
    for cache_layout in ("contiguous", "blhd_transposed"):
        if cache_layout == "contiguous":
            k_cache, v_cache = _caches(B, H, L, D, dtype, "cuda")
        else:
            k_cache = torch.randn(B, L, H, D, device="cuda").to(dtype).transpose(1, 2)
            v_cache = torch.randn(B, L, H, D, device="cuda").to(dtype).transpose(1, 2)
        for name, k_new in _layouts(B, H, T, D, dtype):
            k_new = k_new.cuda()
            v_new = torch.randn_like(k_new)
            positions = torch.tensor([0, 511, 200], device="cuda", dtype=torch.int32)
            lengths = torch.tensor([37, 20, 0], device="cuda")
            for lens in (None, lengths):
                ref_k, ref_v = k_cache.clone(), v_cache.clone()
                cache_update_ref(ref_k, ref_v, k_new, v_new, positions, lens)
                cu.cache_update(k_cache, v_cache, k_new, v_new, positions, lens)
                _assert_equal(k_cache, ref_k, f"CUDA K {cache_layout} {name} {dtype} D={D}")
                _assert_equal(v_cache, ref_v, f"CUDA V {cache_layout} {name} {dtype} D={D}")


@pytest.mark.gpu
@pytest.mark.ext
def test_cuda_graph_capture_reads_positions_on_device():
    if not cu._C or not cu._C.with_cuda():
        pytest.skip("no CUDA op")
    B, H, L, D = 2, 4, 16, 80
    k_cache, v_cache = _caches(B, H, L, D, torch.bfloat16, "cuda")
    k_new = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16)
    v_new = torch.randn_like(k_new)
    positions = torch.zeros(B, dtype=torch.long, device="cuda")
    cu.cache_update(k_cache, v_cache, k_new, v_new, positions)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cu.cache_update(k_cache, v_cache, k_new, v_new, positions)
    for step in range(3, 6):
        positions.copy_(torch.tensor([step, step + 7]))
        k_new.normal_()
        v_new.normal_()
        graph.replay()
        torch.cuda.synchronize()
        _assert_equal(k_cache[0, :, step], k_new[0, :, 0], f"graph replay K step {step}")
        _assert_equal(v_cache[1, :, step + 7], v_new[1, :, 0], f"graph replay V step {step}")


@pytest.mark.gpu
@pytest.mark.ext
def test_cuda_out_of_range_rows_are_skipped():
    if not cu._C or not cu._C.with_cuda():
        pytest.skip("no CUDA op")
    k_cache, v_cache = _caches(2, 2, 8, 16, torch.float16, "cuda")
    before_k = k_cache.clone()
    k_new, v_new = torch.randn(2, 2, 3, 16, device="cuda").half(), torch.randn(2, 2, 3, 16, device="cuda").half()
    cu.cache_update(k_cache, v_cache, k_new, v_new, torch.tensor([6, -5], device="cuda"))
    torch.cuda.synchronize()
    _assert_equal(k_cache[0, :, 6:], k_new[0, :, :2], "in-range part written")
    _assert_equal(k_cache[1], before_k[1], "a negative start writes nothing")
