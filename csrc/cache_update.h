// KV-cache ops of xlmrxl_kernels._C: declarations shared by the CPU (.cpp) and CUDA (.cu) sources.
//
// Layout: caches (B, H, max_len, D), new keys/values (B, H, T, D), any strides. Positions are per-sequence start
// offsets (B,) of int32/int64 on the cache's device; lengths (optional, B,) say how many of the T new tokens of
// each sequence to write (the rest are padding and are not written).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace xlmrxl {

// Byte geometry of one cache_update call, filled by the argument checks and read by the device kernels.
struct UpdateGeometry {
  int64_t B, H, T, L, D;
  int64_t elem;  // bytes per element
};

#ifdef XLMRXL_WITH_CUDA
// Launches one kernel for K and V on the current stream; no host synchronisation. Rows whose destination falls
// outside [0, max_len) are skipped on the device (the bounds are not reported: that would need a host sync).
void cache_update_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
                       const at::Tensor& positions, const std::optional<at::Tensor>& lengths,
                       const UpdateGeometry& g);
#endif

}  // namespace xlmrxl
