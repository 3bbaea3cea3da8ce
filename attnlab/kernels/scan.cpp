// attnlab's CPU kernel for Mamba's selective scan (attnlab/layers/mamba.py), float32:
//
//   h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t,   y_t = C_t · h_t,   h_{-1} = 0
//
// for u, Δ: (Bt, T, E), A: (E, N), B, C: (Bt, T, N). The recurrence in plain PyTorch builds a
// (Bt, T, E, N) tensor of states several times over and keeps it for the backward pass; here a
// task is one batch row and one block of channels, as many as a vector has lanes, whose N states
// stay in vectors while the task walks along T. The forward pass keeps only the states at the
// start of every `chunk` positions (Bt, T / chunk, N, E); the backward pass recomputes one chunk's
// states from there into a buffer that stays in cache and walks back through it. The sums over
// channels (for B's and C's gradients) and over the batch (for A's) are taken from per-task
// partial sums in a fixed order, so results do not depend on the number of threads.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <vector>

namespace attnlab_scan {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr int64_t kMaxState = 64;  // N: the states of a task live in an array of this many vectors

float sum_of(Vec v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

// The shapes, the inputs and one task's place: batch row b, channels [e, e + w).
struct Scan {
  int64_t T, E, N, blocks, chunks, chunk;
  const float *u, *dt, *At, *B, *C;  // At: A transposed, (N, E)
  int64_t b = 0, e = 0, w = 0;

  Scan(const at::Tensor& u_, const at::Tensor& dt_, const at::Tensor& At_, const at::Tensor& B_,
       const at::Tensor& C_, int64_t chunk_)
      : T(u_.size(1)), E(u_.size(2)), N(B_.size(2)), blocks((E + kLanes - 1) / kLanes),
        chunks((T + chunk_ - 1) / chunk_), chunk(chunk_), u(u_.data_ptr<float>()),
        dt(dt_.data_ptr<float>()), At(At_.data_ptr<float>()), B(B_.data_ptr<float>()),
        C(C_.data_ptr<float>()) {}

  void task(int64_t n) {
    b = n / blocks, e = (n % blocks) * kLanes, w = std::min(kLanes, E - e);
  }
  int64_t pos(int64_t t) const { return (b * T + t) * E + e; }  // (b, t, e) in u, Δ, y
  const float* row(const float* P, int64_t t) const { return P + (b * T + t) * N; }  // B, C
  Vec load(const float* P, int64_t t) const { return Vec::loadu(P + pos(t), w); }
  int64_t kept(int64_t k, int64_t n) const { return ((b * chunks + k) * N + n) * E + e; }  // starts

  // One position: h <- exp(Δ A) h + Δ u B; the decays go to a (when given).
  void step(Vec* h, int64_t t, Vec* a = nullptr) const {
    const Vec dv = load(dt, t), du = dv * load(u, t);
    const float* Bt = row(B, t);
    for (int64_t n = 0; n < N; ++n) {
      const Vec decay = (dv * Vec::loadu(At + n * E + e, w)).exp_u20();
      h[n] = at::vec::fmadd(decay, h[n], du * Vec(Bt[n]));
      if (a) a[n] = decay;
    }
  }
};

void check(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim && t.scalar_type() == at::kFloat && t.device().is_cpu(), name,
              " must be a ", dim, "-dimensional float32 CPU tensor");
}

std::tuple<at::Tensor, at::Tensor> scan_forward(const at::Tensor& u_, const at::Tensor& dt_,
                                                const at::Tensor& A, const at::Tensor& B_,
                                                const at::Tensor& C_, int64_t chunk) {
  check(u_, 3, "u"), check(dt_, 3, "dt"), check(A, 2, "A"), check(B_, 3, "B"), check(C_, 3, "C");
  const auto u = u_.contiguous(), dt = dt_.contiguous(), B = B_.contiguous(), C = C_.contiguous();
  const auto At = A.t().contiguous();
  TORCH_CHECK(dt.sizes() == u.sizes() && B.sizes() == C.sizes() && A.size(0) == u.size(2) &&
                  B.size(0) == u.size(0) && B.size(1) == u.size(1) && B.size(2) == A.size(1),
              "selective_scan: shapes do not agree");
  TORCH_CHECK(A.size(1) <= kMaxState && chunk > 0, "selective_scan: at most 64 states per channel");
  const Scan s(u, dt, At, B, C, chunk);
  auto y = at::empty(u.sizes(), u.options());
  auto starts = at::empty({u.size(0), s.chunks, s.N, s.E}, u.options());
  float *Y = y.data_ptr<float>(), *S = starts.data_ptr<float>();
  at::parallel_for(0, u.size(0) * s.blocks, 1, [&](int64_t begin, int64_t end) {
    Scan task = s;
    Vec h[kMaxState];
    for (int64_t i = begin; i < end; ++i) {
      task.task(i);
      std::fill(h, h + task.N, Vec(0.f));
      for (int64_t t = 0; t < task.T; ++t) {
        if (t % chunk == 0)
          for (int64_t n = 0; n < task.N; ++n) h[n].store(S + task.kept(t / chunk, n), task.w);
        task.step(h, t);
        const float* Ct = task.row(task.C, t);
        Vec acc(0.f);
        for (int64_t n = 0; n < task.N; ++n) acc = at::vec::fmadd(h[n], Vec(Ct[n]), acc);
        acc.store(Y + task.pos(t), task.w);
      }
    }
  });
  return {y, starts};
}

// Gradients of u, Δ, A, B and C from that of y (and the states the forward pass kept).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_backward(
    const at::Tensor& grad_, const at::Tensor& u_, const at::Tensor& dt_, const at::Tensor& A,
    const at::Tensor& B_, const at::Tensor& C_, const at::Tensor& starts_, int64_t chunk) {
  const auto grad = grad_.contiguous(), u = u_.contiguous(), dt = dt_.contiguous(),
             B = B_.contiguous(), C = C_.contiguous(), starts = starts_.contiguous();
  const auto At = A.t().contiguous();
  const Scan s(u, dt, At, B, C, chunk);
  const int64_t batch = u.size(0), tasks = batch * s.blocks, T = s.T, N = s.N, E = s.E;
  auto du = at::empty(u.sizes(), u.options()), ddt = at::empty(u.sizes(), u.options());
  // partial sums: dA per batch row (Bt, N, E); dB and dC per task (tasks, T, N)
  std::vector<float> dA_rows(batch * N * E), dB_tasks(tasks * T * N), dC_tasks(tasks * T * N);
  const float *G = grad.data_ptr<float>(), *S = starts.data_ptr<float>();
  float *dU = du.data_ptr<float>(), *dDt = ddt.data_ptr<float>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    Scan task = s;
    std::vector<Vec> hs(chunk * N), as(chunk * N);  // one chunk's states and decays
    Vec h[kMaxState], dh[kMaxState], dA[kMaxState], first[kMaxState];
    for (int64_t i = begin; i < end; ++i) {
      task.task(i);
      float *dB = dB_tasks.data() + i * T * N, *dC = dC_tasks.data() + i * T * N;
      std::fill(dh, dh + N, Vec(0.f));
      std::fill(dA, dA + N, Vec(0.f));
      for (int64_t k = s.chunks - 1; k >= 0; --k) {
        const int64_t t0 = k * chunk, t1 = std::min(T, t0 + chunk);
        for (int64_t n = 0; n < N; ++n) h[n] = first[n] = Vec::loadu(S + task.kept(k, n), task.w);
        for (int64_t t = t0; t < t1; ++t) {
          task.step(h, t, as.data() + (t - t0) * N);
          std::copy(h, h + N, hs.begin() + (t - t0) * N);
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const Vec g = task.load(G, t), uv = task.load(task.u, t), dv = task.load(task.dt, t);
          const Vec du_t = dv * uv;
          const Vec* ht = hs.data() + (t - t0) * N;
          const Vec* prev = t > t0 ? ht - N : first;
          const Vec* decay = as.data() + (t - t0) * N;
          const float *Bt = task.row(task.B, t), *Ct = task.row(task.C, t);
          Vec d_du(0.f), d_dv(0.f);
          for (int64_t n = 0; n < N; ++n) {
            const Vec q = at::vec::fmadd(g, Vec(Ct[n]), dh[n]);  // dL/dh_t
            dC[t * N + n] = sum_of(g * ht[n]);
            dB[t * N + n] = sum_of(q * du_t);
            d_du = at::vec::fmadd(q, Vec(Bt[n]), d_du);
            const Vec r = q * prev[n] * decay[n];  // dL/d(Δ A) of this state
            d_dv = at::vec::fmadd(r, Vec::loadu(task.At + n * E + task.e, task.w), d_dv);
            dA[n] = at::vec::fmadd(r, dv, dA[n]);
            dh[n] = q * decay[n];
          }
          (d_du * dv).store(dU + task.pos(t), task.w);
          at::vec::fmadd(d_du, uv, d_dv).store(dDt + task.pos(t), task.w);
        }
      }
      for (int64_t n = 0; n < N; ++n) dA[n].store(dA_rows.data() + (task.b * N + n) * E + task.e, task.w);
    }
  });
  auto dA = at::empty({E, N}, A.options());
  auto dB = at::empty(B.sizes(), B.options()), dC = at::empty(C.sizes(), C.options());
  float *dAp = dA.data_ptr<float>(), *dBp = dB.data_ptr<float>(), *dCp = dC.data_ptr<float>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n) {
      float total = 0.f;
      for (int64_t b = 0; b < batch; ++b) total += dA_rows[(b * N + n) * E + e];
      dAp[e * N + n] = total;
    }
  at::parallel_for(0, batch * T, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      for (int64_t n = 0; n < N; ++n) {
        float sb = 0.f, sc = 0.f;
        for (int64_t j = b * s.blocks; j < (b + 1) * s.blocks; ++j) {
          sb += dB_tasks[(j * T + t) * N + n];
          sc += dC_tasks[(j * T + t) * N + n];
        }
        dBp[bt * N + n] = sb, dCp[bt * N + n] = sc;
      }
    }
  });
  return {du, ddt, dA, dB, dC};
}

}  // namespace attnlab_scan

TORCH_LIBRARY_FRAGMENT(attnlab, m) {
  m.def("selective_scan(Tensor u, Tensor dt, Tensor A, Tensor B, Tensor C, int chunk) -> "
        "(Tensor, Tensor)");
  m.def("selective_scan_backward(Tensor grad, Tensor u, Tensor dt, Tensor A, Tensor B, Tensor C, "
        "Tensor starts, int chunk) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(attnlab, CPU, m) {
  m.impl("selective_scan", &attnlab_scan::scan_forward);
  m.impl("selective_scan_backward", &attnlab_scan::scan_backward);
}
