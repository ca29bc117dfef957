"""Install mmtransnext (``pip install -e . --no-build-isolation``, or ``bash tools/install.sh``).

The ops in ``csrc/`` are compiled into ``mmtransnext._ext`` with ninja, against the torch of the
installing environment (hence ``--no-build-isolation``). Environment variables:

- ``MMTRANSNEXT_WITH_OPS=0``: skip the ops (the package then uses a JIT build or pure PyTorch);
- ``FORCE_CUDA=1``: build the CUDA kernels even without a visible GPU (needs torch with CUDA
  and the CUDA toolkit, ``CUDA_HOME``); ``FORCE_CUDA=0``: CPU kernels only. Unset: CUDA kernels
  when torch has CUDA, a toolkit is found and a GPU is visible or ``TORCH_CUDA_ARCH_LIST``
  (which picks the GPU archs) is set (``ext_build.with_cuda``).
"""
import os
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version_file() -> dict:
    """``mmtransnext/version.py``'s names: the version and the supported torch range."""
    scope: dict = {}
    with open(osp.join(HERE, 'mmtransnext', 'version.py')) as f:
        exec(f.read(), scope)
    return scope


def read_requirements(name: str) -> list:
    with open(osp.join(HERE, 'requirements', name)) as f:
        return [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]


def read_build_config() -> dict:
    # By path: the package (and its mmcv imports) is not importable before installation.
    scope: dict = {}
    with open(osp.join(HERE, 'mmtransnext', 'ops', 'ext_build.py')) as f:
        exec(f.read(), scope)
    return scope


#: What ``mim`` (openmim) looks for in ``mmtransnext/.mim``: ``mim train/test mmtransnext CONFIG``
#: run ``.mim/tools/train.py`` / ``test.py`` and find CONFIG under ``.mim/configs``; ``mim search``
#: reads ``.mim/model-index.yml``.
MIM_FILES = ('tools', 'configs', 'model-index.yml')


def add_mim_extension() -> None:
    """Put :data:`MIM_FILES` into ``mmtransnext/.mim``, as OpenMMLab packages do: copies when a
    wheel or sdist is built, links for an editable install (so they stay the repository's)."""
    import shutil
    import sys
    if any(cmd in sys.argv for cmd in ('bdist_wheel', 'sdist', 'build', 'build_py')):
        mode = 'copy'
    elif any(cmd in sys.argv for cmd in ('editable_wheel', 'develop')):
        mode = 'symlink'
    else:
        return
    mim_dir = osp.join(HERE, 'mmtransnext', '.mim')
    os.makedirs(mim_dir, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(HERE, name), osp.join(mim_dir, name)
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_dir), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


def ops_extensions() -> dict:
    """``ext_modules``/``cmdclass`` for the ops in ``csrc/``, or nothing when they are skipped."""
    if os.environ.get('MMTRANSNEXT_WITH_OPS', '1') == '0':
        print('mmtransnext: MMTRANSNEXT_WITH_OPS=0, not compiling the ops in csrc/')
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import (CUDA_HOME, BuildExtension, CppExtension,
                                               CUDAExtension)
    except ImportError:
        # e.g. pip's build isolation: no torch to build against. The package still works.
        print('mmtransnext: torch is not importable here, not compiling the ops in csrc/ '
              '(install with --no-build-isolation to compile them)')
        return {}
    config = read_build_config()
    force_cuda = os.environ.get('FORCE_CUDA')
    has_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if force_cuda == '1' and not has_cuda:
        raise RuntimeError(f'FORCE_CUDA=1 but torch {torch.__version__} has no CUDA '
                           f'(torch.version.cuda={torch.version.cuda}) or no CUDA toolkit was '
                           f'found (CUDA_HOME={CUDA_HOME})')
    with_cuda = config['with_cuda'](force_cuda, torch.version.cuda is not None, CUDA_HOME,
                                    torch.cuda.is_available(),
                                    os.environ.get('TORCH_CUDA_ARCH_LIST'))
    extension = CUDAExtension if with_cuda else CppExtension
    # Relative paths: setuptools wants sources inside the project.
    sources = [osp.relpath(p, HERE) for p in config['sources'](HERE, with_cuda)]
    extra_compile_args = {'cxx': config['CXX_FLAGS']}
    if with_cuda:
        extra_compile_args['nvcc'] = config['NVCC_FLAGS']
    ext = extension(config['EXT_NAME'], sources, include_dirs=config['include_dirs'](HERE),
                    extra_compile_args=extra_compile_args,
                    extra_link_args=config['LINK_FLAGS'])
    return dict(ext_modules=[ext],
                cmdclass={'build_ext': BuildExtension.with_options(use_ninja=True)})


add_mim_extension()
VERSION_FILE = read_version_file()
setup(
    name='mmtransnext',
    version=VERSION_FILE['__version__'],
    description='TransNeXt backbone (CVPR 2024) for MMDetection 3 and MMSegmentation 1',
    long_description=open(osp.join(HERE, 'README.md')).read() if osp.exists(
        osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['mmtransnext', 'mmtransnext.*']),
    # the tools, configs and model index copied for mim (add_mim_extension)
    package_data={'mmtransnext': ['.mim/model-index.yml', '.mim/tools/**/*', '.mim/configs/**/*']},
    python_requires='>=3.9',
    # The supported torch floor (README "Supported versions"): an installed torch above it, a
    # CUDA build included, is kept as it is; no upper cap, since pip would then downgrade a
    # newer torch (only TORCH_TESTED and below are tested). mmcv (built with ops, or mmcv-lite for the
    # backbones alone) is installed by tools/install.sh, not here: pip would otherwise build it
    # silently without its ops.
    install_requires=['mmengine>=0.10.0,<1.0',
                      f"torch>={VERSION_FILE['TORCH_FLOOR']}"],
    extras_require={
        'tests': read_requirements('tests.txt'),
        'classification': read_requirements('classification.txt'),
        'deploy': read_requirements('deploy.txt'),
    },
    zip_safe=False,
    **ops_extensions(),
)
