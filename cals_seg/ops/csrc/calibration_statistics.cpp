// Per-bin calibration sums of one image in one pass over its logits.
//
// The same sums as calibration_statistics in cals_seg/evaluation/calibration.py
// (docs/metrics.md), which stays the reference and the path for other devices. In
// eager PyTorch every sum is a separate pass (softmax, max, gathers, a bincount
// per histogram over C x H x W values); here each pixel's C logits are read once
// and every sum is updated while they are in cache.
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Sums of one thread, in the order of CalibrationStatistics' fields.
struct Sums {
  int64_t num_classes, num_bins, num_cells;
  std::vector<double> bin_count, bin_confidence, bin_accuracy;
  std::vector<double> cell_count, cell_confidence, cell_accuracy;
  std::vector<double> class_count, class_probability, class_hits, class_pixels;
  std::vector<double> boundary_count, boundary_confidence, boundary_accuracy;
  std::vector<double> low_count, low_probability, low_hits;
  double nll = 0.0, brier = 0.0, pixels = 0.0, nonfinite = 0.0;

  Sums(int64_t c, int64_t b, int64_t f)
      : num_classes(c), num_bins(b), num_cells(f), bin_count(b), bin_confidence(b),
        bin_accuracy(b), cell_count(f), cell_confidence(f), cell_accuracy(f),
        class_count(c * b), class_probability(c * b), class_hits(c * b),
        class_pixels(c), boundary_count(b), boundary_confidence(b),
        boundary_accuracy(b), low_count(c), low_probability(c), low_hits(c) {}
};

// The equal-width bin (b/B, (b+1)/B] of a value, computed as the reference does
// (float32 multiply and ceil) so that both put boundary values in the same bin.
inline int64_t bin_index(float value, int64_t num_bins) {
  const float position = std::ceil(value * static_cast<float>(num_bins)) - 1.f;
  return std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(position), 0),
                           num_bins - 1);
}

void accumulate(const float* z, const int64_t* labels, const bool* keep,
                const bool* boundary, float low_threshold, int64_t stride,
                int64_t begin, int64_t end, Sums& s) {
  const int64_t c = s.num_classes;
  std::vector<float> prob(c);
  for (int64_t i = begin; i < end; ++i) {
    if (!keep[i]) continue;
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
      s.nonfinite += 1.0;
      continue;
    }
    const int64_t y = labels[i];
    const float confidence = 1.f / partition;
    const double correct = prediction == y ? 1.0 : 0.0;
    const int64_t b = bin_index(confidence, s.num_bins);
    s.bin_count[b] += 1.0;
    s.bin_confidence[b] += confidence;
    s.bin_accuracy[b] += correct;
    const int64_t f = bin_index(confidence, s.num_cells);
    s.cell_count[f] += 1.0;
    s.cell_confidence[f] += confidence;
    s.cell_accuracy[f] += correct;
    if (boundary != nullptr && boundary[i]) {
      s.boundary_count[b] += 1.0;
      s.boundary_confidence[b] += confidence;
      s.boundary_accuracy[b] += correct;
    }
    float squares = 0.f;
    // A multiply by the confidence (= 1 / partition), not a divide per class:
    // 4x cheaper, and within an ulp of the reference's division.
    for (int64_t k = 0; k < c; ++k) {
      const float p = prob[k] * confidence;
      const int64_t cell = k * s.num_bins + bin_index(p, s.num_bins);
      s.class_count[cell] += 1.0;
      s.class_probability[cell] += p;
      squares += p * p;
      prob[k] = p;
      // Branch-free: whether p is low is unpredictable from pixel to pixel.
      const float low = p <= low_threshold ? 1.f : 0.f;
      s.low_count[k] += low;
      s.low_probability[k] += low * p;
    }
    if (prob[y] <= low_threshold) s.low_hits[y] += 1.0;
    s.class_hits[y * s.num_bins + bin_index(prob[y], s.num_bins)] += 1.0;
    s.class_pixels[y] += 1.0;
    s.nll -= static_cast<double>(z[y * stride + i] - top - std::log(partition));
    s.brier += static_cast<double>(squares) - 2.0 * prob[y] + 1.0;
    s.pixels += 1.0;
  }
}

at::Tensor to_tensor(const std::vector<double>& values, std::vector<int64_t> shape) {
  return at::tensor(values, at::kDouble).reshape(shape);
}

}  // namespace

// Args: logits (C, P) float32, labels (P) int64 in [0, C) wherever keep is true,
// keep (P) bool, boundary (P) bool or empty (no boundary sums), low_threshold:
// class probabilities at or below it go to the low_* sums. Returns the fields of CalibrationStatistics, in order, followed
// by the number of kept pixels whose softmax is not finite (left out of the sums).
std::vector<at::Tensor> calibration_statistics(const at::Tensor& logits,
                                               const at::Tensor& labels,
                                               const at::Tensor& keep,
                                               const at::Tensor& boundary,
                                               double low_threshold,
                                               int64_t num_bins, int64_t num_cells) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kFloat &&
                  logits.dim() == 2 && logits.is_contiguous(),
              "calibration_statistics: logits must be a contiguous (C, P) float32 "
              "CPU tensor");
  const int64_t num_classes = logits.size(0), num_pixels = logits.size(1);
  TORCH_CHECK(labels.scalar_type() == at::kLong && labels.is_contiguous() &&
                  labels.numel() == num_pixels,
              "calibration_statistics: labels must be a contiguous int64 (P) tensor");
  TORCH_CHECK(keep.scalar_type() == at::kBool && keep.is_contiguous() &&
                  keep.numel() == num_pixels,
              "calibration_statistics: keep must be a contiguous bool (P) tensor");
  TORCH_CHECK(boundary.scalar_type() == at::kBool && boundary.is_contiguous() &&
                  (boundary.numel() == num_pixels || boundary.numel() == 0),
              "calibration_statistics: boundary must be a contiguous bool (P) or "
              "empty tensor");
  // One set of sums per thread over a contiguous pixel range; merged in order.
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), num_pixels / 4096));
  std::vector<Sums> sums(parts, Sums(num_classes, num_bins, num_cells));
  const float* z = logits.data_ptr<float>();
  const int64_t* y = labels.data_ptr<int64_t>();
  const bool* k = keep.data_ptr<bool>();
  const bool* edge = boundary.numel() ? boundary.data_ptr<bool>() : nullptr;
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      accumulate(z, y, k, edge, static_cast<float>(low_threshold), num_pixels,
                 num_pixels * part / parts,
                 num_pixels * (part + 1) / parts, sums[part]);
    }
  });
  Sums& total = sums[0];
  auto add = [](std::vector<double>& into, const std::vector<double>& from) {
    for (size_t i = 0; i < into.size(); ++i) into[i] += from[i];
  };
  for (int64_t part = 1; part < parts; ++part) {
    const Sums& s = sums[part];
    add(total.bin_count, s.bin_count);
    add(total.bin_confidence, s.bin_confidence);
    add(total.bin_accuracy, s.bin_accuracy);
    add(total.cell_count, s.cell_count);
    add(total.cell_confidence, s.cell_confidence);
    add(total.cell_accuracy, s.cell_accuracy);
    add(total.class_count, s.class_count);
    add(total.class_probability, s.class_probability);
    add(total.class_hits, s.class_hits);
    add(total.class_pixels, s.class_pixels);
    add(total.boundary_count, s.boundary_count);
    add(total.boundary_confidence, s.boundary_confidence);
    add(total.boundary_accuracy, s.boundary_accuracy);
    add(total.low_count, s.low_count);
    add(total.low_probability, s.low_probability);
    add(total.low_hits, s.low_hits);
    total.nll += s.nll;
    total.brier += s.brier;
    total.pixels += s.pixels;
    total.nonfinite += s.nonfinite;
  }
  const std::vector<int64_t> per_class{num_classes, num_bins};
  return {to_tensor(total.bin_count, {num_bins}),
          to_tensor(total.bin_confidence, {num_bins}),
          to_tensor(total.bin_accuracy, {num_bins}),
          to_tensor(total.cell_count, {num_cells}),
          to_tensor(total.cell_confidence, {num_cells}),
          to_tensor(total.cell_accuracy, {num_cells}),
          to_tensor(total.class_count, per_class),
          to_tensor(total.class_probability, per_class),
          to_tensor(total.class_hits, per_class),
          to_tensor(total.class_pixels, {num_classes}),
          to_tensor(total.boundary_count, {num_bins}),
          to_tensor(total.boundary_confidence, {num_bins}),
          to_tensor(total.boundary_accuracy, {num_bins}),
          to_tensor(total.low_count, {num_classes}),
          to_tensor(total.low_probability, {num_classes}),
          to_tensor(total.low_hits, {num_classes}),
          at::scalar_tensor(total.nll, at::kDouble),
          at::scalar_tensor(total.brier, at::kDouble),
          at::scalar_tensor(total.pixels, at::kDouble),
          at::scalar_tensor(total.nonfinite, at::kDouble)};
}
