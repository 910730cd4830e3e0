// Python bindings of the CPU kernels: cals_seg._kernels.
#include <torch/extension.h>

#include <vector>

std::vector<at::Tensor> phr_penalty(const at::Tensor& logits, const at::Tensor& valid,
                                    const at::Tensor& offset, const at::Tensor& slope,
                                    bool need_grad, bool need_statistics,
                                    double lambd_min, double lambd_max);

std::vector<at::Tensor> calibration_statistics(const at::Tensor& logits,
                                               const at::Tensor& labels,
                                               const at::Tensor& keep,
                                               const at::Tensor& boundary,
                                               double low_threshold,
                                               int64_t num_bins, int64_t num_cells);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("phr_penalty", &phr_penalty,
        "CALS PHR penalty: gradient direction and class sums in one pass");
  m.def("calibration_statistics", &calibration_statistics,
        "per-bin calibration sums of one image in one pass");
}
