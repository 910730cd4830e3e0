// Per-bin calibration sums of one image in one pass over its logits.
//
// The same sums as calibration_statistics in cals_seg/functional/calibration.py
// (docs/metrics.md), which stays the reference and the path for other devices. In
// eager PyTorch every sum is a separate pass (softmax, max, gathers, a bincount
// per histogram over C x H x W values); here each pixel's C logits are read once
// and every sum is updated while they are in cache.
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include "block_ops.h"
#include "checks.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

using namespace cals_kernels;

// Pixels of one task. Its float sums are kept apart and added task by task in
// order, so that they do not depend on the number of threads.
constexpr int64_t kChunkPixels = 16384;

// Where each sum lives in a task's row of float64 sums, and its name and shape
// in the output: the fields of CalibrationStatistics
// (cals_seg/functional/calibration.py) but the fine cells, and num_nonfinite.
struct Layout {
  struct Field {
    std::string name;
    int64_t offset;
    std::vector<int64_t> shape;
  };
  std::vector<Field> fields;
  int64_t size = 0;
  int64_t add(const char* name, std::vector<int64_t> shape) {
    int64_t numel = 1;
    for (int64_t s : shape) numel *= s;
    fields.push_back({name, size, std::move(shape)});
    size += numel;
    return fields.back().offset;
  }
  // Offsets, initialised in this order (the order of declaration).
  const int64_t bin_count, bin_confidence, bin_accuracy;
  const int64_t class_count, class_probability, class_hits, class_pixels;
  const int64_t boundary_count, boundary_confidence, boundary_accuracy;
  const int64_t low_count, low_probability, low_hits;
  const int64_t nll, brier, pixels, nonfinite;

  Layout(int64_t c, int64_t b)
      : bin_count(add("bin_count", {b})),
        bin_confidence(add("bin_confidence", {b})),
        bin_accuracy(add("bin_accuracy", {b})),
        class_count(add("class_count", {c, b})),
        class_probability(add("class_probability", {c, b})),
        class_hits(add("class_hits", {c, b})),
        class_pixels(add("class_pixels", {c})),
        boundary_count(add("boundary_count", {b})),
        boundary_confidence(add("boundary_confidence", {b})),
        boundary_accuracy(add("boundary_accuracy", {b})),
        low_count(add("low_count", {c})),
        low_probability(add("low_probability", {c})),
        low_hits(add("low_hits", {c})),
        nll(add("nll_sum", {})),
        brier(add("brier_sum", {})),
        pixels(add("num_pixels", {})),
        nonfinite(add("num_nonfinite", {})) {}
};

// The fine cells: too many (F = 65536 by default) to keep per task, so summed
// exactly, in int64, which makes their order irrelevant. A confidence is
// 1 / (a float sum of C values <= 1, one of them 1), so at least 1 / C, hence at
// least 2^-w with w the bit width of C; a float32 that large is a multiple of
// 2^-(w + 23), and counts it in those units exactly.
struct Cells {
  int64_t num_cells;
  double unit_inverse;  // 2^(w + 23)
  std::vector<int64_t> count, hits, confidence;  // the last in units of 2^-(w + 23)
  Cells(int64_t f, double inverse)
      : num_cells(f), unit_inverse(inverse), count(f), hits(f), confidence(f) {}
  void add(const Cells& other) {
    for (int64_t i = 0; i < num_cells; ++i) {
      count[i] += other.count[i];
      hits[i] += other.hits[i];
      confidence[i] += other.confidence[i];
    }
  }
};

int bit_width(int64_t value) {
  int width = 0;
  for (; value > 0; value >>= 1) ++width;
  return width;
}

struct Inputs {
  const float* z;          // (C, P)
  const int64_t* labels;   // (P)
  const bool* keep;        // (P)
  const bool* boundary;    // (P) or null
  float low_threshold;
  int64_t num_classes, num_pixels, num_bins;
};

// The equal-width bin (b/B, (b+1)/B] of a value, computed as the reference does
// (float32 multiply and ceil) so that both put boundary values in the same bin.
inline int64_t bin_index(float value, int64_t num_bins) {
  const float position = std::ceil(value * static_cast<float>(num_bins)) - 1.f;
  return std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(position), 0),
                           num_bins - 1);
}

// Adds pixels [begin, end) to a task's sums `s` (laid out by `at`) and to the
// thread's cells; a kept pixel whose label is outside [0, C) is noted in `bad`
// and left out.
void accumulate(const Inputs& in, const Layout& at, int64_t begin, int64_t end,
                double* s, Cells& cells, std::vector<float>& prob, FirstIndex& bad) {
  const int64_t c = in.num_classes, stride = in.num_pixels, num_bins = in.num_bins;
  const float* z = in.z;
  for (int64_t i = begin; i < end; ++i) {
    if (!in.keep[i]) continue;
    const int64_t y = in.labels[i];
    if (y < 0 || y >= c) {  // checked here, in the pass, before y indexes anything
      bad.note(i);
      continue;
    }
    float top = z[i];
    int64_t prediction = 0;
    for (int64_t k = 1; k < c; ++k) {
      const float v = z[k * stride + i];
      if (v > top) {
        top = v;
        prediction = k;
      }
    }
    float partition = 0.f;
    for (int64_t k = 0; k < c; ++k) {
      prob[k] = std::exp(z[k * stride + i] - top);
      partition += prob[k];
    }
    if (!std::isfinite(partition)) {
      s[at.nonfinite] += 1.0;
      continue;
    }
    const float confidence = 1.f / partition;
    const bool correct = prediction == y;
    const int64_t b = bin_index(confidence, num_bins);
    s[at.bin_count + b] += 1.0;
    s[at.bin_confidence + b] += confidence;
    s[at.bin_accuracy + b] += correct;
    const int64_t f = bin_index(confidence, cells.num_cells);
    cells.count[f] += 1;
    cells.hits[f] += correct;
    // Exact: a power-of-two multiple of a float32 (see Cells).
    cells.confidence[f] +=
        static_cast<int64_t>(static_cast<double>(confidence) * cells.unit_inverse);
    if (in.boundary != nullptr && in.boundary[i]) {
      s[at.boundary_count + b] += 1.0;
      s[at.boundary_confidence + b] += confidence;
      s[at.boundary_accuracy + b] += correct;
    }
    float squares = 0.f;
    // A multiply by the confidence (= 1 / partition), not a divide per class:
    // 4x cheaper, and within an ulp of the reference's division.
    for (int64_t k = 0; k < c; ++k) {
      const float p = prob[k] * confidence;
      const int64_t cell = k * num_bins + bin_index(p, num_bins);
      s[at.class_count + cell] += 1.0;
      s[at.class_probability + cell] += p;
      squares += p * p;
      prob[k] = p;
      // Branch-free: whether p is low is unpredictable from pixel to pixel.
      const float low = p <= in.low_threshold ? 1.f : 0.f;
      s[at.low_count + k] += low;
      s[at.low_probability + k] += low * p;
    }
    if (prob[y] <= in.low_threshold) s[at.low_hits + y] += 1.0;
    s[at.class_hits + y * num_bins + bin_index(prob[y], num_bins)] += 1.0;
    s[at.class_pixels + y] += 1.0;
    s[at.nll] -= static_cast<double>(z[y * stride + i] - top - std::log(partition));
    s[at.brier] += static_cast<double>(squares) - 2.0 * prob[y] + 1.0;
    s[at.pixels] += 1.0;
  }
}

at::Tensor to_double(const std::vector<int64_t>& values, double scale) {
  at::Tensor out = at::empty({static_cast<int64_t>(values.size())}, at::kDouble);
  double* into = out.data_ptr<double>();
  for (size_t i = 0; i < values.size(); ++i) into[i] = static_cast<double>(values[i]) * scale;
  return out;
}

}  // namespace

// Args: logits (C, P) float32, labels (P) int64 in [0, C) wherever keep is true
// (elsewhere not read), keep (P) bool, boundary (P) bool or empty (no boundary
// sums), low_threshold: class probabilities at or below it go to the low_* sums;
// num_bins B >= 1 and num_cells F >= 1.
// Returns, by name, float64 tensors: the fields of CalibrationStatistics
// (cals_seg/functional/calibration.py), and "num_nonfinite", the kept pixels whose
// softmax is not finite (left out of the sums). Independent of the number of
// threads: the float sums are added task by task in order, the cells exactly.
std::map<std::string, at::Tensor> calibration_statistics(
    const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& keep,
    const at::Tensor& boundary, double low_threshold, int64_t num_bins,
    int64_t num_cells) {
  constexpr const char* kName = "calibration_statistics";
  check_tensor(kName, "logits (C, P)", logits, at::kFloat, {kAnySize, kAnySize});
  const int64_t num_classes = logits.size(0), num_pixels = logits.size(1);
  TORCH_CHECK(num_classes > 0, kName, ": logits have no classes");
  TORCH_CHECK(num_bins > 0 && num_cells > 0, kName,
              ": num_bins and num_cells must be >= 1, got ", num_bins, " and ",
              num_cells);
  check_tensor(kName, "labels (P)", labels, at::kLong, {num_pixels});
  check_tensor(kName, "keep (P)", keep, at::kBool, {num_pixels});
  const bool with_boundary =
      check_optional_tensor(kName, "boundary (P)", boundary, at::kBool, {num_pixels});
  const int width = bit_width(num_classes);
  TORCH_CHECK(width + 23 < 63 && num_pixels < (int64_t{1} << (63 - 23 - width)), kName,
              ": ", num_pixels, " pixels of ", num_classes,
              " classes are too many for exact int64 cell sums");
  const double unit_inverse = std::ldexp(1.0, width + 23);

  const Inputs in{logits.data_ptr<float>(), labels.data_ptr<int64_t>(),
                  keep.data_ptr<bool>(),
                  with_boundary ? boundary.data_ptr<bool>() : nullptr,
                  static_cast<float>(low_threshold), num_classes, num_pixels, num_bins};
  const Layout layout(num_classes, num_bins);
  const int64_t tasks = std::max<int64_t>(1, (num_pixels + kChunkPixels - 1) / kChunkPixels);
  at::Tensor partials = at::zeros({tasks, layout.size}, at::kDouble);
  double* rows = partials.data_ptr<double>();
  Cells cells(num_cells, unit_inverse);
  std::mutex cells_mutex;
  FirstIndex bad_label;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    Cells own(num_cells, unit_inverse);
    std::vector<float> prob(num_classes);
    for (int64_t task = begin; task < end; ++task)
      accumulate(in, layout, task * kChunkPixels,
                 std::min(num_pixels, (task + 1) * kChunkPixels),
                 rows + task * layout.size, own, prob, bad_label);
    const std::lock_guard<std::mutex> lock(cells_mutex);
    cells.add(own);  // int64: any order gives the same sums
  });
  if (bad_label.found()) {
    const int64_t index = bad_label.get();
    TORCH_CHECK(false, kName, ": label ", in.labels[index], " of kept pixel ", index,
                " is outside [0, C = ", num_classes, ")");
  }
  const at::Tensor total = sum_in_task_order(partials);
  std::map<std::string, at::Tensor> out;
  for (const Layout::Field& field : layout.fields) {
    int64_t numel = 1;
    for (int64_t s : field.shape) numel *= s;
    out[field.name] = total.narrow(0, field.offset, numel).view(field.shape);
  }
  out["cell_count"] = to_double(cells.count, 1.0);
  out["cell_accuracy"] = to_double(cells.hits, 1.0);
  out["cell_confidence"] = to_double(cells.confidence, 1.0 / unit_inverse);
  return out;
}
