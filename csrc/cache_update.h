// KV-cache ops of xlmrxl_kernels._C: declarations shared by the CPU (.cpp) and CUDA (.cu) sources.
//
// Layout: caches (B, H, max_len, D), new keys/values (B, H, T, D), any strides. Positions are per-sequence start
// offsets (B,) of int32/int64 on the cache's device; lengths (optional, B,) say how many of the T new tokens of
// each sequence to write (the rest are padding and are not written).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "cache_update_kernel.h"

namespace xlmrxl {

// Byte geometry of one cache_update call, filled by the argument checks and read by the device kernels.
struct UpdateGeometry {
  int64_t B, H, T, L, D;
  int64_t elem;  // bytes per element
};

inline kern::Desc desc_of(const at::Tensor& t) {
  return {reinterpret_cast<uintptr_t>(t.data_ptr()), {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}};
}

// The kernel's launch plan and arguments for one (already checked) call; shared by the CUDA launch and the host
// emulation. max_grid: the grid cap (65535 on the device; small in the emulation tests).
inline kern::Params make_params(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new,
                                const at::Tensor& v_new, const at::Tensor& positions,
                                const std::optional<at::Tensor>& lengths, const UpdateGeometry& g, kern::Plan* plan,
                                int64_t max_grid = 65535) {
  const kern::Desc d[4] = {desc_of(k_cache), desc_of(v_cache), desc_of(k_new), desc_of(v_new)};
  *plan = kern::make_plan(d, g.B, g.H, g.T, g.D, g.elem, max_grid);
  kern::Params p;
  p.cache[0] = static_cast<char*>(k_cache.data_ptr());
  p.cache[1] = static_cast<char*>(v_cache.data_ptr());
  p.src[0] = static_cast<const char*>(k_new.data_ptr());
  p.src[1] = static_cast<const char*>(v_new.data_ptr());
  for (int i = 0; i < 2; ++i) {
    p.cs[i] = kern::strides_of(d[i], g.elem, *plan);
    p.ss[i] = kern::strides_of(d[2 + i], g.elem, *plan);
  }
  p.positions = positions.data_ptr();
  p.pos_stride = positions.stride(0);
  p.pos_is64 = positions.scalar_type() == at::kLong;
  p.lengths = lengths.has_value() ? lengths->data_ptr() : nullptr;
  p.len_stride = lengths.has_value() ? lengths->stride(0) : 0;
  p.len_is64 = lengths.has_value() && lengths->scalar_type() == at::kLong;
  p.B = g.B;
  p.H = static_cast<int32_t>(g.H);
  p.T = static_cast<int32_t>(g.T);
  p.L = static_cast<int32_t>(g.L);
  p.units = static_cast<int32_t>(g.D * g.elem / plan->unit);
  return p;
}

#ifdef XLMRXL_WITH_CUDA
// Launches one kernel for K and V on the current stream; no host synchronisation. Rows whose destination falls
// outside [0, max_len) are skipped on the device (the bounds are not reported: that would need a host sync).
void cache_update_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
                       const at::Tensor& positions, const std::optional<at::Tensor>& lengths,
                       const UpdateGeometry& g);
#endif

}  // namespace xlmrxl
