// attnlab's CPU kernels for training small models: attention over short sequences, and GELU
// with its slope. Built on first use by cpu.py; registered as torch ops (attnlab::...).
//
// Attention: softmax(Q Kᵀ · scale) V and its gradients. torch's CPU flash-attention kernel
// splits each head into blocks and calls a BLAS for every block product; at a context of 64
// those calls cost more than their arithmetic. Here one task computes one (batch, head) pair
// whole: the scores fit in cache, every product runs in register tiles of 4 rows x up to 64
// columns, the attention weights P are kept for the backward pass, and a causal mask skips the
// tiles above the diagonal. Each head is computed by one thread in a fixed order, so results do
// not depend on the number of threads. Tensors are (B, H, T, D) float32 with contiguous rows (the
// last dimension); the other strides may be anything. Outputs are contiguous; P is (B, H, T, T)
// with zeros above the diagonal.
//
// GELU: y = x Φ(x) and its slope Φ(x) + x φ(x) in one pass, sharing one exponential, so the
// backward pass is one multiplication (compiled, torch computes the erf again there, and one
// more exponential).

// Only the headers of what is used (not <ATen/ATen.h>): the build takes 7 s instead of 10.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <limits>
#include <utility>
#include <vector>

namespace attnlab_cpu {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr int kTileRows = 4;
constexpr int kTileVectors = 4;

int64_t lanes(int64_t left) { return std::min(kLanes, left); }

// C[r][c] = sum_d A[r*lda + d] * BT[d*ldb + c] for r < R, c < ncols (at most kTileVectors vectors)
template <int R, int NV>
void tile_abt(float* C, int64_t ldc, const float* A, int64_t lda, const float* BT, int64_t ldb,
              int64_t depth, int64_t ncols) {
  Vec acc[R][NV];
  int64_t count[NV];
  for (int v = 0; v < NV; ++v) count[v] = lanes(ncols - v * kLanes);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec(0.f);
  for (int64_t d = 0; d < depth; ++d) {
    Vec b[NV];
    for (int v = 0; v < NV; ++v) b[v] = Vec::loadu(BT + d * ldb + v * kLanes, count[v]);
    for (int r = 0; r < R; ++r) {
      const Vec a(A[r * lda + d]);
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v].store(C + r * ldc + v * kLanes, count[v]);
}

// C[r][c] = sum_{x0 <= x < x1} A[r*ar + x*ax] * B[x*ldb + c] for r < R, c < ncols
template <int R, int NV>
void tile_ab(float* C, int64_t ldc, const float* A, int64_t ar, int64_t ax, const float* B,
             int64_t ldb, int64_t x0, int64_t x1, int64_t ncols) {
  Vec acc[R][NV];
  int64_t count[NV];
  for (int v = 0; v < NV; ++v) count[v] = lanes(ncols - v * kLanes);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec(0.f);
  for (int64_t x = x0; x < x1; ++x) {
    Vec b[NV];
    for (int v = 0; v < NV; ++v) b[v] = Vec::loadu(B + x * ldb + v * kLanes, count[v]);
    for (int r = 0; r < R; ++r) {
      const Vec a(A[r * ar + x * ax]);
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v].store(C + r * ldc + v * kLanes, count[v]);
}

// Calls tile(nv, column) over the columns in steps of kTileVectors vectors; nv is a template
// argument there, so the accumulators stay in registers.
template <typename Tile>
void across_columns(int64_t ncols, Tile tile) {
  for (int64_t c = 0; c < ncols; c += kTileVectors * kLanes) {
    switch (std::min<int64_t>(kTileVectors, (ncols - c + kLanes - 1) / kLanes)) {
      case 1: tile(std::integral_constant<int, 1>{}, c); break;
      case 2: tile(std::integral_constant<int, 2>{}, c); break;
      case 3: tile(std::integral_constant<int, 3>{}, c); break;
      default: tile(std::integral_constant<int, 4>{}, c); break;
    }
  }
}

// Calls rows(R, r0, r1) over [0, T) in tiles of kTileRows rows, then single rows.
template <typename Rows>
void across_rows(int64_t T, Rows rows) {
  int64_t r = 0;
  for (; r + kTileRows <= T; r += kTileRows) rows(std::integral_constant<int, kTileRows>{}, r);
  for (; r < T; ++r) rows(std::integral_constant<int, 1>{}, r);
}

// C = A Bᵀ (T x T) from A (T x D, rows lda apart) and BT = Bᵀ (D x T); with causal, row r needs
// columns 0..r only (a tile computes up to its last row; the rest is masked later).
void scores(float* C, const float* A, int64_t lda, const float* BT, int64_t T, int64_t D,
            bool causal) {
  across_rows(T, [&](auto R, int64_t r) {
    const int64_t ncols = causal ? r + R : T;
    across_columns(ncols, [&](auto NV, int64_t c) {
      tile_abt<R, NV>(C + r * T + c, T, A + r * lda, lda, BT + c, T, D, ncols - c);
    });
  });
}

// C[r][:] = sum_x A(r, x) B[x][:] over x in range(r0, r1), A(r, x) = A[r*ar + x*ax].
template <typename Range>
void weighted_rows(float* C, int64_t ldc, const float* A, int64_t ar, int64_t ax, const float* B,
                   int64_t ldb, int64_t T, int64_t D, Range range) {
  across_rows(T, [&](auto R, int64_t r) {
    const auto [x0, x1] = range(r, r + R);
    across_columns(D, [&](auto NV, int64_t c) {
      tile_ab<R, NV>(C + r * ldc + c, ldc, A + r * ar, ar, ax, B + c, ldb, x0, x1, D - c);
    });
  });
}

void transpose(float* out, const float* in, int64_t ld, int64_t T, int64_t D) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) out[d * T + t] = in[t * ld + d];
}

float sum_of(Vec v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

// s[0..n) <- softmax(scale * s[0..n)), s[n..T) <- 0
void softmax(float* s, int64_t n, int64_t T, float scale) {
  Vec high(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < n; j += kLanes)
    high = at::vec::maximum(high, Vec::set(high, Vec::loadu(s + j, lanes(n - j)), lanes(n - j)));
  const Vec shift(scale * at::vec::vec_reduce_all<float>(
                              [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, high));
  Vec total(0.f);
  for (int64_t j = 0; j < n; j += kLanes) {
    const int64_t c = lanes(n - j);
    const Vec e = Vec::set(Vec(0.f), at::vec::fmsub(Vec::loadu(s + j, c), Vec(scale), shift).exp_u20(), c);
    e.store(s + j, c);
    total = total + e;
  }
  const Vec inverse(1.f / sum_of(total));
  for (int64_t j = 0; j < n; j += kLanes) (Vec::loadu(s + j, lanes(n - j)) * inverse).store(s + j, lanes(n - j));
  std::fill(s + n, s + T, 0.f);
}

// One (batch, head) slice of a (B, H, T, D) tensor.
struct Heads {
  const float* data;
  int64_t heads, batch_stride, head_stride, row_stride;
  explicit Heads(const at::Tensor& t)
      : data(t.data_ptr<float>()), heads(t.size(1)), batch_stride(t.stride(0)),
        head_stride(t.stride(1)), row_stride(t.stride(2)) {}
  const float* operator[](int64_t n) const {
    return data + (n / heads) * batch_stride + (n % heads) * head_stride;
  }
};

at::Tensor rows_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat && t.device().is_cpu(), name,
              " must be a (B, H, T, D) float32 CPU tensor");
  return t.stride(-1) == 1 ? t : t.contiguous();
}

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& query, const at::Tensor& key,
                                                     const at::Tensor& value, bool causal,
                                                     double scale) {
  const auto q = rows_contiguous(query, "q"), k = rows_contiguous(key, "k"),
             v = rows_contiguous(value, "v");
  TORCH_CHECK(q.sizes() == k.sizes() && q.sizes() == v.sizes(), "q, k and v must have one shape");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  auto out = at::empty({B, H, T, D}, q.options());
  auto probs = at::empty({B, H, T, T}, q.options());
  const Heads Q(q), K(k), V(v);
  float *O = out.data_ptr<float>(), *P = probs.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(D * T);
    for (int64_t n = begin; n < end; ++n) {
      float* p = P + n * T * T;
      transpose(kt.data(), K[n], K.row_stride, T, D);
      scores(p, Q[n], Q.row_stride, kt.data(), T, D, causal);
      for (int64_t i = 0; i < T; ++i) softmax(p + i * T, causal ? i + 1 : T, T, scale);
      weighted_rows(O + n * T * D, D, p, T, 1, V[n], V.row_stride, T, D, [&](int64_t, int64_t r1) {
        return std::pair<int64_t, int64_t>{0, causal ? r1 : T};  // O = P V
      });
    }
  });
  return {out, probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& probs, bool causal, double scale) {
  const auto g = rows_contiguous(grad_out, "grad"), q = rows_contiguous(query, "q"),
             k = rows_contiguous(key, "k"), v = rows_contiguous(value, "v");
  const auto p_all = probs.contiguous();
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  auto dq = at::empty({B, H, T, D}, q.options()), dk = at::empty_like(dq), dv = at::empty_like(dq);
  const Heads G(g), Q(q), K(k), V(v);
  const float* P = p_all.data_ptr<float>();
  float *dQ = dq.data_ptr<float>(), *dK = dk.data_ptr<float>(), *dV = dv.data_ptr<float>();
  const auto before = [&](int64_t, int64_t r1) {  // keys row r1 - 1 sees
    return std::pair<int64_t, int64_t>{0, causal ? r1 : T};
  };
  const auto after = [&](int64_t r0, int64_t) {  // queries that see key r0
    return std::pair<int64_t, int64_t>{causal ? r0 : 0, T};
  };
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> vt(D * T), ds(T * T);
    for (int64_t n = begin; n < end; ++n) {
      const float* p = P + n * T * T;
      const int64_t off = n * T * D;
      transpose(vt.data(), V[n], V.row_stride, T, D);
      scores(ds.data(), G[n], G.row_stride, vt.data(), T, D, causal);  // dP = dO Vᵀ
      for (int64_t i = 0; i < T; ++i) {  // dS = P ∘ (dP - rowsum(P ∘ dP)) · scale
        const int64_t len = causal ? i + 1 : T;
        const float* pi = p + i * T;
        float* si = ds.data() + i * T;
        Vec acc(0.f);
        for (int64_t j = 0; j < len; j += kLanes)
          acc = at::vec::fmadd(Vec::loadu(pi + j, lanes(len - j)), Vec::loadu(si + j, lanes(len - j)), acc);
        const Vec row_sum(sum_of(acc));
        for (int64_t j = 0; j < len; j += kLanes)
          (Vec::loadu(pi + j, lanes(len - j)) * (Vec::loadu(si + j, lanes(len - j)) - row_sum) * Vec(scale))
              .store(si + j, lanes(len - j));
        std::fill(si + len, si + T, 0.f);
      }
      weighted_rows(dQ + off, D, ds.data(), T, 1, K[n], K.row_stride, T, D, before);  // dS K
      weighted_rows(dK + off, D, ds.data(), 1, T, Q[n], Q.row_stride, T, D, after);   // dSᵀ Q
      weighted_rows(dV + off, D, p, 1, T, G[n], G.row_stride, T, D, after);           // Pᵀ dO
    }
  });
  return {dq, dk, dv};
}

// Φ(x) from erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, the formula ATen's vectorized
// erf uses): Φ(x) = 1 - q for x >= 0, q for x < 0, q = ½ t r(t) e^(-x²/2), t = 1 / (1 + p|x|/√2).
void gelu_and_slope(const Vec& x, Vec& y, Vec& slope) {
  const Vec one(1.f);
  const Vec t = one / at::vec::fmadd(Vec(0.3275911f * 0.70710678f), x.abs(), one);
  Vec r = at::vec::fmadd(Vec(1.061405429f), t, Vec(-1.453152027f));
  r = at::vec::fmadd(r, t, Vec(1.421413741f));
  r = at::vec::fmadd(r, t, Vec(-0.284496736f));
  r = at::vec::fmadd(r, t, Vec(0.254829592f));
  const Vec e = (x * x * Vec(-0.5f)).exp_u20();
  const Vec q = Vec(0.5f) * r * t * e;
  const Vec cdf = Vec::blendv(q, one - q, x >= Vec(0.f));
  y = x * cdf;
  slope = at::vec::fmadd(x, e * Vec(0.3989422804f), cdf);  // φ(x) = e^(-x²/2) / √(2π)
}

// x: float32 or bfloat16, any shape. Returns y (x's dtype) and the slope (float32), contiguous.
std::tuple<at::Tensor, at::Tensor> gelu(const at::Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), "x must be a CPU tensor");
  const auto x = input.contiguous();
  auto y = at::empty_like(x), slope = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  float* S = slope.data_ptr<float>();
  if (x.scalar_type() == at::kBFloat16) {
    using Half = at::vec::Vectorized<at::BFloat16>;  // 2 x kLanes bfloat16 lanes
    const at::BFloat16* X = x.data_ptr<at::BFloat16>();
    at::BFloat16* Y = y.data_ptr<at::BFloat16>();
    at::parallel_for(0, x.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; i += Half::size()) {
        const int64_t n = std::min<int64_t>(Half::size(), end - i);
        auto [x0, x1] = at::vec::convert_to_float<at::BFloat16>(Half::loadu(X + i, n));
        Vec y0, y1, s0, s1;
        gelu_and_slope(x0, y0, s0);
        gelu_and_slope(x1, y1, s1);
        at::vec::convert_from_float<at::BFloat16>(y0, y1).store(Y + i, n);
        s0.store(S + i, lanes(n));
        s1.store(S + i + kLanes, n - lanes(n));
      }
    });
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "x must be float32 or bfloat16");
    const float* X = x.data_ptr<float>();
    float* Y = y.data_ptr<float>();
    at::parallel_for(0, x.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; i += kLanes) {
        const int64_t n = lanes(end - i);
        Vec yv, sv;
        gelu_and_slope(Vec::loadu(X + i, n), yv, sv);
        yv.store(Y + i, n);
        sv.store(S + i, n);
      }
    });
  }
  return {y, slope};
}

}  // namespace attnlab_cpu

TORCH_LIBRARY(attnlab, m) {
  m.def("gelu(Tensor x) -> (Tensor, Tensor)");
  m.def("attention(Tensor q, Tensor k, Tensor v, bool causal, float scale) -> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor probs, bool causal, "
      "float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(attnlab, CPU, m) {
  m.impl("attention", &attnlab_cpu::attention_forward);
  m.impl("attention_backward", &attnlab_cpu::attention_backward);
  m.impl("gelu", &attnlab_cpu::gelu);
}
