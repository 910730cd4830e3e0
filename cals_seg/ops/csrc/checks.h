// Argument checks the kernels share: every tensor is checked before a raw
// pointer is taken from it, and the values a kernel indexes with (labels, group
// indices) are checked inside the pass that reads them, the first bad one being
// reported by position.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace cals_kernels {

constexpr int64_t kAnySize = -1;

inline const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kBool: return "bool";
    default: return c10::toString(dtype);
  }
}

// A shape as Python writes it: (3, 7) or (5,); kAnySize as *.
inline std::string shape_text(at::IntArrayRef sizes) {
  std::ostringstream text;
  text << "(";
  for (size_t d = 0; d < sizes.size(); ++d) {
    text << (d ? ", " : "");
    if (sizes[d] == kAnySize)
      text << "*";
    else
      text << sizes[d];
  }
  text << (sizes.size() == 1 ? ",)" : ")");
  return text.str();
}

inline std::string describe(const at::Tensor& t) {
  std::ostringstream text;
  text << (t.is_contiguous() ? "a contiguous " : "a non-contiguous ")
       << dtype_name(t.scalar_type()) << " tensor of shape " << shape_text(t.sizes())
       << " on " << t.device();
  return text.str();
}

// `t` must be a contiguous CPU tensor of `dtype` and `shape` (kAnySize: any).
inline void check_tensor(const char* kernel, const char* name, const at::Tensor& t,
                         at::ScalarType dtype, std::initializer_list<int64_t> shape) {
  TORCH_CHECK(t.defined(), kernel, ": ", name, " is undefined");
  const std::vector<int64_t> wanted(shape);
  bool fits = t.dim() == static_cast<int64_t>(wanted.size());
  for (size_t d = 0; fits && d < wanted.size(); ++d)
    fits = wanted[d] == kAnySize || t.size(d) == wanted[d];
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous() &&
                  fits,
              kernel, ": ", name, " must be a contiguous CPU ", dtype_name(dtype),
              " tensor of shape ", shape_text(wanted), ", got ", describe(t));
}

// As check_tensor, or an empty tensor, which stands for "not given".
inline bool check_optional_tensor(const char* kernel, const char* name,
                                  const at::Tensor& t, at::ScalarType dtype,
                                  std::initializer_list<int64_t> shape) {
  TORCH_CHECK(t.defined(), kernel, ": ", name, " is undefined (pass an empty tensor)");
  if (t.numel() == 0) return false;
  check_tensor(kernel, name, t, dtype, shape);
  return true;
}

// The smallest index any task notes: the first bad element, whatever the
// threads' schedule. Noting is the rare path; reading it is once per call.
class FirstIndex {
 public:
  void note(int64_t index) {
    int64_t current = first_.load(std::memory_order_relaxed);
    while (index < current &&
           !first_.compare_exchange_weak(current, index, std::memory_order_relaxed)) {
    }
  }
  bool found() const { return get() != kNone; }
  int64_t get() const { return first_.load(std::memory_order_relaxed); }

 private:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::atomic<int64_t> first_{kNone};
};

}  // namespace cals_kernels
