// The steps the penalty kernels share on a block of pixels (phr_penalty.cpp,
// neighbourhood_penalties.cpp). Logits are C rows of `len` pixels, `stride`
// apart. Written for the vectoriser: selects instead of branches, finiteness as
// v - v == 0 (std::isfinite is a call), inlined into the callers' loops and with
// restrict pointers (otherwise GCC leaves these loops scalar).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace cals_kernels {

constexpr int64_t kBlock = 256;       // pixels kept in cache together
constexpr int64_t kChunkBlocks = 64;  // blocks per task; fixes the summation order

// top[i] = max_k z_k[i]; finite[i] = whether every z_k[i] is finite.
__attribute__((always_inline)) inline void block_top_finite(
    const float* __restrict__ z, int64_t num_classes, int64_t stride, int64_t len,
    float* __restrict__ top, unsigned char* __restrict__ finite) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    top[i] = z[i];
    finite[i] = z[i] - z[i] == 0.f;
  }
  for (int64_t k = 1; k < num_classes; ++k) {
    const float* zk = z + k * stride;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      top[i] = zk[i] > top[i] ? zk[i] : top[i];
      finite[i] &= zk[i] - zk[i] == 0.f;
    }
  }
}

// grad_k[i] -= [z_k[i] wins] * share[i] / winners[i]: tied largest logits split
// the winner's share, as the gradient of amax does. `share` is overwritten.
__attribute__((always_inline)) inline void subtract_winner_share(
    const float* __restrict__ z, float* __restrict__ grad, int64_t num_classes,
    int64_t stride, int64_t len, const float* __restrict__ top,
    float* __restrict__ share, const float* __restrict__ winners) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) share[i] /= winners[i] > 0.f ? winners[i] : 1.f;
  for (int64_t k = 0; k < num_classes; ++k) {
    const float* zk = z + k * stride;
    float* gk = grad + k * stride;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const float s = share[i];  // loaded unconditionally, or the select is a branch
      gk[i] -= zk[i] == top[i] ? s : 0.f;
    }
  }
}

// The rows of per-task sums (tasks, R) float64 added in task order, into (R):
// tasks cover fixed ranges of pixels, so the result does not depend on how many
// threads ran them (at::sum may split a long reduction among threads).
inline at::Tensor sum_in_task_order(const at::Tensor& partials) {
  const int64_t tasks = partials.size(0), row = partials.size(1);
  at::Tensor total = at::zeros({row}, partials.options());
  double* into = total.data_ptr<double>();
  const double* from = partials.data_ptr<double>();
  for (int64_t task = 0; task < tasks; ++task)
    for (int64_t j = 0; j < row; ++j) into[j] += from[task * row + j];
  return total;
}

}  // namespace cals_kernels
