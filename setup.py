from setuptools import find_packages, setup

setup(
    name='cals-seg',
    version='0.1.0',
    description='Class Adaptive Label Smoothing (CALS) for MMSegmentation 1.x',
    packages=find_packages(include=['cals_seg', 'cals_seg.*']),
    python_requires='>=3.10',
)
