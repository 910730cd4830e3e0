// Python bindings of the CPU kernels: cals_seg.ops._kernels. Each returns its
// outputs by name (a dict in Python); cals_seg/ops/__init__.py reads them into
// named tuples.
#include <torch/extension.h>

#include <map>
#include <string>

using Outputs = std::map<std::string, at::Tensor>;

Outputs phr_penalty(const at::Tensor& logits, const at::Tensor& valid,
                    const at::Tensor& offset, const at::Tensor& slope, bool need_grad,
                    bool need_statistics, double lambd_min, double lambd_max);

Outputs grouped_phr_penalty(const at::Tensor& logits, const at::Tensor& label,
                            int64_t height, int64_t width, const at::Tensor& group_base,
                            int64_t logit_stride, const at::Tensor& offset,
                            const at::Tensor& slope, const at::Tensor& lambd,
                            const at::Tensor& rho, const at::Tensor& weights,
                            const at::Tensor& target_scale, bool need_grad,
                            bool need_statistics, double lambd_min, double lambd_max);

Outputs nacl_penalty(const at::Tensor& logits, const at::Tensor& label, int64_t height,
                     int64_t width, const at::Tensor& weights);

Outputs svls_shift(const at::Tensor& logits, const at::Tensor& label, int64_t height,
                   int64_t width, const at::Tensor& weights,
                   const at::Tensor& pixel_weight);

Outputs calibration_statistics(const at::Tensor& logits, const at::Tensor& labels,
                               const at::Tensor& keep, const at::Tensor& boundary,
                               double low_threshold, int64_t num_bins,
                               int64_t num_cells);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("phr_penalty", &phr_penalty,
        "CALS PHR penalty: gradient direction and class sums in one pass");
  m.def("grouped_phr_penalty", &grouped_phr_penalty,
        "PHR penalty with grouped multipliers and neighbourhood targets in one pass");
  m.def("nacl_penalty", &nacl_penalty,
        "NACL's |z - tau| and its sign, the label proportions formed per block");
  m.def("svls_shift", &svls_shift,
        "SVLS's correction to hard-label cross-entropy and its gradient, one pass");
  m.def("calibration_statistics", &calibration_statistics,
        "per-bin calibration sums of one image in one pass");
}
