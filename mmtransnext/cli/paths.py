"""Checks of the files and folders named on a command line, before anything is written."""
import os
import os.path as osp
from typing import Optional

from .errors import ToolError


def check_file(path: str, what: str) -> None:
    """Raise :class:`ToolError` naming ``what`` unless ``path`` is a readable file."""
    if osp.isdir(path):
        raise ToolError(f'{what} is a directory, not a file: {path}')
    if not osp.isfile(path):
        hint = '' if osp.isabs(path) else f' (relative to the current directory {os.getcwd()})'
        raise ToolError(f'{what} not found: {path}{hint}')
    if not os.access(path, os.R_OK):
        raise ToolError(f'{what} is not readable (permissions): {path}')


def _file_in_the_way(folder: str) -> Optional[str]:
    """The file that stops ``folder`` from being (or becoming) a directory, if any: ``folder``
    itself or its nearest existing parent."""
    existing = osp.abspath(folder)
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    return None if osp.isdir(existing) else existing


def check_output_dir(path: Optional[str], what: str) -> None:
    """Raise unless ``path`` is a directory or can become one (no file in the way). Nothing is
    created: that waits until every argument is valid."""
    blocker = path and _file_in_the_way(path)
    if blocker:
        raise ToolError(f'{what} {path} is not a directory: {blocker} is a file')


def check_output_file(path: str, what: str) -> None:
    """Raise unless ``path`` can be written as a file: not a directory, and no file stands
    where its folder should be."""
    if osp.isdir(path):
        raise ToolError(f'{what} {path} is a directory; give a file name')
    blocker = _file_in_the_way(osp.dirname(osp.abspath(path)))
    if blocker:
        raise ToolError(f'{what} {path}: cannot write there, {blocker} is a file')
