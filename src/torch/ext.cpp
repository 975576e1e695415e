// The part of libtorch that tch does not expose: real torch.Generator objects, the global
// determinism switches and a few read-only facts for the environment fingerprint.
//
// Contract with src/torch/ffi.rs: every function that can fail returns nullptr on success or a
// malloc'd error message (free it with rd_free_string). No C++ exception crosses this boundary.
// `rd_gen` is a heap-allocated at::Generator (a ref-counted handle); `rd_tensor` is an
// at::Tensor* exactly as tch's C_tensor, so Rust can adopt it with Tensor::from_ptr.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/headeronly/version.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup(e.what());
  } catch (...) {
    return dup("unknown C++ exception in reprodiff's torch extension");
  }
}

at::Generator& gen(void* g) { return *static_cast<at::Generator*>(g); }

at::Device device_of(int type, int index) {
  if (type == 0) return at::Device(at::kCPU);
  if (type == 1) return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  TORCH_CHECK(false, "unknown device type code ", type);
}

at::TensorOptions options(int dtype, int dev_type, int dev_index) {
  return at::TensorOptions()
      .dtype(static_cast<at::ScalarType>(dtype))
      .device(device_of(dev_type, dev_index));
}

}  // namespace

extern "C" {

void rd_free_string(char* s) { std::free(s); }

// ---- generators ------------------------------------------------------------------------

// torch.Generator("cpu").manual_seed(seed): a fresh mt19937 engine, no cached normal.
char* rd_gen_new_cpu(uint64_t seed, void** out) {
  return guarded([&] {
    auto g = at::detail::createCPUGenerator();
    {
      std::lock_guard<std::mutex> lock(g.mutex());
      g.set_current_seed(seed);
    }
    *out = new at::Generator(std::move(g));
  });
}

// torch.Generator("cuda:index").manual_seed(seed). Needs libtorch_cuda linked (build.rs).
char* rd_gen_new_cuda(int index, uint64_t seed, void** out) {
  return guarded([&] {
    TORCH_CHECK(at::detail::getCUDAHooks().hasCUDA(),
                "CUDA is not available on this host (no GPU, no driver, or CPU-only libtorch)");
    auto g = at::detail::getCUDAHooks().getNewGenerator(static_cast<c10::DeviceIndex>(index));
    {
      std::lock_guard<std::mutex> lock(g.mutex());
      g.set_current_seed(seed);
    }
    *out = new at::Generator(std::move(g));
  });
}

void rd_gen_free(void* g) { delete static_cast<at::Generator*>(g); }

// A second handle on the SAME generator state: Python's `[g] * n`.
char* rd_gen_share(void* g, void** out) {
  return guarded([&] { *out = new at::Generator(gen(g)); });
}

// An independent generator whose state starts as a copy of g's.
char* rd_gen_clone(void* g, void** out) {
  return guarded([&] {
    std::lock_guard<std::mutex> lock(gen(g).mutex());
    *out = new at::Generator(gen(g).clone());
  });
}

int rd_gen_same_state(void* a, void* b) {
  return gen(a).unsafeGetGeneratorImpl() == gen(b).unsafeGetGeneratorImpl() ? 1 : 0;
}

char* rd_gen_manual_seed(void* g, uint64_t seed) {
  return guarded([&] {
    std::lock_guard<std::mutex> lock(gen(g).mutex());
    gen(g).set_current_seed(seed);
  });
}

char* rd_gen_initial_seed(void* g, uint64_t* out) {
  return guarded([&] { *out = gen(g).current_seed(); });
}

char* rd_gen_device(void* g, int* type, int* index) {
  return guarded([&] {
    auto d = gen(g).device();
    *type = d.is_cpu() ? 0 : (d.is_cuda() ? 1 : -1);
    *index = d.has_index() ? d.index() : -1;
  });
}

char* rd_gen_get_state(void* g, void** out) {
  return guarded([&] {
    std::lock_guard<std::mutex> lock(gen(g).mutex());
    *out = new at::Tensor(gen(g).get_state());
  });
}

char* rd_gen_set_state(void* g, void* state) {
  return guarded([&] {
    std::lock_guard<std::mutex> lock(gen(g).mutex());
    gen(g).set_state(*static_cast<at::Tensor*>(state));
  });
}

// torch.randn(sizes, generator=g, dtype=dtype, device=device). The kernel takes g's lock.
char* rd_randn(void* g, const int64_t* sizes, size_t ndim, int dtype, int dev_type,
               int dev_index, void** out) {
  return guarded([&] {
    std::vector<int64_t> shape(sizes, sizes + ndim);
    *out = new at::Tensor(at::randn(shape, gen(g), options(dtype, dev_type, dev_index)));
  });
}

// torch.rand(sizes, generator=g, dtype=dtype, device=device).
char* rd_rand(void* g, const int64_t* sizes, size_t ndim, int dtype, int dev_type,
              int dev_index, void** out) {
  return guarded([&] {
    std::vector<int64_t> shape(sizes, sizes + ndim);
    *out = new at::Tensor(at::rand(shape, gen(g), options(dtype, dev_type, dev_index)));
  });
}

// tensor.normal_(mean, std, generator=g), in place.
char* rd_normal_(void* tensor, double mean, double std, void* g) {
  return guarded([&] {
    std::optional<at::Generator> og = gen(g);
    static_cast<at::Tensor*>(tensor)->normal_(mean, std, og);
  });
}

// ---- determinism switches ------------------------------------------------------------

char* rd_set_determinism(int algorithms, int warn_only, int cudnn_deterministic,
                         int cudnn_benchmark, int tf32_cublas, int tf32_cudnn) {
  return guarded([&] {
    auto& ctx = at::globalContext();
    ctx.setDeterministicAlgorithms(algorithms != 0, warn_only != 0);
    ctx.setDeterministicCuDNN(cudnn_deterministic != 0);
    ctx.setBenchmarkCuDNN(cudnn_benchmark != 0);
    ctx.setAllowTF32CuBLAS(tf32_cublas != 0);
    ctx.setAllowTF32CuDNN(tf32_cudnn != 0);
  });
}

char* rd_get_determinism(int* algorithms, int* warn_only, int* cudnn_deterministic,
                         int* cudnn_benchmark, int* tf32_cublas, int* tf32_cudnn) {
  return guarded([&] {
    auto& ctx = at::globalContext();
    *algorithms = ctx.deterministicAlgorithms() ? 1 : 0;
    *warn_only = ctx.deterministicAlgorithmsWarnOnly() ? 1 : 0;
    *cudnn_deterministic = ctx.deterministicCuDNN() ? 1 : 0;
    *cudnn_benchmark = ctx.benchmarkCuDNN() ? 1 : 0;
    *tf32_cublas = ctx.allowTF32CuBLAS() ? 1 : 0;
    *tf32_cudnn = ctx.allowTF32CuDNN() ? 1 : 0;
  });
}

// ---- backend switches (the knobs users reach for) -----------------------------------

// torch.backends.mkldnn.enabled = onednn; with fused_attention false, what
// torch.nn.attention.sdpa_kernel(SDPBackend.MATH) sets: every fused SDPA backend off.
char* rd_set_backends(int onednn, int fused_attention) {
  return guarded([&] {
    auto& ctx = at::globalContext();
    ctx.setUserEnabledMkldnn(onednn != 0);
    bool fused = fused_attention != 0;
    ctx.setSDPUseFlash(fused);
    ctx.setSDPUseMemEfficient(fused);
    ctx.setSDPUseCuDNN(fused);
    ctx.setSDPUseOverrideable(fused);
    ctx.setSDPUseMath(true);
  });
}

char* rd_get_backends(int* onednn, int* flash_attention) {
  return guarded([&] {
    auto& ctx = at::globalContext();
    *onednn = ctx.userEnabledMkldnn() ? 1 : 0;
    *flash_attention = ctx.userEnabledFlashSDP() ? 1 : 0;
  });
}

// ---- facts for the fingerprint ---------------------------------------------------------

char* rd_torch_version(char** out) {
  return guarded([&] {
    *out = dup(std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
               "." + std::to_string(TORCH_VERSION_PATCH));
  });
}

// The capability ATen's CPU kernels dispatch to (default, avx2, avx512, ...), as
// torch.backends.cpu.get_cpu_capability() reports it.
char* rd_cpu_capability(char** out) {
  return guarded([&] { *out = dup(at::get_cpu_capability()); });
}

char* rd_parallel_info(char** out) {
  return guarded([&] { *out = dup(at::get_parallel_info()); });
}

char* rd_cuda_info(int* has_cuda, int* gpus, int64_t* cudart, int64_t* cudnn) {
  return guarded([&] {
    auto& hooks = at::detail::getCUDAHooks();
    *has_cuda = hooks.hasCUDA() ? 1 : 0;
    *gpus = *has_cuda ? hooks.getNumGPUs() : 0;
    *cudart = *has_cuda ? hooks.versionCUDART() : 0;
    *cudnn = (*has_cuda && hooks.hasCuDNN()) ? hooks.versionCuDNN() : 0;
  });
}

// libtorch's own profiler (torch.autograd.profiler's legacy one) on the calling thread:
// rd_profile_stop writes every ATen op it saw, with its CPU time, to the path given to
// rd_profile_start as a Chrome trace. Used by `bench` to compare ops with torch.profiler's.
static std::unique_ptr<torch::autograd::profiler::RecordProfile> g_profile;

char* rd_profile_start(const char* path) {
  return guarded([&] {
    g_profile = std::make_unique<torch::autograd::profiler::RecordProfile>(std::string(path));
  });
}

char* rd_profile_stop() {
  return guarded([&] { g_profile.reset(); });
}

}  // extern "C"
