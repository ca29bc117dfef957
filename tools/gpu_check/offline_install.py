"""Install the GPU check's wheels (tools/gpu_check/wheels.txt) offline into the environment of
the Python that runs this file, then check that what the check imports imports.

A listed package is installed from the wheel folder when it is tagged ``always`` or when this
environment lacks it (a package the machine has is used as it is: its numpy and OpenCV, say,
were built for each other). ``full`` packages are installed only when their wheels were
prepared (``--prepare DIR --full``); ``fallback`` ones never. Standard library only.

    python tools/gpu_check/offline_install.py --wheels DIR [--list FILE] [--dry-run]
"""
import argparse
import glob
import importlib
import importlib.metadata
import os.path as osp
import re
import subprocess
import sys
from typing import List, NamedTuple, Optional, Sequence, Tuple

HERE = osp.dirname(osp.abspath(__file__))
DEFAULT_LIST = osp.join(HERE, 'wheels.txt')

#: What the gpu tier and the benchmark import beyond the standard library, with what to do
#: when it is missing.
IMPORTS = [
    ('torch', 'the machine must have torch (a CUDA build)'),
    ('triton', 'the machine must have the triton of its torch'),
    ('numpy', 'prepare the wheels with --full, or install numpy on the machine'),
    ('cv2', 'prepare the wheels with --full, or install opencv-python-headless on the machine'),
    ('PIL', 'pillow: in the prepared wheels'),
    ('yaml', 'pyyaml: in the prepared wheels'),
    ('mmengine.runner', 'mmengine: in the prepared wheels'),
    ('mmcv.cnn.bricks', 'mmcv-lite: in the prepared wheels'),
    ('pytest', 'pytest: in the prepared wheels'),
]


class Entry(NamedTuple):
    name: str
    version: str
    tag: str  # 'always', 'full', 'fallback' or ''


def read_list(path: str) -> List[Entry]:
    """The entries of a wheel list (``name==version  # tag ...`` lines)."""
    entries = []
    with open(path) as f:
        for line in f:
            spec, _, comment = line.partition('#')
            spec = spec.strip()
            if not spec:
                continue
            match = re.fullmatch(r'([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)', spec)
            if not match:
                raise ValueError(f'{path}: expected NAME==VERSION, got {spec!r}')
            words = comment.split()
            tag = words[0].rstrip(':') if words and words[0].rstrip(':') in (
                'always', 'full', 'fallback') else ''
            entries.append(Entry(match.group(1), match.group(2), tag))
    return entries


def wheel_file(folder: str, entry: Entry) -> Optional[str]:
    """The wheel of ``entry`` in ``folder``, or None (names compared as wheels spell them)."""
    stem = re.sub(r'[-_.]+', '_', entry.name).lower()
    for path in glob.glob(osp.join(folder, '*.whl')):
        name, version = osp.basename(path).split('-')[:2]
        if re.sub(r'[-_.]+', '_', name).lower() == stem and version == entry.version:
            return path
    return None


def installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan(entries: Sequence[Entry], folder: str) -> Tuple[List[Entry], List[str]]:
    """What to install, and one line per entry saying what happens to it."""
    install, lines = [], []
    for e in entries:
        have = installed_version(e.name)
        present = wheel_file(folder, e) is not None
        if e.tag == 'fallback':
            lines.append(f'{e.name}: not installed (only runs pip where the venv has none)')
        elif e.tag != 'always' and have is not None:
            lines.append(f'{e.name}: the machine\'s {have}')
        elif not present:
            what = 'not prepared (--full)' if e.tag == 'full' else 'MISSING from the wheels'
            lines.append(f'{e.name}=={e.version}: {what}')
        else:
            install.append(e)
            lines.append(f'{e.name}=={e.version}: install' +
                         (f' (over the machine\'s {have})' if have is not None else ''))
    return install, lines


_PROBE = """
import importlib, sys
for module in sys.argv[1:]:
    try:
        importlib.import_module(module)
    except Exception as error:
        print(f'{module}\t{type(error).__name__}: {error}'.splitlines()[0])
"""


def failed_imports() -> List[str]:
    """``module: error (hint)`` for each of :data:`IMPORTS` that does not import, tried in one
    fresh interpreter (what this process imported does not count)."""
    hints = dict(IMPORTS)
    result = subprocess.run([sys.executable, '-c', _PROBE] + list(hints), capture_output=True,
                            text=True)
    failed = []
    for line in result.stdout.splitlines():
        module, _, error = line.partition('\t')
        failed.append(f'{module}: {error} ({hints.get(module, "")})')
    if result.returncode:
        failed.append(f'the import probe itself failed: {result.stderr.strip()[-300:]}')
    return failed


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--wheels', required=True, help='the folder --prepare filled')
    parser.add_argument('--list', default=None,
                        help='wheel list (default: the one in the folder, else wheels.txt)')
    parser.add_argument('pip', nargs='*',
                        help='pip command after `--` (default: this Python\'s -m pip)')
    parser.add_argument('--dry-run', action='store_true', help='print the plan only')
    args = parser.parse_args(argv)
    listed = args.list or (osp.join(args.wheels, 'wheels.txt')
                           if osp.exists(osp.join(args.wheels, 'wheels.txt')) else DEFAULT_LIST)
    install, lines = plan(read_list(listed), args.wheels)
    print('\n'.join(f'[offline_install] {line}' for line in lines))
    if args.dry_run:
        return 0
    if install:
        pip = args.pip or [sys.executable, '-m', 'pip']
        command = pip + ['install', '--no-index', '--find-links', args.wheels, '--no-deps',
                         '--disable-pip-version-check', '--no-warn-script-location', '-q'] + \
            [f'{e.name}=={e.version}' for e in install]
        print('[offline_install] ' + ' '.join(command), flush=True)
        if subprocess.run(command).returncode:
            print('[offline_install] pip failed', file=sys.stderr)
            return 1
    failed = failed_imports()
    for line in failed:
        print(f'[offline_install] does not import: {line}', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
