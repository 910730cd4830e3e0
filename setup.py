"""cals-seg: the package and its CPU kernels (built against the installed torch,
hence ``pip install --no-build-isolation -e .``)."""
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

setup(
    name='cals-seg',
    version='0.1.0',
    description='Class Adaptive Label Smoothing (CALS) for MMSegmentation 1.x',
    packages=find_packages(include=['cals_seg', 'cals_seg.*']),
    ext_modules=[
        CppExtension(
            'cals_seg.ops._kernels', [
                'cals_seg/ops/csrc/bindings.cpp', 'cals_seg/ops/csrc/phr_penalty.cpp',
                'cals_seg/ops/csrc/neighbourhood_penalties.cpp',
                'cals_seg/ops/csrc/calibration_statistics.cpp'
            ],
            # -fopenmp: at::parallel_for is an OpenMP pragma in torch's headers, and
            # it enables the kernels' `omp simd` loops. -fno-trapping-math lets the
            # compiler turn their selects into vector blends (3x faster); results,
            # NaN and infinity included, are unchanged.
            depends=['cals_seg/ops/csrc/block_ops.h', 'cals_seg/ops/csrc/checks.h'],
            extra_compile_args=['-O3', '-fopenmp', '-fno-trapping-math'],
            extra_link_args=['-fopenmp'])
    ],
    cmdclass={'build_ext': BuildExtension},
    python_requires='>=3.10',
)
