// xlmrxl_kernels._C: in-place KV-cache ops for incremental decoding, and the one PYBIND11_MODULE of the project.
//
//   cache_update(k_cache, v_cache, k_new, v_new, positions, lengths=None)
//       k_cache[b, h, positions[b] + t, :] = k_new[b, h, t, :]   (same for V) for t < lengths[b] (default T).
//       One call writes K and V of every sequence of the batch; positions may differ per sequence (ragged caches,
//       left or right padding). CPU: parallel over batch x heads, bounds checked (an error names the row).
//       CUDA (when built): one kernel launch for K and V, positions read on the device, no host sync, safe inside
//       CUDA-graph capture; rows that would land outside [0, max_len) are skipped, not reported.
//   cache_reorder(k_cache, v_cache, beam_idx, length=None)
//       k_cache[:, :, :length] = k_cache[beam_idx, :, :length] in place (beam search), same for V.
//   cache_reset(k_cache, v_cache, start=0)
//       zero every slot at or after `start` (start=0: reset; start=n: crop to n tokens).
//   _emulate_cuda_update(...)   test hook: the CUDA kernel's body (cache_update_kernel.h) run on the host.
//
// Caches are (B, H, max_len, D), new keys/values (B, H, T, D); float32, float16 or bfloat16, any strides. Every
// argument is checked here, and a message names the tensor and the expected vs actual shape / dtype / device.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>  // the at::Tensor <-> torch.Tensor caster, without all of torch/extension.h

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "cache_update.h"

namespace xlmrxl {
namespace {

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// Whether two tensors provably share memory (TooHard, e.g. for strided views of different buffers, counts as no).
bool shares_memory(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const auto status = at::get_overlap_status(a, b);
  return status == at::MemOverlapStatus::Full || status == at::MemOverlapStatus::Partial;
}

bool supported_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// The two caches: 4 dims, one shape, one supported dtype, one device, writable (no expanded views), distinct.
void check_caches(const at::Tensor& k_cache, const at::Tensor& v_cache) {
  TORCH_CHECK_VALUE(k_cache.dim() == 4, "k_cache must have 4 dims (B, H, max_len, D), got ", k_cache.dim());
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ", shape_str(k_cache),
                    ", got ", shape_str(v_cache));
  TORCH_CHECK_TYPE(supported_dtype(k_cache.scalar_type()), "k_cache must be float32, float16 or bfloat16, got ",
                   dtype_name(k_cache.scalar_type()));
  TORCH_CHECK_TYPE(v_cache.scalar_type() == k_cache.scalar_type(), "v_cache must have the dtype of k_cache (",
                   dtype_name(k_cache.scalar_type()), "), got ", dtype_name(v_cache.scalar_type()));
  TORCH_CHECK_VALUE(v_cache.device() == k_cache.device(), "v_cache must be on the device of k_cache (",
                    k_cache.device(), "), got ", v_cache.device());
  // An expanded (stride 0) cache would have several slots share one address: writes would clobber each other.
  TORCH_CHECK_VALUE(at::has_internal_overlap(k_cache) != at::MemOverlap::Yes,
                    "k_cache has internally overlapping memory (an expanded view?); pass a real buffer, e.g. .clone()");
  TORCH_CHECK_VALUE(at::has_internal_overlap(v_cache) != at::MemOverlap::Yes,
                    "v_cache has internally overlapping memory (an expanded view?); pass a real buffer, e.g. .clone()");
  TORCH_CHECK_VALUE(!shares_memory(k_cache, v_cache),
                    "k_cache and v_cache share memory; they must be two separate buffers");
}

void check_new(const char* name, const at::Tensor& t, const at::Tensor& k_cache) {
  TORCH_CHECK_TYPE(t.scalar_type() == k_cache.scalar_type(), name, " must have the dtype of k_cache (",
                   dtype_name(k_cache.scalar_type()), "), got ", dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.device() == k_cache.device(), name, " must be on the device of k_cache (", k_cache.device(),
                    "), got ", t.device());
}

// An integer vector (B,) on the caches' device: positions, lengths, beam_idx.
void check_index_vector(const char* name, const at::Tensor& t, int64_t B, const at::Device& device) {
  const bool int_type = t.scalar_type() == at::kInt || t.scalar_type() == at::kLong;
  TORCH_CHECK_TYPE(int_type, name, " must be int32 or int64 on ", device, ", got ", dtype_name(t.scalar_type()), " on ",
                   t.device());
  TORCH_CHECK_VALUE(t.device() == device, name, " must be int32 or int64 on ", device, ", got ",
                    dtype_name(t.scalar_type()), " on ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == B, name, " must have shape (B,) = (", B, ",), got ", shape_str(t));
}

std::vector<int64_t> read_index(const at::Tensor& t) {
  std::vector<int64_t> out(t.size(0));
  AT_DISPATCH_INDEX_TYPES(t.scalar_type(), "xlmrxl_read_index", [&] {
    const index_t* p = t.data_ptr<index_t>();
    const int64_t s = t.stride(0);  // strided views (e.g. an expanded scalar) are fine
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int64_t>(p[i * s]);
  });
  return out;
}

template <typename scalar_t>
struct View4 {
  scalar_t* p;
  int64_t s0, s1, s2, s3;  // strides in elements
};

template <typename scalar_t>
View4<scalar_t> view4(const at::Tensor& t) {
  return {static_cast<scalar_t*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Copy n rows of D elements of src[b, h, 0:n] to dst[b, h, p0:p0+n].
template <typename scalar_t>
inline void copy_rows(const View4<scalar_t>& dst, const View4<scalar_t>& src, int64_t b, int64_t h, int64_t p0,
                      int64_t n, int64_t D) {
  scalar_t* d = dst.p + b * dst.s0 + h * dst.s1 + p0 * dst.s2;
  const scalar_t* s = src.p + b * src.s0 + h * src.s1;
  if (dst.s3 == 1 && src.s3 == 1) {
    if (dst.s2 == D && src.s2 == D) {  // both blocks contiguous: one memcpy for all n rows
      std::memcpy(d, s, sizeof(scalar_t) * n * D);
      return;
    }
    for (int64_t t = 0; t < n; ++t) std::memcpy(d + t * dst.s2, s + t * src.s2, sizeof(scalar_t) * D);
    return;
  }
  for (int64_t t = 0; t < n; ++t)  // a transposed / strided last dim: element by element
    for (int64_t i = 0; i < D; ++i) d[t * dst.s2 + i * dst.s3] = s[t * src.s2 + i * src.s3];
}

template <typename scalar_t>
void cache_update_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
                      const std::vector<int64_t>& pos, const std::vector<int64_t>& len, int64_t H, int64_t D) {
  const auto kc = view4<scalar_t>(k_cache), vc = view4<scalar_t>(v_cache);
  const auto kn = view4<scalar_t>(k_new), vn = view4<scalar_t>(v_new);
  const int64_t B = static_cast<int64_t>(pos.size());
  const int64_t T = k_new.size(2);
  // ~64 KiB of copying per task, so that a decode step (T = 1) does not pay thread start-up per head.
  const int64_t bytes_per_bh = std::max<int64_t>(1, 2 * T * D * static_cast<int64_t>(sizeof(scalar_t)));
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / bytes_per_bh);
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      copy_rows(kc, kn, b, h, pos[b], len[b], D);
      copy_rows(vc, vn, b, h, pos[b], len[b], D);
    }
  });
}

}  // namespace

// Every check of cache_update (shapes, dtypes, devices, aliasing); returns the call's geometry.
UpdateGeometry check_update(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k_new,
                            const at::Tensor& v_new, const at::Tensor& positions,
                            const std::optional<at::Tensor>& lengths) {
  check_caches(k_cache, v_cache);
  TORCH_CHECK_VALUE(k_new.dim() == 4, "k_new must have 4 dims (B, H, T, D), got ", k_new.dim());
  TORCH_CHECK_VALUE(v_new.sizes() == k_new.sizes(), "v_new must have the shape of k_new ", shape_str(k_new), ", got ",
                    shape_str(v_new));
  const int64_t B = k_cache.size(0), H = k_cache.size(1), L = k_cache.size(2), D = k_cache.size(3);
  const int64_t T = k_new.size(2);
  TORCH_CHECK_VALUE(k_new.size(0) == B && k_new.size(1) == H && k_new.size(3) == D,
                    "k_new must have shape (B, H, T, D) = (", B, ", ", H, ", T, ", D, ") to match k_cache ",
                    shape_str(k_cache), ", got ", shape_str(k_new));
  check_new("k_new", k_new, k_cache);
  check_new("v_new", v_new, k_cache);
  const auto device = k_cache.device();
  check_index_vector("positions", positions, B, device);
  if (lengths.has_value()) check_index_vector("lengths", *lengths, B, device);
  TORCH_CHECK_VALUE(!shares_memory(k_cache, k_new) && !shares_memory(v_cache, v_new),
                    "k_new / v_new must not share memory with k_cache / v_cache (pass a copy of a cache slice)");
  return {B, H, T, L, D, static_cast<int64_t>(k_cache.element_size())};
}

void cache_update(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
                  const at::Tensor& positions, const std::optional<at::Tensor>& lengths) {
  const UpdateGeometry g = check_update(k_cache, v_cache, k_new, v_new, positions, lengths);
  const int64_t B = g.B, H = g.H, T = g.T, L = g.L, D = g.D;
  if (B == 0 || H == 0 || T == 0 || D == 0) return;
  const auto device = k_cache.device();
  if (device.is_cuda()) {
#ifdef XLMRXL_WITH_CUDA
    cache_update_cuda(k_cache, v_cache, k_new, v_new, positions, lengths, g);
    return;
#else
    TORCH_CHECK(false, "xlmrxl_kernels._C was built without CUDA, but k_cache is on ", device,
                "; rebuild with a CUDA build of torch and nvcc on PATH (pip install -e . --no-build-isolation)");
#endif
  }
  TORCH_CHECK_VALUE(device.is_cpu(), "k_cache must be on cpu or cuda, got ", device);

  // Bounds are checked on CPU, where reading positions is free; the error names the first bad row.
  const std::vector<int64_t> pos = read_index(positions);
  std::vector<int64_t> len = lengths.has_value() ? read_index(*lengths) : std::vector<int64_t>(B, T);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(len[b] >= 0 && len[b] <= T, "lengths[", b, "] = ", len[b], " must be in [0, T = ", T, "]");
    TORCH_CHECK_VALUE(pos[b] >= 0, "positions[", b, "] = ", pos[b], " must be >= 0");
    TORCH_CHECK_VALUE(pos[b] + len[b] <= L, "positions[", b, "] + ",
                      (lengths.has_value() ? "lengths[" + std::to_string(b) + "]" : std::string("T")), " = ", pos[b],
                      " + ", len[b], " = ", pos[b] + len[b], " exceeds max_len = ", L,
                      " of k_cache; allocate the cache with a larger max_len, or crop / reset it");
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k_cache.scalar_type(), "xlmrxl_cache_update_cpu", [&] {
    cache_update_cpu<scalar_t>(k_cache, v_cache, k_new, v_new, pos, len, H, D);
  });
}

// For tests on machines without a GPU: run the CUDA kernel's own body (cache_update_kernel.h) over its launch grid
// on the host, one emulated thread after another (the kernel's threads never depend on each other). No bounds
// errors: out-of-range tokens are skipped, as on the device. max_grid caps the grid to exercise grid-stride loops.
// Returns the plan: (copy unit bytes, block x, block y, grid x, grid y).
std::vector<int64_t> emulate_cuda_update(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k_new,
                                         const at::Tensor& v_new, const at::Tensor& positions,
                                         const std::optional<at::Tensor>& lengths, int64_t max_grid) {
  const UpdateGeometry g = check_update(k_cache, v_cache, k_new, v_new, positions, lengths);
  TORCH_CHECK_VALUE(k_cache.device().is_cpu(), "_emulate_cuda_update takes cpu tensors, got ", k_cache.device());
  TORCH_CHECK_VALUE(max_grid >= 1, "max_grid must be >= 1, got ", max_grid);
  if (g.B == 0 || g.H == 0 || g.T == 0 || g.D == 0) return {};
  kern::Plan plan;
  const kern::Params p = make_params(k_cache, v_cache, k_new, v_new, positions, lengths, g, &plan, max_grid);
  auto run = [&](auto unit_tag) {
    using unit_t = decltype(unit_tag);
    for (int kv = 0; kv < 2; ++kv)
      for (int64_t by = 0; by < plan.gy; ++by)
        for (int64_t bx = 0; bx < plan.gx; ++bx)
          for (int ty = 0; ty < plan.by; ++ty)
            for (int tx = 0; tx < plan.bx; ++tx)
              kern::update_thread<unit_t>(p, kv, by, plan.gy, bx, plan.gx, tx, ty, plan.bx, plan.by);
  };
  switch (plan.unit) {
    case 16: run(kern::HostVec16{}); break;
    case 8: run(kern::HostVec8{}); break;
    case 4: run(uint32_t{}); break;
    case 2: run(uint16_t{}); break;
    default: TORCH_CHECK(false, "unsupported copy unit of ", plan.unit, " bytes");
  }
  return {plan.unit, plan.bx, plan.by, plan.gx, plan.gy};
}

void cache_reorder(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& beam_idx,
                   std::optional<int64_t> length) {
  check_caches(k_cache, v_cache);
  const int64_t B = k_cache.size(0), L = k_cache.size(2);
  check_index_vector("beam_idx", beam_idx, B, k_cache.device());
  const int64_t n = length.value_or(L);
  TORCH_CHECK_VALUE(n >= 0 && n <= L, "length must be in [0, max_len = ", L, "], got ", n);
  if (k_cache.device().is_cpu()) {
    const std::vector<int64_t> idx = read_index(beam_idx);
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK_VALUE(idx[b] >= 0 && idx[b] < B, "beam_idx[", b, "] = ", idx[b], " is out of range [0, ", B, ")");
  }
  if (B == 0 || n == 0 || k_cache.numel() == 0) return;
  // Gather into a temporary, then copy back: a reorder is a permutation with repeats, so in-place row moves
  // would read rows already overwritten. Both ops are asynchronous on CUDA and capture-safe.
  for (at::Tensor* c : {&k_cache, &v_cache}) {
    at::Tensor prefix = c->narrow(2, 0, n);
    prefix.copy_(prefix.index_select(0, beam_idx));
  }
}

void cache_reset(at::Tensor k_cache, at::Tensor v_cache, int64_t start) {
  check_caches(k_cache, v_cache);
  const int64_t L = k_cache.size(2);
  TORCH_CHECK_VALUE(start >= 0 && start <= L, "start must be in [0, max_len = ", L, "], got ", start);
  if (start == L || k_cache.numel() == 0) return;
  k_cache.narrow(2, start, L - start).zero_();
  v_cache.narrow(2, start, L - start).zero_();
}

}  // namespace xlmrxl

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xlmrxl KV-cache ops: cache_update, cache_reorder, cache_reset (in place; see xlmrxl_kernels.cache_update)";
  namespace py = pybind11;
  m.def("cache_update", &xlmrxl::cache_update, py::call_guard<py::gil_scoped_release>(),
        "Write k_new / v_new (B, H, T, D) into k_cache / v_cache (B, H, max_len, D) at per-sequence positions (B,).",
        py::arg("k_cache"), py::arg("v_cache"), py::arg("k_new"), py::arg("v_new"), py::arg("positions"),
        py::arg("lengths") = py::none());
  m.def("cache_reorder", &xlmrxl::cache_reorder, py::call_guard<py::gil_scoped_release>(),
        "Reorder both caches along the batch by beam_idx (B,), in place, over the first `length` slots.",
        py::arg("k_cache"), py::arg("v_cache"), py::arg("beam_idx"), py::arg("length") = py::none());
  m.def("cache_reset", &xlmrxl::cache_reset, py::call_guard<py::gil_scoped_release>(),
        "Zero every cache slot at or after `start` (0: reset; n: crop to n tokens).", py::arg("k_cache"),
        py::arg("v_cache"), py::arg("start") = 0);
  m.def("_emulate_cuda_update", &xlmrxl::emulate_cuda_update,
        "Test hook: the CUDA kernel's body run on the host over its grid (cpu tensors); returns the launch plan "
        "(unit bytes, block x, block y, grid x, grid y).",
        py::arg("k_cache"), py::arg("v_cache"), py::arg("k_new"), py::arg("v_new"), py::arg("positions"),
        py::arg("lengths") = py::none(), py::arg("max_grid") = 65535);
  m.def("with_cuda", [] {
#ifdef XLMRXL_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the CUDA kernel was compiled in.");
  m.def("with_openmp", [] {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  }, "True when the CPU op runs in parallel (compiled with OpenMP).");
}
