// CUDA launch of xlmrxl_kernels._C.cache_update: one kernel writes K and V of every sequence of the batch.
// The kernel body and the launch plan live in cache_update_kernel.h (shared with the host emulation that the CPU
// tests run); this file only picks the copy unit's vector type and launches on the current stream, no host sync.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "cache_update.h"
#include "cache_update_kernel.h"

namespace xlmrxl {
namespace {

template <typename unit_t>
__global__ void __launch_bounds__(256) cache_update_kernel(const kern::Params p) {
  kern::update_thread<unit_t>(p, blockIdx.z, blockIdx.y, gridDim.y, blockIdx.x, gridDim.x, threadIdx.x, threadIdx.y,
                              blockDim.x, blockDim.y);
}

}  // namespace

void cache_update_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
                       const at::Tensor& positions, const std::optional<at::Tensor>& lengths,
                       const UpdateGeometry& g) {
  TORCH_CHECK_VALUE(g.H * g.T < (int64_t{1} << 31) && g.L < (int64_t{1} << 31),
                    "cache_update on CUDA needs H * T and max_len below 2^31, got H * T = ", g.H * g.T,
                    ", max_len = ", g.L);
  const c10::cuda::CUDAGuard guard(k_cache.device());
  kern::Plan plan;
  const kern::Params p = make_params(k_cache, v_cache, k_new, v_new, positions, lengths, g, &plan);

  const dim3 block(plan.bx, plan.by);
  const dim3 grid(static_cast<unsigned>(plan.gx), static_cast<unsigned>(plan.gy), 2);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (plan.unit) {
    case 16: cache_update_kernel<uint4><<<grid, block, 0, stream>>>(p); break;
    case 8: cache_update_kernel<uint2><<<grid, block, 0, stream>>>(p); break;
    case 4: cache_update_kernel<uint32_t><<<grid, block, 0, stream>>>(p); break;
    case 2: cache_update_kernel<uint16_t><<<grid, block, 0, stream>>>(p); break;
    default: TORCH_CHECK(false, "cache_update: unsupported copy unit of ", plan.unit, " bytes");
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace xlmrxl
