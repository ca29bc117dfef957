"""The supported-range check, run by ``test_torch_range.py`` in the environment of each end of
the torch range (README "Supported versions"): the floor's cached venv and the test venv.

    python tests/test_compat/range_check.py OUT [--ext-library SO] [--read CHECKPOINT ...]
        [--compare-gradients GRADIENTS]

From the source tree, with the repository root on ``PYTHONPATH``. In order: ``import
mmtransnext``; TransNeXt's outputs and parameter gradients with ``attn_impl='torch'`` and
``'ext'`` (the compiled ops: ``--ext-library`` loads them from a built library, else the
installed build) against the official computation of ``tests/reference.py``; TransXNet's outputs
against ``tests/reference_transxnet.py``; a runner-style checkpoint written here, then read back,
and every ``--read`` file read, through the restricted reader (``read_checkpoint``, no trust)
and compared with a full unpickling; both families' training gradients (batch 1 and 2, maps smaller
than the pooled grid included) written to ``OUT/gradients.pth`` and, with
``--compare-gradients``, compared with another torch's file: the oracles run on the torch under
test, so a wrong backward kernel of that torch (2.1's ``gelu_backward``) fools them, not this.
Writes ``OUT/result.json`` (versions, largest errors), ``OUT/checkpoint.pth`` and
``OUT/gradients.pth``; any mismatch raises (non-zero exit).
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Any, Dict, List

import numpy as np
import torch

TESTS = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, TESTS)  # the oracles

#: One TransNeXt of each attention kind (stages 1-3 aggregated, stage 4 full) at an odd size.
TRANSNEXT = dict(arch='tiny', depths=[1, 1, 2, 1], img_size=96, pretrain_size=224)
TRANSXNET = dict(arch='tiny', depths=[1, 1, 1, 1], pretrain_size=56)
SIZE = (61, 75)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference over the largest entry of ``want`` (its own scale)."""
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def check_autocast_query() -> None:
    """The autocast state as the ops read it, whichever API this torch has."""
    from mmtransnext.utils import compat
    assert compat.autocast_dtype('cpu') is None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert compat.autocast_dtype('cpu') == torch.bfloat16
        assert compat.autocast_dtype('cuda') is None
        assert compat.autocast_dtype('meta') is None


def weighted_sum(outs) -> torch.Tensor:
    """A loss that weighs every output element differently (so no gradient is trivially
    uniform)."""
    return sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)


def check_transnext(impl: str) -> Dict[str, float]:
    """Outputs and parameter gradients of ``attn_impl=impl`` against the official
    computation."""
    from mmtransnext.models import TransNeXt
    from reference import perturb_, reference_backbone
    torch.manual_seed(0)
    model = perturb_(TransNeXt(**TRANSNEXT, attn_impl=impl)).train()
    x = torch.randn(2, 3, *SIZE)
    params = dict(model.named_parameters())
    results = []
    for forward in (model, lambda img: reference_backbone(model, img)):
        outs = forward(x)
        loss = weighted_sum(outs)
        results.append((outs, torch.autograd.grad(loss, list(params.values()))))
    (outs, grads), (ref_outs, ref_grads) = results
    out_error = max(relative_error(o, r) for o, r in zip(outs, ref_outs))
    assert out_error < 1e-4, f'TransNeXt attn_impl={impl!r}: outputs off by {out_error:.2e}'
    grad_error = 0.0
    for name, grad, ref in zip(params, grads, ref_grads):
        if name.startswith('block4.') and name.endswith('cpb_fc2.bias'):
            # Shifts every logit of a full-attention softmax alike: its true gradient is zero
            # and both computations return rounding noise.
            assert grad.abs().max() < 1e-5 and ref.abs().max() < 1e-5, name
            continue
        error = relative_error(grad, ref)
        assert error < 1e-4, f'TransNeXt attn_impl={impl!r}: gradient of {name} off by {error:.2e}'
        grad_error = max(grad_error, error)
    return {'outputs': out_error, 'gradients': grad_error}


def check_transxnet() -> Dict[str, float]:
    """Eval-mode outputs against the official computation (TransXNet has no compiled ops)."""
    from mmtransnext.models import TransXNet
    from reference import perturb_
    from reference_transxnet import reference_transxnet
    torch.manual_seed(0)
    model = perturb_(TransXNet(**TRANSXNET), std=0.05).eval()
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        outs = model(x)
        expected = reference_transxnet(model.state_dict(), x, model.depths, model.num_heads,
                                       model.arch_settings['num_groups'])
    error = max(relative_error(o, r) for o, r in zip(outs, expected))
    assert error < 1e-4, f'TransXNet: outputs off by {error:.2e}'
    return {'outputs': error}


def write_checkpoint(path: str) -> None:
    """What mmengine's Runner writes: weights, optimizer state, numpy scalars, message hub."""
    from mmengine.logging import HistoryBuffer
    from mmtransnext.models import TransNeXt
    model = TransNeXt(arch='tiny', depths=[1, 1, 1, 1])
    optim = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3, 32, 32))[-1].sum().backward()
    optim.step()
    torch.save({'meta': {'epoch': 1, 'iter': 10, 'seed': np.int64(3),
                         'torch': str(torch.__version__)},
                'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()},
                'optimizer': optim.state_dict(),
                'message_hub': {'log_scalars': {'loss': HistoryBuffer([np.float64(0.5)], [1])}}},
               path)


#: Training-mode gradient cases: (family, constructor arguments, input shape).
GRADIENT_CASES = [
    ('TransNeXt', dict(arch='tiny', depths=[1, 1, 1, 1], attn_impl='torch'), (1, 3, 32, 32)),
    ('TransNeXt', dict(arch='tiny', depths=[1, 1, 1, 1], attn_impl='ext'), (1, 3, 32, 32)),
    ('TransNeXt', dict(arch='tiny', depths=[1, 1, 1, 1], img_size=96), (2, 3, *SIZE)),
    ('TransXNet', dict(arch='tiny', depths=[1, 1, 1, 1]), (2, 3, 32, 32)),
    ('TransXNet', dict(arch='tiny', depths=[1, 1, 1, 1]), (2, 3, *SIZE)),
]


def training_gradients(family: str, kwargs: Dict[str, Any], state: Dict[str, torch.Tensor],
                       x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Parameter gradients of a weighted sum of the stage outputs, training mode."""
    import mmtransnext.models as models
    model = getattr(models, family)(**kwargs).train()
    model.load_state_dict(state)
    outs = model(x)
    loss = weighted_sum(outs)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def write_gradients(path: str) -> None:
    """Weights, inputs and this torch's gradients of every :data:`GRADIENT_CASES` case."""
    import mmtransnext.models as models
    cases = []
    for i, (family, kwargs, shape) in enumerate(GRADIENT_CASES):
        torch.manual_seed(i)
        state = getattr(models, family)(**kwargs).state_dict()
        x = torch.randn(shape)
        cases.append({'family': family, 'kwargs': kwargs, 'state': state, 'input': x,
                      'grads': training_gradients(family, kwargs, state, x)})
    torch.save({'torch': str(torch.__version__), 'cases': cases}, path)


def compare_gradients(path: str) -> Dict[str, float]:
    """This torch's gradients against the file another torch wrote, per case: the largest
    difference of a tensor over its own largest entry, floored at 1e-4 of the case's largest
    gradient (gradients that are zero up to rounding are noise in both). Raises over 1e-3."""
    written = torch.load(path, map_location='cpu')
    errors = {}
    for case in written['cases']:
        got = training_gradients(case['family'], case['kwargs'], case['state'], case['input'])
        scale = max(g.abs().max().item() for g in case['grads'].values())
        name = f"{case['family']} {case['kwargs']} {tuple(case['input'].shape)}"
        assert set(got) == set(case['grads']), f'{name}: other parameters have gradients'
        worst = {key: ((got[key] - want).abs().max()
                       / want.abs().max().clamp_min(1e-4 * scale)).item()
                 for key, want in case['grads'].items()}
        key = max(worst, key=worst.get)
        assert worst[key] < 1e-3, (
            f"{name}: the gradient of {key} differs from torch {written['torch']}'s by "
            f'{worst[key]:.2e} of its scale')
        errors[name] = worst[key]
    return errors


def assert_same(got: Any, want: Any, where: str) -> None:
    """``got`` equals ``want`` exactly, containers recursively, tensors in dtype and value."""
    assert type(got) is type(want), f'{where}: {type(got).__name__} != {type(want).__name__}'
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and torch.equal(got, want), where
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and np.array_equal(got, want), where
    elif isinstance(want, dict):
        assert list(got) == list(want), f'{where}: keys differ'
        for key in want:
            assert_same(got[key], want[key], f'{where}.{key}')
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f'{where}: lengths differ'
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f'{where}[{i}]')
    elif hasattr(want, '__dict__') and not isinstance(want, type):  # HistoryBuffer
        assert_same(vars(got), vars(want), where)
    else:
        assert got == want, f'{where}: {got!r} != {want!r}'


def check_checkpoint(path: str) -> str:
    """The restricted reader (no trust) returns what full unpickling returns; the backbone
    loads from it. Returns the torch that wrote the file."""
    from mmtransnext.checkpoint import load_pretrained, read_checkpoint
    from mmtransnext.models import TransNeXt
    safe = read_checkpoint(path, allow_pickle=False)
    assert_same(safe, torch.load(path, map_location='cpu', weights_only=False), 'checkpoint')
    model = TransNeXt(arch='tiny', depths=[1, 1, 1, 1])
    load_pretrained(model, path, prefix='backbone')
    for key, value in model.state_dict().items():
        assert torch.equal(value, safe['state_dict'][f'backbone.{key}']), key
    return safe['meta']['torch']


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', help='folder for result.json and checkpoint.pth')
    parser.add_argument('--ext-library', help='a built mmtransnext._ext to load')
    parser.add_argument('--read', nargs='*', default=[], help='checkpoints to read')
    parser.add_argument('--compare-gradients', help="another torch's gradients.pth")
    args = parser.parse_args(argv)
    os.environ.pop('MMTRANSNEXT_TRUSTED_CHECKPOINTS', None)
    if args.ext_library:
        torch.ops.load_library(args.ext_library)
    import mmtransnext
    # Importing compiles no Triton kernel, whatever triton is installed (2.1 cannot build them).
    assert 'mmtransnext.ops.triton_kernels' not in sys.modules
    from mmtransnext.ops import load_extension
    status = load_extension()
    assert status.loaded, f'the compiled ops did not load: {status.error}'
    check_autocast_query()
    result: Dict[str, Any] = {
        'torch': torch.__version__, 'numpy': np.__version__,
        'python': sys.version.split()[0], 'mmtransnext': mmtransnext.__file__,
        'ext': status.source,
        'transnext_torch': check_transnext('torch'),
        'transnext_ext': check_transnext('ext'),
        'transxnet': check_transxnet(),
    }
    try:
        import triton
        result['triton'] = triton.__version__
    except ImportError:
        result['triton'] = None
    own = osp.join(args.out, 'checkpoint.pth')
    write_checkpoint(own)
    result['checkpoints_read'] = [check_checkpoint(p) for p in [own, *args.read]]
    write_gradients(osp.join(args.out, 'gradients.pth'))
    if args.compare_gradients:
        result['gradients_vs'] = compare_gradients(args.compare_gradients)
    with open(osp.join(args.out, 'result.json'), 'w') as f:
        json.dump(result, f, indent=1)


if __name__ == '__main__':
    main(sys.argv[1:])
