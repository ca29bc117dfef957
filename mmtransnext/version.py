"""The package version and the torch / triton range it supports (README "Supported versions").

Read by ``setup.py`` (by path, before torch is importable) for ``install_requires``: standard
library only.
"""
__version__ = '0.1.0'

#: The oldest torch the package imports and runs on (below it, ``import mmtransnext`` refuses
#: in one line); the newest torch the test suite runs on.
TORCH_FLOOR = '2.1'
TORCH_TESTED = '2.14.1'
