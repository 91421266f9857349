"""segzoo: GluonCV-faithful semantic segmentation on MXNet/Gluon (DeepLabV3, PSPNet, FCN, DeepLabV3+)."""
import sys

from setuptools import find_packages, setup

if sys.version_info >= (3, 12):
    sys.exit('segzoo needs Python 3.8-3.11: MXNet 1.9.1 (the last MXNet release) needs numpy<1.24, '
             'and numpy<1.24 has no build for Python 3.12 or newer.')

setup(
    name='segzoo',
    version='0.1.0',
    description='GluonCV-faithful semantic segmentation (DeepLabV3, PSPNet, FCN, DeepLabV3+) on MXNet/Gluon',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['segzoo', 'segzoo.*']),
    include_package_data=True,
    package_data={'segzoo': ['sample_data/*', 'sample_data/**/*']},
    python_requires='>=3.8,<3.12',
    install_requires=[
        'numpy<1.24',
        'pycocotools',
        'matplotlib',
        'tqdm',
        'requests',
        'Pillow',
        'scipy',
    ],
    extras_require={
        # MXNet is an extra so a GPU user picks the build that matches CUDA. mxnet-cu117 is the newest
        # CUDA build of MXNet 1.9.1 on PyPI; there is no mxnet-cu118.
        'cpu': ['mxnet==1.9.1'],
        'cu117': ['mxnet-cu117==1.9.1'],
        'cu112': ['mxnet-cu112==1.9.1'],
        # Test-only: GluonCV is the reference oracle of the parity tests (segzoo never imports it); mx2onnx needs
        # onnx.mapping, which onnx 1.19 removed; ruff is the linter of `make lint`.
        'test': ['pytest>=7', 'pytest-timeout', 'gluoncv==0.10.5.post0', 'onnx>=1.14,<1.19', 'onnxruntime',
                 'ruff==0.17.6'],
    },
    classifiers=[
        'Programming Language :: Python :: 3.8',
        'Programming Language :: Python :: 3.9',
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
        'Topic :: Scientific/Engineering :: Image Recognition',
    ],
)
