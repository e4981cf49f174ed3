// CUDA kernel of xlmrxl_kernels._C.cache_update: one launch writes K and V of every sequence of the batch.
//
// Grid: z = 0 (K) / 1 (V); y = batch row b (grid-stride); x = blocks of (head, token) rows. A block is
// (bx lanes along D) x (by rows): bx covers one D-row in copy units, so consecutive rows of a contiguous cache are
// consecutive addresses and a warp's accesses coalesce even when D-row is only 10 units (XL, bf16: 80 x 2 B / 16 B).
// The copy unit is the widest of 16 / 8 / 4 / 2 bytes that divides every base address, every outer stride and the
// D-row: 16-byte vector loads and stores whenever the tensors allow it, element copies for strided last dims.
// Positions and lengths are read on the device: no host sync, safe inside CUDA-graph capture. A row whose slot
// would fall outside [0, max_len) is skipped (cannot be reported without a sync; the CPU op raises instead).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "cache_update.h"

namespace xlmrxl {
namespace {

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

__device__ __forceinline__ int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(p)[i] : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

template <typename unit_t>
__global__ void __launch_bounds__(256) cache_update_kernel(const Params p) {
  const int kv = blockIdx.z;
  char* const cache = p.cache[kv];
  const char* const src = p.src[kv];
  const Strides cs = p.cs[kv], ss = p.ss[kv];
  const int32_t rows = p.H * p.T;
  for (int64_t b = blockIdx.y; b < p.B; b += gridDim.y) {
    const int64_t pos = load_index(p.positions, p.pos_is64, b * p.pos_stride);
    const int64_t n = p.lengths ? load_index(p.lengths, p.len_is64, b * p.len_stride) : p.T;
    for (int32_t r = blockIdx.x * blockDim.y + threadIdx.y; r < rows; r += gridDim.x * blockDim.y) {
      const int32_t h = r / p.T, t = r - h * p.T;
      const int64_t slot = pos + t;
      if (t >= n || slot < 0 || slot >= p.L) continue;  // padding, or outside the cache: not written
      char* d = cache + b * cs.s0 + h * cs.s1 + slot * cs.s2;
      const char* s = src + b * ss.s0 + h * ss.s1 + static_cast<int64_t>(t) * ss.s2;
      for (int32_t u = threadIdx.x; u < p.units; u += blockDim.x)
        *reinterpret_cast<unit_t*>(d + u * cs.s3) = *reinterpret_cast<const unit_t*>(s + u * ss.s3);
    }
  }
}

bool divides(int64_t unit, const at::Tensor& t) {
  const int64_t e = t.element_size();
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % unit == 0 && (t.stride(0) * e) % unit == 0 &&
         (t.stride(1) * e) % unit == 0 && (t.stride(2) * e) % unit == 0;
}

// Widest copy unit (bytes) valid for all four tensors.
int64_t pick_unit(const at::Tensor* ts[4], int64_t D, int64_t elem) {
  for (const at::Tensor* t : {ts[0], ts[1], ts[2], ts[3]})
    if (t->stride(3) != 1) return elem;  // strided last dim (e.g. a transposed view): element copies
  for (int64_t unit : {16, 8, 4}) {
    if (unit <= elem || (D * elem) % unit != 0) continue;
    bool ok = true;
    for (const at::Tensor* t : {ts[0], ts[1], ts[2], ts[3]}) ok = ok && divides(unit, *t);
    if (ok) return unit;
  }
  return elem;
}

Strides strides_of(const at::Tensor& t, int64_t unit, bool inner_contiguous) {
  const int64_t e = t.element_size();
  return {t.stride(0) * e, t.stride(1) * e, t.stride(2) * e, inner_contiguous ? unit : t.stride(3) * e};
}

}  // namespace

void cache_update_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
                       const at::Tensor& positions, const std::optional<at::Tensor>& lengths,
                       const UpdateGeometry& g) {
  TORCH_CHECK_VALUE(g.H * g.T < (int64_t{1} << 31) && g.L < (int64_t{1} << 31),
              "cache_update on CUDA needs H * T and max_len below 2^31, got H * T = ", g.H * g.T, ", max_len = ", g.L);
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const at::Tensor* ts[4] = {&k_cache, &v_cache, &k_new, &v_new};
  const int64_t unit = pick_unit(ts, g.D, g.elem);
  const bool inner_contiguous = unit != g.elem || (k_cache.stride(3) == 1 && v_cache.stride(3) == 1 &&
                                                   k_new.stride(3) == 1 && v_new.stride(3) == 1);
  Params p;
  p.cache[0] = static_cast<char*>(k_cache.data_ptr());
  p.cache[1] = static_cast<char*>(v_cache.data_ptr());
  p.src[0] = static_cast<const char*>(k_new.data_ptr());
  p.src[1] = static_cast<const char*>(v_new.data_ptr());
  p.cs[0] = strides_of(k_cache, unit, inner_contiguous);
  p.cs[1] = strides_of(v_cache, unit, inner_contiguous);
  p.ss[0] = strides_of(k_new, unit, inner_contiguous);
  p.ss[1] = strides_of(v_new, unit, inner_contiguous);
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
  p.units = static_cast<int32_t>(g.D * g.elem / unit);

  const int bx = static_cast<int>(std::min<int64_t>(p.units, 256));
  const int by = std::max(1, 256 / bx);
  const int64_t rows = g.H * g.T;
  const dim3 block(bx, by);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((rows + by - 1) / by, 65535)),
                  static_cast<unsigned>(std::min<int64_t>(g.B, 65535)), 2);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (unit) {
    case 16: cache_update_kernel<uint4><<<grid, block, 0, stream>>>(p); break;
    case 8: cache_update_kernel<uint2><<<grid, block, 0, stream>>>(p); break;
    case 4: cache_update_kernel<uint32_t><<<grid, block, 0, stream>>>(p); break;
    case 2: cache_update_kernel<uint16_t><<<grid, block, 0, stream>>>(p); break;
    default: TORCH_CHECK(false, "cache_update: unsupported element size ", unit, " bytes");
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace xlmrxl
