"""The self-test of :mod:`.self_test` in a child process, where a fault cannot hurt the caller.

After an illegal memory access a process's CUDA context is lost: every later CUDA call in it
fails, the fallback backend's included. So on a GPU the dispatcher runs the self-test here
(:func:`verdict`): :func:`run_in_child` starts ``python -m
mmtransnext.ops.self_test_process`` with this process's environment (``TRITON_INTERPRET``,
``TRITON_CACHE_DIR`` (the kernels the child compiles are in the cache the caller loads them
from), ``CUDA_VISIBLE_DEVICES``, the ``MMTRANSNEXT_*`` variables), this package first on its
path, the same device and dtype, and the caller's TF32 and deterministic-algorithm settings. The
child writes its :class:`.self_test.SelfTestResult` to a file as JSON. A child that dies (a
signal, a non-zero exit, no result) or runs past :data:`TIMEOUT` seconds is a failed self-test
whose error says how it ended, with the last line it printed; the caller never ran the faulty
kernel, so its device context is intact.

Starting the child costs an interpreter start and the imports of torch and this package (a few
seconds, paid once per device and dtype a process tests); the kernels it compiles are not
compiled again by the caller.
"""
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Optional

import torch

from .amp import cuda_matmul_allows_tf32
from .backend import Backend
from .self_test import CASE, SelfTestCase, SelfTestResult, run_self_test, tolerance

#: Device types whose self-test :func:`verdict` runs in a child process: where a faulting
#: kernel leaves the process's device context unusable.
CHILD_DEVICE_TYPES = ('cuda',)
#: Seconds the child may run (imports, kernel compilation and the case) before it is killed.
TIMEOUT = 600.


def _request(candidate: Backend, case: SelfTestCase, child_setup: str) -> str:
    deterministic = torch.are_deterministic_algorithms_enabled()
    return json.dumps({
        'candidate': dict(asdict(candidate), dtype=str(candidate.dtype).split('.')[-1]),
        'case': asdict(case),
        'tf32': cuda_matmul_allows_tf32(),
        'deterministic': deterministic,
        'warn_only': deterministic and torch.is_deterministic_algorithms_warn_only_enabled(),
        'setup': child_setup,
    })


def _child_env() -> dict:
    """This process's environment, with the folder this package was imported from first on
    ``PYTHONPATH`` (the child imports the same code whatever its working directory), unless
    that folder is a site-packages one, which the child finds anyway and which must not come
    before the standard library."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.basename(root) not in ('site-packages', 'dist-packages'):
        paths = [root] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
        env['PYTHONPATH'] = os.pathsep.join(paths)
    return env


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"; its last output line: {lines[-1][:300]!r}" if lines else ''


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = 'an unknown signal'
        return f'was killed by signal {-returncode} ({name})'
    return f'exited with status {returncode} without a result'


def run_in_child(candidate: Backend, case: Optional[SelfTestCase] = None,
                 timeout: float = TIMEOUT, child_setup: str = '') -> SelfTestResult:
    """:func:`.self_test.run_self_test` of ``candidate`` in a child process (see the module
    docstring); a child that dies or times out gives a failed result naming how it ended.

    Args:
        candidate, case: as for :func:`.self_test.run_self_test`.
        timeout: seconds before the child is killed.
        child_setup: Python source the child runs before the self-test (for tests: e.g. a
            simulated crash, or a deliberately faulty kernel).
    """
    case = CASE if case is None else case
    allowed = tolerance(candidate.dtype, candidate.device.startswith('cuda') and
                        cuda_matmul_allows_tf32())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='mmtransnext-self-test-') as folder:
        result_path = os.path.join(folder, 'result.json')
        command = [sys.executable, '-m', __name__, result_path]
        try:
            child = subprocess.run(command, input=_request(candidate, case, child_setup),
                                   capture_output=True, text=True, env=_child_env(),
                                   timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            output = expired.stderr or b''
            output = output.decode(errors='replace') if isinstance(output, bytes) else output
            return _failed(f'did not finish within {timeout:g} s and was killed'
                           f'{_last_line(output)}', allowed, start)
        except OSError as exc:  # e.g. no interpreter to start
            return _failed(f'could not be started ({exc})', allowed, start)
        if child.returncode == 0 and os.path.exists(result_path):
            with open(result_path) as file:
                fields = json.load(file)
            overhead = time.perf_counter() - start - fields['seconds']
            return SelfTestResult(**dict(fields, process='child process', overhead=overhead))
        return _failed(_how_it_ended(child.returncode) + _last_line(child.stderr), allowed,
                       start)


def verdict(candidate: Backend, case: Optional[SelfTestCase] = None) -> SelfTestResult:
    """The self-test as the dispatcher runs it: in a child process on the device types of
    :data:`CHILD_DEVICE_TYPES` (:func:`run_in_child`), here elsewhere."""
    if torch.device(candidate.device).type in CHILD_DEVICE_TYPES:
        return run_in_child(candidate, case)
    return run_self_test(candidate, case)


def _failed(how: str, allowed: float, start: float) -> SelfTestResult:
    return SelfTestResult(False, math.inf, allowed, '', f'the self-test process {how}',
                          time.perf_counter() - start, process='child process')


def _set_precision(tf32: bool) -> None:
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, 'fp32_precision'):  # torch >= 2.9: the legacy flag is not to be mixed
        matmul.fp32_precision = 'tf32' if tf32 else 'ieee'
    else:
        matmul.allow_tf32 = tf32


def main(result_path: str) -> int:
    """The child: read the request on stdin, run the self-test, write the result to
    ``result_path``."""
    request = json.loads(sys.stdin.read())
    _set_precision(request['tf32'])
    if request['deterministic']:
        torch.use_deterministic_algorithms(True, warn_only=request['warn_only'])
    exec(request['setup'], {'__name__': '__self_test_setup__'})  # noqa: S102 - tests' hook
    fields = dict(request['candidate'])
    fields['dtype'] = getattr(torch, fields['dtype'])
    case = SelfTestCase(**{name: tuple(value) if isinstance(value, list) else value
                           for name, value in request['case'].items()})
    result = asdict(run_self_test(Backend(**fields), case))
    with open(result_path, 'w') as file:
        json.dump(result, file)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
