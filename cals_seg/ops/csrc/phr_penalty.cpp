// The CALS penalty with the PHR function, fused into one pass over the logits.
//
// The same mathematics as cals_seg/functional/cals.py (Liu et al., CVPR 2023;
// docs/methods.md), which stays the reference and the path for other devices. Eager PyTorch needs a dozen passes
// over an (N, C, H, W) tensor for the penalty, its gradient and the round sums;
// here each block of pixels is read from memory once, kept in cache while every
// quantity is computed, and the gradient direction is written once.
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include "block_ops.h"
#include "checks.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace {

using namespace cals_kernels;

// Per-task partial sums, laid out as [sq(C), clipped(C), distance(C), finite, nonfinite].
struct Partial {
  double* sq;
  double* clipped;
  double* distance;
  double* counts;
};

// The loops are written for the vectoriser: no early exits, selects instead of
// branches, finiteness as v - v == 0 (std::isfinite is a call), and reductions
// under `omp simd` so that they may be reordered across lanes.
template <bool kGrad, bool kStats>
void penalty_block(const float* z, const bool* valid, const float* offset,
                   const float* slope, float* direction, int64_t num_classes,
                   int64_t stride, int64_t len, float lambd_min, float lambd_max,
                   const Partial& out) {
  float top[kBlock], share[kBlock], winners[kBlock], usable[kBlock], kept[kBlock];
  unsigned char finite[kBlock];
  block_top_finite(z, num_classes, stride, len, top, finite);
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    share[i] = 0.f;
    winners[i] = 0.f;
    usable[i] = valid[i] ? 1.f : 0.f;
    kept[i] = valid[i] && finite[i] ? 1.f : 0.f;
  }
  for (int64_t k = 0; k < num_classes; ++k) {
    const float* zk = z + k * stride;
    float* gk = direction + k * stride;
    const float a = offset[k], b = slope[k];
    float sq = 0.f, clipped = 0.f, distance = 0.f;
#pragma omp simd reduction(+ : sq, clipped, distance)
    for (int64_t i = 0; i < len; ++i) {
      const float d = top[i] - zk[i];
      const float y = a + b * d;
      // y < 0 rather than std::max: a NaN stays NaN, as torch.clamp_min keeps it.
      const float x = usable[i] > 0.f ? (y < 0.f ? 0.f : y) : 0.f;
      share[i] += x;
      winners[i] += zk[i] == top[i] ? 1.f : 0.f;
      sq += x * x;
      if (kStats) {
        const float c = x < lambd_min ? lambd_min : (x > lambd_max ? lambd_max : x);
        clipped += kept[i] > 0.f ? c : 0.f;
        distance += kept[i] > 0.f ? d : 0.f;
      }
      if (kGrad) gk[i] = x;
    }
    out.sq[k] += sq;
    if (kStats) {
      out.clipped[k] += clipped;
      out.distance[k] += distance;
    }
  }
  if (kGrad) {
    subtract_winner_share(z, direction, num_classes, stride, len, top, share, winners);
  }
  if (kStats) {
    float num_kept = 0.f, num_nonfinite = 0.f;
#pragma omp simd reduction(+ : num_kept, num_nonfinite)
    for (int64_t i = 0; i < len; ++i) {
      num_kept += kept[i];
      num_nonfinite += usable[i] - kept[i];
    }
    out.counts[0] += num_kept;
    out.counts[1] += num_nonfinite;
  }
}

template <bool kGrad, bool kStats>
void penalty_all(const at::Tensor& logits, const at::Tensor& valid,
                 const at::Tensor& offset, const at::Tensor& slope,
                 at::Tensor& direction, at::Tensor& partials, float lambd_min,
                 float lambd_max) {
  const int64_t num_images = logits.size(0), num_classes = logits.size(1);
  const int64_t num_pixels = logits.size(2);
  const int64_t blocks_per_image = (num_pixels + kBlock - 1) / kBlock;
  const int64_t num_blocks = num_images * blocks_per_image;
  const float* z = logits.data_ptr<float>();
  const bool* keep = valid.data_ptr<bool>();
  float* grad = kGrad ? direction.data_ptr<float>() : nullptr;
  double* sums = partials.data_ptr<double>();
  const int64_t row = partials.size(1);
  at::parallel_for(0, partials.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      double* p = sums + task * row;
      const Partial out{p, p + num_classes, p + 2 * num_classes, p + 3 * num_classes};
      const int64_t last = std::min(num_blocks, (task + 1) * kChunkBlocks);
      for (int64_t block = task * kChunkBlocks; block < last; ++block) {
        const int64_t n = block / blocks_per_image;
        const int64_t start = (block % blocks_per_image) * kBlock;
        const int64_t offset_in_tensor = n * num_classes * num_pixels + start;
        penalty_block<kGrad, kStats>(
            z + offset_in_tensor, keep + n * num_pixels + start,
            offset.data_ptr<float>(), slope.data_ptr<float>(),
            kGrad ? grad + offset_in_tensor : nullptr, num_classes, num_pixels,
            std::min(kBlock, num_pixels - start), lambd_min, lambd_max, out);
      }
    }
  });
}

}  // namespace

// Args: logits (N, C, P) float32, valid (N, P) bool, offset and slope (C) float32
// with P' = max(0, offset + slope * (max_j z_j - z_k)) at valid pixels.
// Returns, by name: "squares", sum P'^2 (C); with need_grad, "direction", the
// gradient direction P' - [k wins] * sum_j P'_j / #winners (N, C, P); with
// need_statistics, over valid pixels whose logits are all finite, "clipped",
// sum clip(P', lambd_min, lambd_max) (C), "distance", sum (max_j z_j - z_k) (C),
// "num_finite" and, over the other valid pixels, "num_nonfinite" (scalars).
// Sums are float64.
std::map<std::string, at::Tensor> phr_penalty(const at::Tensor& logits,
                                              const at::Tensor& valid,
                                              const at::Tensor& offset,
                                              const at::Tensor& slope, bool need_grad,
                                              bool need_statistics, double lambd_min,
                                              double lambd_max) {
  constexpr const char* kName = "phr_penalty";
  check_tensor(kName, "logits (N, C, P)", logits, at::kFloat,
               {kAnySize, kAnySize, kAnySize});
  const int64_t num_images = logits.size(0), num_classes = logits.size(1);
  TORCH_CHECK(num_classes > 0, kName, ": logits have no classes");
  check_tensor(kName, "valid (N, P)", valid, at::kBool, {num_images, logits.size(2)});
  check_tensor(kName, "offset (C)", offset, at::kFloat, {num_classes});
  check_tensor(kName, "slope (C)", slope, at::kFloat, {num_classes});
  at::Tensor direction =
      need_grad ? at::empty_like(logits) : at::empty({0}, logits.options());
  const int64_t blocks = num_images * ((logits.size(2) + kBlock - 1) / kBlock);
  const int64_t tasks = std::max<int64_t>(1, (blocks + kChunkBlocks - 1) / kChunkBlocks);
  at::Tensor partials =
      at::zeros({tasks, 3 * num_classes + 2}, logits.options().dtype(at::kDouble));
  const float lo = static_cast<float>(lambd_min), hi = static_cast<float>(lambd_max);
  if (need_grad && need_statistics)
    penalty_all<true, true>(logits, valid, offset, slope, direction, partials, lo, hi);
  else if (need_grad)
    penalty_all<true, false>(logits, valid, offset, slope, direction, partials, lo, hi);
  else if (need_statistics)
    penalty_all<false, true>(logits, valid, offset, slope, direction, partials, lo, hi);
  else
    penalty_all<false, false>(logits, valid, offset, slope, direction, partials, lo, hi);
  // In the layout of Partial: [sq (C), clipped (C), distance (C), finite, nonfinite].
  const at::Tensor sums = sum_in_task_order(partials);
  std::map<std::string, at::Tensor> out{{"squares", sums.narrow(0, 0, num_classes)}};
  if (need_grad) out["direction"] = direction;
  if (need_statistics) {
    out["clipped"] = sums.narrow(0, num_classes, num_classes);
    out["distance"] = sums.narrow(0, 2 * num_classes, num_classes);
    out["num_finite"] = sums[3 * num_classes];
    out["num_nonfinite"] = sums[3 * num_classes + 1];
  }
  return out;
}
