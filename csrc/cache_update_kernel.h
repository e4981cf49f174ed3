// The CUDA cache_update kernel's body and launch plan, written once for the device and for a host emulation.
//
// csrc/cache_update_cuda.cu launches `update_thread` from a __global__ wrapper. csrc/cache_update.cpp runs the same
// function over the same grid on the host (`_C._emulate_cuda_update`), so the CPU test suite checks the CUDA
// kernel's indexing, copy-unit choice, skipping rules and grid-stride loops on machines without a GPU.
//
// Grid: z = 0 (K) / 1 (V); y = batch row b (grid-stride); x = blocks of (head, token) rows. A block is
// (bx lanes along D) x (by rows): bx covers one D-row in copy units, so consecutive rows of a contiguous cache are
// consecutive addresses and a warp's accesses coalesce even when a D-row is only 10 units (XL, bf16: 80 x 2 B / 16 B).
// The copy unit is the widest of 16 / 8 / 4 / 2 bytes that divides every base address, every outer stride and the
// D-row (16-byte vector loads and stores whenever the tensors allow it); element copies for strided last dims.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define XLMRXL_HD __host__ __device__ __forceinline__
#else
#define XLMRXL_HD inline
#endif

namespace xlmrxl {
namespace kern {

struct Strides {
  int64_t s0, s1, s2, s3;  // bytes; s3 = bytes between consecutive copy units of a D-row
};

struct Params {
  char* cache[2];  // K, V
  const char* src[2];
  Strides cs[2], ss[2];
  const void* positions;
  const void* lengths;  // nullptr: every sequence writes T tokens
  int64_t pos_stride, len_stride;
  int64_t B;
  int32_t H, T, L, units;
  bool pos_is64, len_is64;
};

// A tensor as the planner sees it: address and strides in elements.
struct Desc {
  uintptr_t addr;
  int64_t stride[4];
};

struct Plan {
  int64_t unit;           // bytes per copy unit: 16, 8, 4 or 2
  bool inner_contiguous;  // every last-dim stride is 1: units are consecutive bytes
  int bx, by;             // block shape
  int64_t gx, gy;         // grid (z = 2)
};

// Widest copy unit valid for all four tensors, and the launch shape. max_grid is 65535 on the device (the y limit,
// applied to x as well); the host emulation passes small values to exercise the grid-stride loops.
inline Plan make_plan(const Desc d[4], int64_t B, int64_t H, int64_t T, int64_t D, int64_t elem,
                      int64_t max_grid = 65535) {
  bool inner = true;
  for (int i = 0; i < 4; ++i) inner = inner && d[i].stride[3] == 1;
  int64_t unit = elem;
  if (inner) {
    for (int64_t u : {int64_t{16}, int64_t{8}, int64_t{4}}) {
      if (u <= elem || (D * elem) % u != 0) continue;
      bool ok = true;
      for (int i = 0; i < 4; ++i)
        ok = ok && d[i].addr % u == 0 && (d[i].stride[0] * elem) % u == 0 && (d[i].stride[1] * elem) % u == 0 &&
             (d[i].stride[2] * elem) % u == 0;
      if (ok) {
        unit = u;
        break;
      }
    }
  }
  Plan p;
  p.unit = unit;
  p.inner_contiguous = inner;
  const int64_t units = D * elem / unit;
  p.bx = static_cast<int>(std::min<int64_t>(units, 256));
  p.by = std::max(1, 256 / p.bx);
  const int64_t rows = H * T;
  p.gx = std::max<int64_t>(1, std::min<int64_t>((rows + p.by - 1) / p.by, max_grid));
  p.gy = std::max<int64_t>(1, std::min<int64_t>(B, max_grid));
  return p;
}

inline Strides strides_of(const Desc& d, int64_t elem, const Plan& plan) {
  return {d.stride[0] * elem, d.stride[1] * elem, d.stride[2] * elem,
          plan.inner_contiguous ? plan.unit : d.stride[3] * elem};
}

XLMRXL_HD int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(p)[i] : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

// What one thread (tx, ty) of block (bx, by, kv) copies. Positions and lengths are read here, on the device: no host
// sync, safe inside CUDA-graph capture. A token whose slot falls outside [0, max_len) is skipped.
template <typename unit_t>
XLMRXL_HD void update_thread(const Params& p, int kv, int64_t block_y, int64_t grid_y, int64_t block_x, int64_t grid_x,
                             int tx, int ty, int block_dim_x, int block_dim_y) {
  char* const cache = p.cache[kv];
  const char* const src = p.src[kv];
  const Strides cs = p.cs[kv], ss = p.ss[kv];
  const int32_t rows = p.H * p.T;
  for (int64_t b = block_y; b < p.B; b += grid_y) {
    const int64_t pos = load_index(p.positions, p.pos_is64, b * p.pos_stride);
    const int64_t n = p.lengths ? load_index(p.lengths, p.len_is64, b * p.len_stride) : p.T;
    for (int64_t r = block_x * block_dim_y + ty; r < rows; r += grid_x * block_dim_y) {
      const int32_t h = static_cast<int32_t>(r) / p.T, t = static_cast<int32_t>(r) - h * p.T;
      const int64_t slot = pos + t;
      if (t >= n || slot < 0 || slot >= p.L) continue;  // padding, or outside the cache: not written
      char* d = cache + b * cs.s0 + h * cs.s1 + slot * cs.s2;
      const char* s = src + b * ss.s0 + h * ss.s1 + static_cast<int64_t>(t) * ss.s2;
      for (int32_t u = tx; u < p.units; u += block_dim_x)
        *reinterpret_cast<unit_t*>(d + u * cs.s3) = *reinterpret_cast<const unit_t*>(s + u * ss.s3);
    }
  }
}

// Host stand-ins for CUDA's vector types (same size and alignment), for the emulation.
struct alignas(16) HostVec16 {
  uint32_t x[4];
};
struct alignas(8) HostVec8 {
  uint32_t x[2];
};

}  // namespace kern
}  // namespace xlmrxl
