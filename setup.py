"""Install mmtransnext (``pip install -e . --no-build-isolation``, or ``bash tools/install.sh``)."""
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version() -> str:
    scope: dict = {}
    with open(osp.join(HERE, 'mmtransnext', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def read_requirements(name: str) -> list:
    with open(osp.join(HERE, 'requirements', name)) as f:
        return [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]


setup(
    name='mmtransnext',
    version=read_version(),
    description='TransNeXt backbone (CVPR 2024) for MMDetection 3 and MMSegmentation 1',
    long_description=open(osp.join(HERE, 'README.md')).read() if osp.exists(
        osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['mmtransnext', 'mmtransnext.*']),
    python_requires='>=3.9',
    # torch and mmcv (built with ops) are installed by tools/install.sh, not here: pip would
    # otherwise replace a user's CUDA torch or build mmcv silently without its ops.
    install_requires=['mmengine>=0.10.0,<1.0'],
    extras_require={'tests': read_requirements('tests.txt')},
    zip_safe=False,
)
