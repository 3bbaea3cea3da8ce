// Dropout whose mask is a function of (seed, element index): y = x · keep(i) / (1 - p).
//
// torch draws a CPU dropout mask with its Mersenne Twister, one element at a time (25 ms for
// 4M elements on two cores, against 0.8 ms for a multiplication; compiled, 33 ms). Here each
// element hashes its index with a per-call key: two rounds of a 32-bit integer mixer (xor-shift
// and multiply, constants from Chris Wellons' hash search), which compilers vectorize. The mask
// is never stored: the backward pass is the same op on the gradient with the same seed. Results
// do not depend on the number of threads. Tensors have fewer than 2^32 elements (cpu.py checks).

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace attnlab_dropout {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kBlock = 256;  // elements whose factors are computed before they are applied

inline uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21f0aaadu;
  x ^= x >> 15;
  x *= 0x735a2d97u;
  return x ^ (x >> 15);
}

// splitmix64's finalizer: the two 32-bit keys of one call, from its seed
uint64_t spread(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Y = X · factor for m elements
void apply(const float* X, float* Y, const float* factor, int64_t m) {
  for (int64_t j = 0; j < m; j += Vec::size()) {
    const int64_t n = std::min<int64_t>(Vec::size(), m - j);
    (Vec::loadu(X + j, n) * Vec::loadu(factor + j, n)).store(Y + j, n);
  }
}

void apply(const at::BFloat16* X, at::BFloat16* Y, const float* factor, int64_t m) {
  using Half = at::vec::Vectorized<at::BFloat16>;  // 2 x Vec::size() lanes
  for (int64_t j = 0; j < m; j += Half::size()) {
    const int64_t n = std::min<int64_t>(Half::size(), m - j);
    auto [x0, x1] = at::vec::convert_to_float<at::BFloat16>(Half::loadu(X + j, n));
    const int64_t low = std::min<int64_t>(Vec::size(), n);  // factors past m are unset: not read
    const Vec f0 = Vec::loadu(factor + j, low), f1 = Vec::loadu(factor + j + low, n - low);
    at::vec::convert_from_float<at::BFloat16>(x0 * f0, x1 * f1).store(Y + j, n);
  }
}

template <typename T>
void dropout_into(const T* X, T* Y, int64_t numel, double p, uint64_t seed) {
  const uint64_t keys = spread(seed);
  const uint32_t k0 = static_cast<uint32_t>(keys), k1 = static_cast<uint32_t>(keys >> 32);
  const auto threshold = static_cast<uint32_t>(p * 4294967296.0);  // keep where hash >= it
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  at::parallel_for(0, numel, 16384, [&](int64_t begin, int64_t end) {
    alignas(64) float factor[kBlock];
    for (int64_t start = begin; start < end; start += kBlock) {
      const int64_t m = std::min(kBlock, end - start);
      const auto first = static_cast<uint32_t>(start);
      for (int64_t j = 0; j < m; ++j) {  // vectorized by the compiler
        const uint32_t h = mix(mix((first + static_cast<uint32_t>(j)) ^ k0) ^ k1);
        factor[j] = static_cast<float>(h >= threshold) * scale;
      }
      apply(X + start, Y + start, factor, m);
    }
  });
}

at::Tensor dropout(const at::Tensor& input, double p, const at::Tensor& seed) {
  TORCH_CHECK(input.device().is_cpu(), "x must be a CPU tensor");
  TORCH_CHECK(p > 0 && p < 1, "p must be in (0, 1)");
  TORCH_CHECK(input.numel() < (int64_t{1} << 32), "x must have fewer than 2^32 elements");
  const auto x = input.contiguous();
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto key = static_cast<uint64_t>(seed.item<int64_t>());
  if (x.scalar_type() == at::kBFloat16) {
    dropout_into(x.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), x.numel(), p, key);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "x must be float32 or bfloat16");
    dropout_into(x.data_ptr<float>(), y.data_ptr<float>(), x.numel(), p, key);
  }
  return y;
}

}  // namespace attnlab_dropout

TORCH_LIBRARY_FRAGMENT(attnlab, m) {
  m.def("dropout(Tensor x, float p, Tensor seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(attnlab, CPU, m) { m.impl("dropout", &attnlab_dropout::dropout); }
