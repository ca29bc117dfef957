"""Sphinx configuration of the mmtransnext documentation (MyST Markdown pages).

Build: ``sphinx-build -W --keep-going -n docs docs/_build/html`` (tests/test_docs.py does this).
Nothing here imports mmtransnext: the pages describe modules by path, so the docs build without
torch or the OpenMMLab stack.
"""
import os.path as osp
import re

project = 'mmtransnext'
author = 'mmtransnext contributors'
copyright = 'mmtransnext contributors, Apache-2.0'

_VERSION_FILE = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'mmtransnext',
                         'version.py')
# Read by path, not imported: the package needs torch, the docs do not.
with open(_VERSION_FILE) as f:
    release = re.search(r"^__version__ = '([^']+)'", f.read(), re.M).group(1)
version = release

extensions = ['myst_parser']
source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build']

# Headings down to level 3 get GitHub-style anchors, so `page.md#a-heading` links work on
# GitHub and here alike; a link to a missing anchor is a warning (an error under -W).
myst_heading_anchors = 3

html_theme = 'furo'
html_title = f'mmtransnext {release}'
