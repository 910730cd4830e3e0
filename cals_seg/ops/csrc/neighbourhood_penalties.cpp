// Penalties whose constraints depend on where a pixel is, fused like
// phr_penalty.cpp: multipliers indexed by groups of (pixel, logit) constraints
// (CRaC's class x region, CALS per label) and targets formed from the labels
// around each pixel (NACL, CRaC).
//
// The same mathematics as cals_seg/functional/cals.py (grouped_constraint_penalty)
// and cals_seg/functional/neighbourhood.py (neighbourhood_proportions), which stay the
// reference and the path for other devices. In PyTorch operations the targets
// are an (N, C, H, W) tensor written and read again, and a group index another
// one, in int64; here a block of pixels forms its label proportions in cache
// from the (N, H, W) labels, reads its logits once and writes the gradient
// direction once.
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include "block_ops.h"
#include "checks.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using namespace cals_kernels;

// One image's labels, padded by half the window on every side with -1 (the
// value of ignored pixels): pixels beyond the border are not neighbours, and a
// block's neighbours along any offset are contiguous in memory.
struct Neighbourhood {
  const int32_t* padded;
  int64_t padded_width;
  const float* weights;  // (size, size), row-major
  int64_t size;
};

// A run of at most kBlock pixels within one image row.
struct Block {
  int64_t n, y, x, len;
  int64_t start(int64_t width) const { return y * width + x; }
};

// tau[k * kBlock + i] = scale_i * (weighted share of class k among the valid
// neighbours of pixel i of the block); 0 for every class at an ignored pixel.
// Most pixels see only their own label: their proportions are one-hot, found
// by size^2 vectorised comparisons. Only the others scatter their window.
void block_proportions(const Neighbourhood& image, const Block& block,
                       const float* scale, int64_t num_classes, float* tau) {
  const int64_t len = block.len, half = image.size / 2;
  const int32_t* centre =
      image.padded + (block.y + half) * image.padded_width + block.x + half;
  float mass[kBlock], factor[kBlock];
  int32_t uniform[kBlock];  // int32 like the labels: mixed widths stop the vectoriser
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    mass[i] = 0.f;
    uniform[i] = 1;
  }
  for (int64_t dy = 0; dy < image.size; ++dy) {
    for (int64_t dx = 0; dx < image.size; ++dx) {
      const int32_t* neighbour =
          image.padded + (block.y + dy) * image.padded_width + block.x + dx;
      const float weight = image.weights[dy * image.size + dx];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const int32_t label = neighbour[i];
        mass[i] += label >= 0 ? weight : 0.f;
        uniform[i] &= (label < 0) | (label == centre[i]);
      }
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < len; ++i)
    factor[i] = centre[i] >= 0 ? (scale ? scale[i] : 1.f) : 0.f;
  for (int32_t k = 0; k < num_classes; ++k) {
    float* tk = tau + k * kBlock;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) tk[i] = centre[i] == k ? factor[i] : 0.f;
  }
  for (int64_t i = 0; i < len; ++i) {
    if (uniform[i] || centre[i] < 0) continue;
    for (int64_t k = 0; k < num_classes; ++k) tau[k * kBlock + i] = 0.f;
    // A valid pixel is its own neighbour (every kernel's centre weight is > 0),
    // so its mass is > 0.
    const float share = factor[i] / mass[i];
    for (int64_t dy = 0; dy < image.size; ++dy) {
      const int32_t* row = image.padded + (block.y + dy) * image.padded_width + block.x;
      for (int64_t dx = 0; dx < image.size; ++dx) {
        const int32_t label = row[i + dx];
        if (label >= 0) tau[label * kBlock + i] += image.weights[dy * image.size + dx] * share;
      }
    }
  }
}

// Calls body(task, block, scratch) for every block (a run of pixels within one
// row), tasks in parallel, each with its own scratch of C block rows.
template <typename Body>
void for_each_block(int64_t num_images, int64_t height, int64_t width,
                    int64_t num_tasks, int64_t num_classes, const Body& body) {
  const int64_t blocks_per_row = (width + kBlock - 1) / kBlock;
  const int64_t num_blocks = num_images * height * blocks_per_row;
  at::parallel_for(0, num_tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(num_classes * kBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t last = std::min(num_blocks, (task + 1) * kChunkBlocks);
      for (int64_t index = task * kChunkBlocks; index < last; ++index) {
        const int64_t row = index / blocks_per_row;
        const int64_t x = (index % blocks_per_row) * kBlock;
        const Block block{row / height, row % height, x, std::min(kBlock, width - x)};
        body(task, block, scratch.data());
      }
    }
  });
}

int64_t num_tasks(int64_t num_images, int64_t height, int64_t width) {
  const int64_t blocks = num_images * height * ((width + kBlock - 1) / kBlock);
  return std::max<int64_t>(1, (blocks + kChunkBlocks - 1) / kChunkBlocks);
}

// Checks the arguments every neighbourhood kernel takes; returns whether a
// window (label proportions) is given. The labels' values are checked by the
// pass that reads them (pad_labels, grouped_block).
bool check_inputs(const char* name, const at::Tensor& logits, const at::Tensor& label,
                  int64_t height, int64_t width, const at::Tensor& weights) {
  check_tensor(name, "logits (N, C, P)", logits, at::kFloat,
               {kAnySize, kAnySize, kAnySize});
  TORCH_CHECK(logits.size(1) > 0, name, ": logits have no classes");
  TORCH_CHECK(height >= 0 && width >= 0 && height * width == logits.size(2), name,
              ": the map is ", height, " x ", width, " pixels but the logits have P = ",
              logits.size(2));
  check_tensor(name, "label (N, P)", label, at::kInt, {logits.size(0), logits.size(2)});
  const bool window = check_optional_tensor(name, "weights (k, k)", weights, at::kFloat,
                                            {kAnySize, kAnySize});
  TORCH_CHECK(!window || (weights.size(0) == weights.size(1) && weights.size(0) % 2 == 1),
              name, ": the window must be square with an odd side, got ",
              weights.sizes());
  return window;
}

// Throws, naming the first label outside [0, C) other than the ignore value -1.
void check_labels(const char* name, const at::Tensor& label, const FirstIndex& bad,
                  int64_t num_classes) {
  if (!bad.found()) return;
  const int64_t index = bad.get(), num_pixels = label.size(1);
  TORCH_CHECK(false, name, ": label ", label.data_ptr<int32_t>()[index], " of pixel ",
              index % num_pixels, " in image ", index / num_pixels,
              " is outside [0, C = ", num_classes, ") and is not the ignore value -1");
}

inline bool label_in_range(int32_t label, int64_t num_classes) {
  return label >= -1 && label < num_classes;
}

// Per-task partial sums: [value, non-finite valid pixels, clip(P') (G), distances
// (G), pairs (G)].
struct GroupedSums {
  double* value;
  double* nonfinite;
  double* clipped;
  double* distance;
  double* count;
};

struct GroupedInputs {
  const float* z;        // (N, C, P)
  const int32_t* label;  // (N, P), -1 where ignored
  const int32_t* base;   // (N, P): group(i, k) = base_i + logit_stride * k
  int64_t logit_stride;  // >= 0
  int64_t num_groups;
  const float *offset, *slope, *lambd_squared, *half_inverse_rho;  // (G)
  const Neighbourhood* targets;  // null: distance constraints
  int64_t padded_size;           // elements of one image's padded labels
  const float* target_scale;     // (N, P) or null
  int64_t num_classes, num_pixels, width;
  float lambd_min, lambd_max;
  bool group_in_range(int32_t base_i) const {
    return base_i >= 0 && base_i + logit_stride * (num_classes - 1) < num_groups;
  }
};

// The first pixels, by index in (N, P), whose group or label is out of range.
struct OutOfRange {
  FirstIndex group, label;
};

// Whether every pixel of a block has its groups in [0, G) and, where the padding
// pass has not checked them (no targets), a label in [-1, C); otherwise notes
// the pixels that do not. Min and max in one vectorised pass over the block's
// two int32 rows, which the block reads next anyway.
template <bool kTargets>
bool block_in_range(const GroupedInputs& in, const int32_t* label,
                    const int32_t* base, int64_t len, int64_t start,
                    OutOfRange& out_of_range) {
  int32_t base_lo = std::numeric_limits<int32_t>::max();
  int32_t base_hi = std::numeric_limits<int32_t>::min();
  int32_t label_lo = -1, label_hi = -1;
#pragma omp simd reduction(min : base_lo, label_lo) reduction(max : base_hi, label_hi)
  for (int64_t i = 0; i < len; ++i) {
    base_lo = std::min(base_lo, base[i]);
    base_hi = std::max(base_hi, base[i]);
    if (!kTargets) {
      label_lo = std::min(label_lo, label[i]);
      label_hi = std::max(label_hi, label[i]);
    }
  }
  if (len == 0 || (in.group_in_range(base_lo) && in.group_in_range(base_hi) &&
                   label_in_range(label_lo, in.num_classes) &&
                   label_in_range(label_hi, in.num_classes)))
    return true;
  for (int64_t i = 0; i < len; ++i) {
    if (!in.group_in_range(base[i])) out_of_range.group.note(start + i);
    if (!kTargets && !label_in_range(label[i], in.num_classes))
      out_of_range.label.note(start + i);
  }
  return false;
}

// P' = max(0, offset_g + slope_g * d) with d = max_j z_j - z_k (distances) or
// |r_k - z_k| (targets), P = (P'^2 - lambd_g^2) / (2 rho_g) at valid pixels.
template <bool kGrad, bool kStats, bool kTargets>
void grouped_block(const GroupedInputs& in, const Block& block, float* tau,
                   float* direction, const GroupedSums& out, OutOfRange& out_of_range) {
  const int64_t c_count = in.num_classes, stride = in.num_pixels, len = block.len;
  const int64_t start = block.n * stride + block.start(in.width);  // in (N, P)
  const int64_t logit_start = start + block.n * (c_count - 1) * stride;  // (N, C, P)
  const float* z = in.z + logit_start;
  const int32_t* label = in.label + start;
  const int32_t* base = in.base + start;
  // Skipped when out of range: the caller throws after the pass.
  if (!block_in_range<kTargets>(in, label, base, len, start, out_of_range)) return;
  float* grad = kGrad ? direction + logit_start : nullptr;
  float top[kBlock], share[kBlock], winners[kBlock], usable[kBlock], kept[kBlock];
  float x_row[kBlock], d_row[kBlock];
  unsigned char finite[kBlock];
  if (kTargets) {
    Neighbourhood image = *in.targets;
    image.padded += block.n * in.padded_size;
    block_proportions(image, block, in.target_scale ? in.target_scale + start : nullptr,
                      c_count, tau);
  }
  if (!kTargets || kStats)  // targets need neither top nor finiteness otherwise
    block_top_finite(z, c_count, stride, len, top, finite);
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    share[i] = 0.f;
    winners[i] = 0.f;
    usable[i] = label[i] >= 0 ? 1.f : 0.f;
    kept[i] = kStats && label[i] >= 0 && finite[i] ? 1.f : 0.f;
  }
  double value = 0.0;
  // Local copies: read through `in`, every store to the gradient could alias
  // them, and the vectoriser would give up.
  const float *offset = in.offset, *slope = in.slope;
  const float *lambd_squared = in.lambd_squared, *half_inverse_rho = in.half_inverse_rho;
  for (int64_t k = 0; k < c_count; ++k) {
    const float* zk = z + k * stride;
    const float* tk = tau + k * kBlock;
    float* gk = kGrad ? grad + k * stride : nullptr;
    const int64_t shift = in.logit_stride * k;
    float block_value = 0.f;
#pragma omp simd reduction(+ : block_value)
    for (int64_t i = 0; i < len; ++i) {
      const int64_t g = base[i] + shift;
      const float d = kTargets ? std::fabs(tk[i] - zk[i]) : top[i] - zk[i];
      const float y = offset[g] + slope[g] * d;
      // y < 0 rather than std::max: a NaN stays NaN, as torch.clamp_min keeps it.
      const float x = usable[i] > 0.f ? (y < 0.f ? 0.f : y) : 0.f;
      block_value += usable[i] * (x * x - lambd_squared[g]) * half_inverse_rho[g];
      if (kGrad && kTargets) {
        // d P / d z = P' sign(z - r); the caller's scale is positive.
        gk[i] = x * (static_cast<float>(zk[i] > tk[i]) -
                     static_cast<float>(zk[i] < tk[i]));
      } else if (kGrad) {
        share[i] += x;
        winners[i] += zk[i] == top[i] ? 1.f : 0.f;
        gk[i] = x;
      }
      if (kStats) {
        x_row[i] = x;
        d_row[i] = d;
      }
    }
    value += block_value;
    if (kStats) {
      // Groups vary from pixel to pixel: a scalar scatter, on the statistics
      // passes only (training steps of source='holdout' skip it).
      for (int64_t i = 0; i < len; ++i) {
        if (kept[i] == 0.f) continue;
        const int64_t g = base[i] + shift;
        const float x = x_row[i];
        out.clipped[g] += x < in.lambd_min ? in.lambd_min
                                           : (x > in.lambd_max ? in.lambd_max : x);
        out.distance[g] += d_row[i];
        out.count[g] += 1.0;
      }
    }
  }
  *out.value += value;
  if (kGrad && !kTargets) {
    subtract_winner_share(z, grad, c_count, stride, len, top, share, winners);
  }
  if (kStats) {
    float num_nonfinite = 0.f;
#pragma omp simd reduction(+ : num_nonfinite)
    for (int64_t i = 0; i < len; ++i) num_nonfinite += usable[i] - kept[i];
    *out.nonfinite += num_nonfinite;
  }
}

template <bool kGrad, bool kStats, bool kTargets>
void grouped_all(const GroupedInputs& in, int64_t num_images, int64_t height,
                 float* direction, at::Tensor& partials, int64_t num_groups,
                 OutOfRange& out_of_range) {
  double* sums = partials.data_ptr<double>();
  const int64_t row = partials.size(1);
  for_each_block(num_images, height, in.width, partials.size(0), in.num_classes,
                 [&](int64_t task, const Block& block, float* tau) {
                   double* p = sums + task * row;
                   const GroupedSums out{p, p + 1, p + 2, p + 2 + num_groups,
                                         p + 2 + 2 * num_groups};
                   grouped_block<kGrad, kStats, kTargets>(in, block, tau, direction,
                                                          out, out_of_range);
                 });
}

// The labels padded with -1 by half the window, (N, H + 2h, W + 2h) int32, in
// one pass that also checks that every label is in [0, C) or -1: the window of a
// pixel reads its neighbours' labels, and each indexes the proportions.
at::Tensor pad_labels(const char* name, const at::Tensor& label, int64_t height,
                      int64_t width, const at::Tensor& weights, int64_t num_classes) {
  const int64_t half = weights.size(0) / 2, num_images = label.size(0);
  const int64_t padded_height = height + 2 * half, padded_width = width + 2 * half;
  at::Tensor padded = at::full({num_images, padded_height, padded_width}, -1,
                               label.options());
  const int32_t* from = label.data_ptr<int32_t>();
  int32_t* into = padded.data_ptr<int32_t>();
  FirstIndex bad;
  const int64_t rows_per_task = 1 + kBlock * kChunkBlocks / std::max<int64_t>(width, 1);
  at::parallel_for(0, num_images * height, rows_per_task, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int32_t* source = from + row * width;
      int32_t* target = into +
                        ((row / height) * padded_height + row % height + half) *
                            padded_width +
                        half;
      int32_t lo = -1, hi = -1;
#pragma omp simd reduction(min : lo) reduction(max : hi)
      for (int64_t x = 0; x < width; ++x) {
        target[x] = source[x];
        lo = std::min(lo, source[x]);
        hi = std::max(hi, source[x]);
      }
      if (label_in_range(lo, num_classes) && label_in_range(hi, num_classes)) continue;
      for (int64_t x = 0; x < width; ++x)
        if (!label_in_range(source[x], num_classes)) bad.note(row * width + x);
    }
  });
  check_labels(name, label, bad, num_classes);
  return padded;
}

}  // namespace

// Args: logits (N, C, P) float32; label (N, P) int32 in [0, C), -1 where
// ignored, of images H x W; group_base (N, P) int32 and logit_stride >= 0, the
// group of (i, k) being base_i + logit_stride * k, in [0, G) at every pixel;
// offset, slope, lambd, rho (G) float32; weights (k, k) float32 for targets
// r_ik = target_scale_i * tau_ik (the label proportions of the window), or an
// empty tensor for distance constraints; target_scale (N, P) float32 or empty (1).
// Returns, by name: "value", sum P (float64 scalar); with need_grad,
// "direction", the gradient direction (P' - [k wins] * share for distances,
// P' sign(z - r) for targets; (N, C, P)); with need_statistics, float64 sums over
// valid pixels whose logits are all finite: "clipped", sum clip(P') (G),
// "distance", sum d (G), "count", pairs (G), and "num_nonfinite", the other
// valid pixels.
std::map<std::string, at::Tensor> grouped_phr_penalty(
    const at::Tensor& logits, const at::Tensor& label, int64_t height, int64_t width,
    const at::Tensor& group_base, int64_t logit_stride, const at::Tensor& offset,
    const at::Tensor& slope, const at::Tensor& lambd, const at::Tensor& rho,
    const at::Tensor& weights, const at::Tensor& target_scale, bool need_grad,
    bool need_statistics, double lambd_min, double lambd_max) {
  constexpr const char* kName = "grouped_phr_penalty";
  const bool targets = check_inputs(kName, logits, label, height, width, weights);
  const int64_t num_groups = offset.numel();
  check_tensor(kName, "offset (G)", offset, at::kFloat, {kAnySize});
  check_tensor(kName, "slope (G)", slope, at::kFloat, {num_groups});
  check_tensor(kName, "lambd (G)", lambd, at::kFloat, {num_groups});
  check_tensor(kName, "rho (G)", rho, at::kFloat, {num_groups});
  check_tensor(kName, "group_base (N, P)", group_base, at::kInt,
               {label.size(0), label.size(1)});
  TORCH_CHECK(logit_stride >= 0, kName, ": logit_stride must be >= 0, got ",
              logit_stride);
  const bool scaled = check_optional_tensor(kName, "target_scale (N, P)", target_scale,
                                            at::kFloat, {label.size(0), label.size(1)});
  const int64_t num_classes = logits.size(1);
  const at::Tensor padded =
      targets ? pad_labels(kName, label, height, width, weights, num_classes) : label;
  const Neighbourhood image{padded.data_ptr<int32_t>(), targets ? padded.size(2) : 0,
                            targets ? weights.data_ptr<float>() : nullptr,
                            targets ? weights.size(0) : 0};
  const at::Tensor lambd_squared = lambd * lambd;
  const at::Tensor half_inverse_rho = 0.5 / rho;
  GroupedInputs in{logits.data_ptr<float>(),
                   label.data_ptr<int32_t>(),
                   group_base.data_ptr<int32_t>(),
                   logit_stride,
                   num_groups,
                   offset.data_ptr<float>(),
                   slope.data_ptr<float>(),
                   lambd_squared.data_ptr<float>(),
                   half_inverse_rho.data_ptr<float>(),
                   targets ? &image : nullptr,
                   targets ? padded.size(1) * padded.size(2) : 0,
                   scaled ? target_scale.data_ptr<float>() : nullptr,
                   num_classes,
                   logits.size(2),
                   width,
                   static_cast<float>(lambd_min),
                   static_cast<float>(lambd_max)};
  at::Tensor direction =
      need_grad ? at::empty_like(logits) : at::empty({0}, logits.options());
  at::Tensor partials =
      at::zeros({num_tasks(logits.size(0), height, width), 2 + 3 * num_groups},
                logits.options().dtype(at::kDouble));
  float* grad = need_grad ? direction.data_ptr<float>() : nullptr;
  const int64_t images = logits.size(0);
  OutOfRange out_of_range;
  const auto run = [&](auto grad_flag, auto stats_flag, auto targets_flag) {
    grouped_all<decltype(grad_flag)::value, decltype(stats_flag)::value,
                decltype(targets_flag)::value>(in, images, height, grad, partials,
                                               num_groups, out_of_range);
  };
  using Yes = std::true_type;
  using No = std::false_type;
  const auto with_targets = [&](auto grad_flag, auto stats_flag) {
    targets ? run(grad_flag, stats_flag, Yes{}) : run(grad_flag, stats_flag, No{});
  };
  if (need_grad)
    need_statistics ? with_targets(Yes{}, Yes{}) : with_targets(Yes{}, No{});
  else
    need_statistics ? with_targets(No{}, Yes{}) : with_targets(No{}, No{});
  check_labels(kName, label, out_of_range.label, num_classes);
  if (out_of_range.group.found()) {
    const int64_t index = out_of_range.group.get(), num_pixels = label.size(1);
    const int32_t base = group_base.data_ptr<int32_t>()[index];
    TORCH_CHECK(false, kName, ": pixel ", index % num_pixels, " of image ",
                index / num_pixels, " has group_base ", base, ", so its groups ", base,
                " + ", logit_stride, " * k for k < C = ", num_classes,
                " are not all in [0, G = ", num_groups, ")");
  }
  // In the layout of GroupedSums: [value, nonfinite, clipped (G), distance (G),
  // count (G)].
  const at::Tensor sums = sum_in_task_order(partials);
  std::map<std::string, at::Tensor> out{{"value", sums[0]}};
  if (need_grad) out["direction"] = direction;
  if (need_statistics) {
    out["num_nonfinite"] = sums[1];
    out["clipped"] = sums.narrow(0, 2, num_groups);
    out["distance"] = sums.narrow(0, 2 + num_groups, num_groups);
    out["count"] = sums.narrow(0, 2 + 2 * num_groups, num_groups);
  }
  return out;
}

namespace {

// The two terms whose targets are the label proportions tau themselves, one
// pass each: NACL's sum |z - tau| with direction sign(z - tau), and SVLS's
// correction to hard-label cross-entropy, sum w (onehot - tau) . z with
// direction w (onehot - tau) (``kShift``). Both are 0 at ignored pixels.
template <bool kShift>
std::map<std::string, at::Tensor> proportion_terms(const char* name, const at::Tensor& logits,
                                         const at::Tensor& label, int64_t height,
                                         int64_t width, const at::Tensor& weights,
                                         const at::Tensor& pixel_weight) {
  TORCH_CHECK(check_inputs(name, logits, label, height, width, weights), name,
              ": weights (k, k) must be given");
  const bool weighted = check_optional_tensor(name, "pixel_weight (N, P)", pixel_weight,
                                              at::kFloat, {label.size(0), label.size(1)});
  const int64_t num_classes = logits.size(1), num_pixels = logits.size(2);
  const at::Tensor padded = pad_labels(name, label, height, width, weights, num_classes);
  at::Tensor direction = at::empty_like(logits);
  at::Tensor partials = at::zeros({num_tasks(logits.size(0), height, width), 1},
                                  logits.options().dtype(at::kDouble));
  const float* z_all = logits.data_ptr<float>();
  const int32_t* label_all = label.data_ptr<int32_t>();
  const float* weight_all = weighted ? pixel_weight.data_ptr<float>() : nullptr;
  float* grad_all = direction.data_ptr<float>();
  double* sums = partials.data_ptr<double>();
  const Neighbourhood images{padded.data_ptr<int32_t>(), padded.size(2),
                             weights.data_ptr<float>(), weights.size(0)};
  const int64_t padded_size = padded.size(1) * padded.size(2);
  for_each_block(
      logits.size(0), height, width, partials.size(0), num_classes,
      [&](int64_t task, const Block& block, float* tau) {
        Neighbourhood image = images;
        image.padded += block.n * padded_size;
        block_proportions(image, block, nullptr, num_classes, tau);
        const int64_t start = block.start(width), len = block.len;
        const int32_t* label_block = label_all + block.n * num_pixels + start;
        float factor[kBlock];
#pragma omp simd
        for (int64_t i = 0; i < len; ++i)
          factor[i] = label_block[i] < 0 ? 0.f
                      : weight_all ? weight_all[block.n * num_pixels + start + i]
                                   : 1.f;
        double total = 0.0;
        for (int32_t k = 0; k < num_classes; ++k) {
          const int64_t offset = (block.n * num_classes + k) * num_pixels + start;
          const float *zk = z_all + offset, *tk = tau + k * kBlock;
          float* gk = grad_all + offset;
          float block_sum = 0.f;
#pragma omp simd reduction(+ : block_sum)
          for (int64_t i = 0; i < len; ++i) {
            // Masks as factors, as the PyTorch paths multiply by them (a
            // non-finite logit at an ignored pixel gives NaN in both); selects
            // here would stop the vectoriser.
            if (kShift) {
              const float shift =
                  factor[i] * (static_cast<float>(label_block[i] == k) - tk[i]);
              block_sum += shift * zk[i];
              gk[i] = shift;
            } else {
              const float difference = zk[i] - tk[i];
              const float sign = static_cast<float>(difference > 0.f) -
                                 static_cast<float>(difference < 0.f);
              block_sum += factor[i] * std::fabs(difference);
              gk[i] = factor[i] * sign;
            }
          }
          total += block_sum;
        }
        sums[task] += total;
      });
  return {{"direction", direction}, {"value", sum_in_task_order(partials)[0]}};
}

}  // namespace

// NACL's penalty: sum over valid pixels and classes of |z_ik - tau_ik| and its
// gradient direction sign(z - tau) (0 at ignored pixels).
// Args: logits (N, C, P) float32; label (N, P) int32 in [0, C), -1 where ignored, of
// images H x W; weights (k, k) float32, the proportions' window.
// Returns, by name: "direction" (N, C, P) and "value", the float64 sum.
std::map<std::string, at::Tensor> nacl_penalty(const at::Tensor& logits,
                                               const at::Tensor& label, int64_t height,
                                               int64_t width, const at::Tensor& weights) {
  return proportion_terms<false>("nacl_penalty", logits, label, height, width, weights,
                                 at::empty({0}, logits.options()));
}

// SVLS as a correction to hard-label cross-entropy: sum over valid pixels of
// w_i sum_k (onehot_ik - tau_ik) z_ik, and its gradient w (onehot - tau).
// Args: as nacl_penalty, and pixel_weight (N, P) float32 or empty (1).
// Returns, by name: "direction" (N, C, P) and "value", the float64 sum.
std::map<std::string, at::Tensor> svls_shift(const at::Tensor& logits,
                                             const at::Tensor& label, int64_t height,
                                             int64_t width, const at::Tensor& weights,
                                             const at::Tensor& pixel_weight) {
  return proportion_terms<true>("svls_shift", logits, label, height, width, weights,
                                pixel_weight);
}
