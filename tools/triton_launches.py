"""Triton kernel launches recorded from real calls, each with the specialisation Triton would
compile for it; no GPU, no kernel run.

Developer tooling, not part of the package: ``tools/check_triton_build.py`` imports it as its
sibling module, the tests through ``pytest.ini``'s ``pythonpath``.

:class:`LaunchRecorder` is the ops' kernel launcher for the block
(:attr:`mmtransnext.ops.device.DeviceProperties.launcher`: what the ops call in place of
``kernel[grid](*args, **meta)``), so that a launch is recorded instead of compiled and run.
:func:`specialize` turns a launch into its :class:`KernelSpecialization` with Triton's own code:
the argument binder ``triton.runtime.jit.create_function_from_signature`` builds for the kernel
and ``JITFunction._pack_args``, the two steps ``JITFunction.run`` takes before it looks a kernel
up in its cache or compiles it (argument types; ints equal to 1 made constexpr; ints and
pointers divisible by 16 marked ``tt.divisibility``; the kernel's ``do_not_specialize`` and
``do_not_specialize_on_alignment`` honoured; the options ``num_warps``, ``num_stages``). Tensors
reach it as :class:`PointerArg` stand-ins whose address is a 16-byte aligned storage (as from
the caching allocator) plus ``storage_offset * itemsize``, so that meta and fake tensors, which
have no memory, specialise as real ones would.

:class:`TrainingStepRecorder` runs TransNeXt forwards and backwards on fake CUDA tensors
(``FakeTensorMode``): CUDA's autocast rules, hence the dtypes autocast really hands the kernels,
without a GPU. Two things stand in for what needs a device: the ``mmtransnext`` custom ops run
their real implementation (where the kernels are launched) instead of their fake one
(:class:`OpenCustomOps`), and the backward is run node by node in Python
(:func:`run_backward`), since the autograd engine wants a real device for CUDA tensors. The
device itself is described to the ops by :func:`fake_cuda` (:class:`DeviceProperties`): its
memory, its multiprocessors, no device to make current, no self-test.
"""
import contextlib
import dataclasses
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch._library.custom_ops import _maybe_get_opdef
from torch.autograd.function import BackwardCFunction
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mmtransnext.ops.device import DeviceProperties, assume_device, assumed_device

#: Where a stand-in pointer's storage starts: 16-byte aligned, as every storage the caching
#: allocator hands out (it aligns to 512 bytes).
STORAGE_BASE = 1 << 20
#: The target whose backend specialises the launches. The rules (1, divisibility by 16) are
#: those of Triton's ``BaseBackend``, the same for every CUDA arch.
DEFAULT_TARGET = ('cuda', 90, 32)
#: Input size ``(H, W)`` of the default build check: a COCO image at mmdet's 800-pixel scale,
#: padded to 32 (its 86 specialisations over the archs, precisions and bias modes already take
#: most of the check's ~3 minutes).
DEFAULT_SIZES = ((800, 1216),)
#: ``precision name: (autocast dtype or None, torch.backends.cuda.matmul.allow_tf32)``.
PRECISIONS = {
    'fp32': (None, False),
    'tf32': (None, True),
    'bf16': (torch.bfloat16, False),
    'fp16': (torch.float16, False),
}
#: GPU memory (bytes) whose chunk budgets the fake CUDA device takes (80 GB, an A100/H100).
FAKE_GPU_MEMORY = 80 << 30


class PointerArg:
    """A tensor as a kernel argument: its dtype and the address of its first element."""

    def __init__(self, dtype: torch.dtype, address: int) -> None:
        self.dtype = dtype
        self.address = address

    def data_ptr(self) -> int:
        return self.address

    @classmethod
    def of(cls, tensor: Tensor) -> 'PointerArg':
        """``tensor``'s stand-in: its storage taken as 16-byte aligned."""
        return cls(tensor.dtype, STORAGE_BASE + tensor.storage_offset() * tensor.element_size())


def plain_argument(value: Any) -> Any:
    """A launch argument as Triton's specialisation sees it (tensors as :class:`PointerArg`)."""
    return PointerArg.of(value) if isinstance(value, Tensor) else value


@dataclass(frozen=True)
class KernelSpecialization:
    """What Triton compiles one kernel binary for: the fields of ``ASTSource`` plus options.

    Attributes:
        kernel: the kernel's name.
        signature: ``(argument, type)`` for every argument, ``'constexpr'`` for constexprs.
        constexprs: ``(path, value)`` of every constexpr, the declared ones and the ints
            Triton made constexpr (equal to 1, or None); a path is a tuple of argument
            indices.
        attrs: ``(path, attributes)``, e.g. ``((('tt.divisibility', 16),))``.
        options: the launch's options (``num_warps``, ``num_stages``, ``debug``...), as passed.
        num_warps, num_stages: as the backend resolves them (defaults filled in).
    """
    kernel: str
    signature: Tuple[Tuple[str, str], ...]
    constexprs: Tuple[Tuple[Tuple[int, ...], Any], ...]
    attrs: Tuple[Tuple[Tuple[int, ...], Tuple[Tuple[str, int], ...]], ...]
    options: Tuple[Tuple[str, Any], ...]
    num_warps: int
    num_stages: int

    def arg_name(self, path: Tuple[int, ...]) -> str:
        return self.signature[path[0]][0] + ''.join(f'[{i}]' for i in path[1:])

    @property
    def dtype(self) -> str:
        """Element type of the first pointer argument (the input dtype of our kernels)."""
        return next((ty[1:] for _, ty in self.signature if ty.startswith('*')), '-')

    @property
    def constants(self) -> Dict[str, Any]:
        """Constexpr values by argument name."""
        return {self.arg_name(path): value for path, value in self.constexprs}

    @property
    def divisible(self) -> Tuple[str, ...]:
        """Arguments specialised as divisible by 16."""
        return tuple(self.arg_name(path) for path, attrs in self.attrs
                     if ('tt.divisibility', 16) in attrs)

    def value_specialised(self, declared: Sequence[str]) -> Dict[str, Any]:
        """The non-declared arguments whose value or alignment this binary is specialised on:
        ``{name: 1 or 'D'}`` (made constexpr because equal to 1, or divisible by 16)."""
        out = {name: value for name, value in self.constants.items() if name not in declared}
        out.update({name: 'D' for name in self.divisible})
        return out

    def compile_args(self) -> Tuple[Dict[str, str], Dict[Tuple[int, ...], Any],
                                    Dict[Tuple[int, ...], List[List[Any]]], Dict[str, Any]]:
        """``(signature, constexprs, attrs, options)`` for ``ASTSource`` and ``triton.compile``."""
        attrs = {path: [list(a) for a in values] for path, values in self.attrs}
        return dict(self.signature), dict(self.constexprs), attrs, dict(self.options)


@dataclass(frozen=True)
class Launch:
    """One recorded ``kernel[grid](...)`` call, with its integer arguments (sizes, strides,
    constexprs; by name) for the counts below."""
    spec: KernelSpecialization
    grid: Tuple[int, ...]
    context: str = ''
    integers: Tuple[Tuple[str, int], ...] = ()

    @property
    def programs(self) -> int:
        """Programs launched (the grid's product)."""
        out = 1
        for extent in self.grid:
            out *= extent
        return out

    def waves(self, multiprocessors: int = 132) -> float:
        """Programs per multiprocessor (132: an H100's), i.e. waves at one block per SM."""
        return self.programs / multiprocessors


def bias_taps(launch: Launch) -> Optional[Tuple[int, str]]:
    """``(taps, folded axis)`` of a launch that reads the folded CPB grid: the gathers per
    pooled logit (forward, and each recomputation in backward) and the atomic adds per
    pooled logit's gradient (query backward) are one per tap; None for other kernels."""
    args = dict(launch.integers)
    if 'taps' not in args:
        return None
    return args['taps'], 'columns' if args.get('transposed') else 'rows'


def grid_gradient_atomics(launch: Launch) -> int:
    """Float atomic adds (one per active lane of a ``tl.atomic_add``, what the memory system
    serves) into the folded CPB grid's gradient by ``launch``: 0 but for
    ``_attention_bwd_query``, which adds one per tap of the unfolded axis (:func:`bias_taps`)
    of every (query, pooled key) pair of its ``programs / query tiles`` slices, each a head of
    a pair of batch items (their gradients summed before the add; masked lanes add nothing)."""
    if launch.spec.kernel != '_attention_bwd_query':
        return 0
    args = dict(launch.integers)
    length = args['height'] * args['width']
    slices = launch.programs // -(-length // args['BLOCK_M'])
    return slices * length * args['num_keys'] * args['taps']


def _as_jit_function(kernel):
    """``kernel`` as a ``JITFunction`` (whose parameters the binder reads): itself, or, for a
    kernel decorated under ``TRITON_INTERPRET=1`` (an ``InterpretedFunction``), one built from
    the same function and decorator arguments."""
    from triton.runtime.jit import JITFunction
    if isinstance(kernel, JITFunction):
        return kernel
    cached = getattr(kernel, '_mmtransnext_jit_view', None)
    if cached is None:
        cached = JITFunction(kernel.fn, **getattr(kernel, 'kwargs', {}))
        kernel._mmtransnext_jit_view = cached
    return cached


_binders: Dict[Tuple[int, Tuple], Tuple[Any, Any]] = {}


def _binder(jit, target: Tuple[str, Any, int]):
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    key = (id(jit), target)
    if key not in _binders:
        backend = make_backend(GPUTarget(*target))
        _binders[key] = (backend,
                         create_function_from_signature(jit.signature, jit.params, backend))
    return _binders[key]


def specialize(kernel, args: Sequence[Any], kwargs: Dict[str, Any],
               target: Tuple[str, Any, int] = DEFAULT_TARGET) -> KernelSpecialization:
    """The :class:`KernelSpecialization` Triton's runtime computes for
    ``kernel[grid](*args, **kwargs)`` (``JITFunction.run`` up to its cache lookup).

    Args:
        kernel: a ``triton.jit`` function (a ``JITFunction``, or an ``InterpretedFunction``).
        args, kwargs: the launch's arguments; tensors may be meta or fake.
        target: ``(backend, arch, warp size)`` of the backend whose rules apply.
    """
    from triton import knobs
    jit = _as_jit_function(kernel)
    backend, binder = _binder(jit, target)
    kwargs = dict(kwargs)
    # As JITFunction.run does before binding.
    kwargs['debug'] = kwargs.get('debug', jit.debug) or knobs.runtime.debug
    kwargs['instrumentation_mode'] = knobs.compilation.instrumentation_mode
    plain = {name: plain_argument(value) for name, value in kwargs.items()}
    bound, specialization, options = binder(*map(plain_argument, args), **plain)
    options, signature, constexprs, attrs = jit._pack_args(backend, plain, bound, specialization,
                                                           options)
    launch_options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in jit.arg_names))
    return KernelSpecialization(
        kernel=jit.fn.__name__,
        signature=tuple(signature.items()),
        constexprs=tuple(sorted(constexprs.items())),
        attrs=tuple(sorted((path, tuple(tuple(a) for a in values))
                           for path, values in attrs.items())),
        options=launch_options, num_warps=options.num_warps, num_stages=options.num_stages)


def launchable_kernels(module=None) -> Dict[str, Any]:
    """Every ``triton.jit`` function of ``module`` (default
    :mod:`mmtransnext.ops.triton_kernels`), by name; device helpers included (never launched)."""
    from triton.runtime.jit import KernelInterface
    if module is None:
        from mmtransnext.ops import triton_kernels as module
    return {name: obj for name, obj in vars(module).items() if isinstance(obj, KernelInterface)}


class LaunchRecorder:
    """Within ``with``, a Triton kernel launched through the ops' launcher
    (:func:`mmtransnext.ops.device.launch_kernel`: every launch of the ops) records a
    :class:`Launch` (in :attr:`launches`) instead of compiling and running; it returns None.
    The kernels themselves are not touched.

    Args:
        target: as for :func:`specialize`.

    Attributes:
        launches: the recorded launches, in order.
        context: a label stored with each launch (set it between calls).
    """

    def __init__(self, target: Tuple[str, Any, int] = DEFAULT_TARGET) -> None:
        self.target = target
        self.launches: List[Launch] = []
        self.context = ''
        self._assumed = contextlib.ExitStack()

    def launcher(self, kernel, grid):
        """Stands in for ``kernel[grid]``: the returned callable records the launch."""
        def record(*args, **kwargs) -> None:
            named = dict(zip(_as_jit_function(kernel).arg_names, args), **kwargs)
            launch_grid = grid(named) if callable(grid) else grid  # as JITFunction.run
            spec = specialize(kernel, args, kwargs, self.target)
            integers = tuple((name, value) for name, value in named.items()
                             if isinstance(value, int) and not isinstance(value, bool))
            self.launches.append(Launch(spec, tuple(int(g) for g in launch_grid), self.context,
                                        integers))
        return record

    def __enter__(self) -> 'LaunchRecorder':
        self._assumed.enter_context(assume_device(dataclasses.replace(
            assumed_device(), launcher=self.launcher)))
        return self

    def __exit__(self, *exc) -> None:
        self._assumed.close()

    def specializations(self) -> Dict[KernelSpecialization, List[str]]:
        """Distinct specialisations, each with the contexts that launched it (in order)."""
        out: Dict[KernelSpecialization, List[str]] = defaultdict(list)
        for launch in self.launches:
            if launch.context not in out[launch.spec]:
                out[launch.spec].append(launch.context)
        return dict(out)


def _on_fake_device(args, kwargs) -> bool:
    """Whether an op reads a fake tensor or creates one on a device other than the CPU."""
    from torch._subclasses.fake_tensor import FakeTensor
    device = kwargs.get('device')
    return (any(isinstance(t, FakeTensor) for t in tree_flatten((args, kwargs))[0])
            or (device is not None and torch.device(device).type != 'cpu'))


class OpenCustomOps(TorchDispatchMode):
    """Within a ``FakeTensorMode`` (entered before this mode): runs the real implementation of
    the ``mmtransnext`` Python custom ops instead of their fake one, so that fake tensors reach
    the kernel launches inside it; and runs host computations (ops on real CPU tensors only,
    creating CPU tensors, e.g. the position tables, built on the host with ``torch.unique``
    before they are copied to the device) for real."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        kwargs = kwargs or {}
        opdef = _maybe_get_opdef(func) if func.namespace == 'mmtransnext' else None
        if opdef is not None:
            return opdef._init_fn(*args, **kwargs)
        if not _on_fake_device(args, kwargs):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _conform(grad: Tensor, metadata) -> Tensor:
    """A node's output gradient made to fit the input it flows into, as the engine's
    ``validate_outputs`` does: summed over broadcast dimensions, cast to its dtype and device."""
    if tuple(grad.shape) != tuple(metadata.shape):
        grad = grad.sum_to_size(metadata.shape)
    if grad.dtype != metadata.dtype:
        grad = grad.to(metadata.dtype)
    if grad.device != metadata.device:
        grad = grad.to(metadata.device)
    return grad


def _call_node(node, grads: List[Optional[Tensor]]) -> Tuple[Optional[Tensor], ...]:
    """Gradients a node passes to its ``next_functions``, one each."""
    if not isinstance(node, BackwardCFunction):  # a C++ node
        outputs = node(*grads)
        return outputs if isinstance(outputs, tuple) else (outputs,)
    # A Python autograd.Function, as the engine's PyNode calls it: missing gradients made
    # zeros (the default; no function here calls ctx.set_materialize_grads(False), and the flag
    # cannot be read back), one gradient returned per forward argument; those of the inputs
    # that need one go, in order, to the edges that lead somewhere.
    grads = [torch.zeros(m.shape, dtype=m.dtype, device=m.device) if g is None else g
             for g, m in zip(grads, node._input_metadata)]
    outputs = node.apply(*grads)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    needed = iter(g for g, needs in zip(outputs, node.needs_input_grad) if needs)
    return tuple(None if child is None else next(needed)
                 for child, _ in node.next_functions)


def run_backward(loss: Tensor) -> Dict[Tensor, Tensor]:
    """Back-propagate a scalar ``loss`` by calling each node of its autograd graph once, in
    dependency order, from Python: the gradients the autograd engine would pass (fitted to each
    input's shape, dtype and device, summed where several reach one input), without the engine,
    which needs a real device for CUDA tensors. A node that no gradient reaches is not called;
    leaves' ``.grad`` is left alone; tensor and node hooks are not run (the backbone has none).

    Returns:
        The gradient reaching each leaf that requires grad (what the engine would accumulate).
    """
    root = loss.grad_fn
    if root is None:
        raise ValueError('loss does not require grad')
    pending = Counter()
    stack, seen = [root], {root}
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is None:
                continue
            pending[child] += 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    grads: Dict[Any, Dict[int, Tensor]] = defaultdict(dict)
    grads[root][0] = torch.ones_like(loss)
    leaves: Dict[Tensor, Tensor] = {}
    ready = [root]
    while ready:
        node = ready.pop()
        inputs = grads.pop(node, {})
        outputs: Tuple = ()
        if hasattr(node, 'variable'):  # AccumulateGrad of a leaf
            if 0 in inputs:
                leaves[node.variable] = inputs[0]
        elif inputs:
            outputs = _call_node(node, [inputs.get(i) for i in range(len(node._input_metadata))])
        for i, (child, slot) in enumerate(node.next_functions):
            if child is None:
                continue
            grad = outputs[i] if i < len(outputs) else None
            if grad is not None:
                grad = _conform(grad, child._input_metadata[slot])
                held = grads[child].get(slot)
                grads[child][slot] = grad if held is None else held + grad
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    return leaves


@contextlib.contextmanager
def cuda_autocast(dtype: Optional[torch.dtype]) -> Iterator[None]:
    """CUDA autocast to ``dtype`` (None: off), set directly: ``torch.autocast('cuda')`` turns
    itself off when no GPU is visible, but its rules apply to fake CUDA tensors all the same."""
    if dtype is None:
        yield
        return
    enabled, previous = torch.is_autocast_enabled('cuda'), torch.get_autocast_dtype('cuda')
    torch.set_autocast_enabled('cuda', True)
    torch.set_autocast_dtype('cuda', dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled('cuda', enabled)
        torch.set_autocast_dtype('cuda', previous)


@contextlib.contextmanager
def allow_tf32(allowed: bool) -> Iterator[None]:
    """``torch.backends.cuda.matmul.allow_tf32`` set within the block."""
    matmul = torch.backends.cuda.matmul
    saved, matmul.allow_tf32 = matmul.allow_tf32, allowed
    try:
        yield
    finally:
        matmul.allow_tf32 = saved


def fake_cuda_device(memory: int = FAKE_GPU_MEMORY) -> DeviceProperties:
    """The CUDA device :func:`fake_cuda` describes to the ops: ``memory`` bytes (the chunk
    budgets of :mod:`mmtransnext.ops.budget`), an H100's multiprocessors
    (``triton_attention.DEFAULT_SMS``), no device to make current for a launch, and no backend
    self-test (it runs kernels, which fake tensors cannot); the launcher in force is kept."""
    from mmtransnext.ops.triton_attention import DEFAULT_SMS
    return dataclasses.replace(assumed_device(), total_memory=memory,
                               multiprocessors=DEFAULT_SMS, switch_device=False, self_test=False)


@contextlib.contextmanager
def fake_cuda(memory: int = FAKE_GPU_MEMORY) -> Iterator[Any]:
    """A ``FakeTensorMode`` whose CUDA device, as the ops see it, is :func:`fake_cuda_device`;
    real tensors met inside (e.g. a module's parameters) are made fake."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mmtransnext.ops import dispatch
    try:
        with assume_device(fake_cuda_device(memory)), \
                FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield mode
    finally:
        dispatch.reset()  # decisions made here skipped the self-test: none is kept


@dataclass(frozen=True)
class TrainingCase:
    """One TransNeXt training step to record.

    Attributes:
        arch: 'micro', 'tiny', 'small' or 'base'.
        precision: a key of :data:`PRECISIONS` (16-bit ones under CUDA autocast).
        extrapolation: position bias in extrapolation mode, else interpolation from
            ``img_size``.
        size: ``(H, W)`` of the input images.
        batch: images per step.
        img_size: training size of interpolation mode.
    """
    arch: str
    precision: str
    extrapolation: bool
    size: Tuple[int, int]
    batch: int = 2
    img_size: int = 800

    @property
    def label(self) -> str:
        mode = 'extrapolation' if self.extrapolation else f'interpolation@{self.img_size}'
        return (f'{self.arch} {self.precision} {mode} {self.size[0]}x{self.size[1]} '
                f'b{self.batch}')


def build_backbone(case: TrainingCase, one_block_per_stage: bool = True) -> torch.nn.Module:
    """The case's TransNeXt (``attn_impl='triton'``, pretrained at 224 as the shipped
    configs), on CPU with real parameters. ``one_block_per_stage`` keeps one block of each
    stage: the blocks of a stage are built alike and get the same inputs' shapes, strides and
    dtypes, so they launch the same specialisations."""
    from mmtransnext.models.backbones.transnext import ARCH_SETTINGS, TransNeXt
    depths = [1] * len(ARCH_SETTINGS[case.arch]['depths']) if one_block_per_stage else None
    return TransNeXt(arch=case.arch, img_size=case.img_size, pretrain_size=224,
                     is_extrapolation=case.extrapolation, depths=depths, attn_impl='triton')


class TrainingStepRecorder(LaunchRecorder):
    """A :class:`LaunchRecorder` that runs TransNeXt training steps on fake CUDA tensors: one
    ``FakeTensorMode`` for the session, each model built once per architecture and
    position-bias mode and kept with its size caches across steps, as in training.

    Args:
        target: as for :class:`LaunchRecorder`.
        one_block_per_stage: see :func:`build_backbone`.
    """

    def __init__(self, target: Tuple[str, Any, int] = DEFAULT_TARGET,
                 one_block_per_stage: bool = True) -> None:
        super().__init__(target)
        self.one_block_per_stage = one_block_per_stage
        self._models: Dict[Tuple, torch.nn.Module] = {}
        self._modes = contextlib.ExitStack()

    def __enter__(self) -> 'TrainingStepRecorder':
        super().__enter__()
        self._modes.enter_context(fake_cuda())
        self._modes.enter_context(OpenCustomOps())
        return self

    def __exit__(self, *exc) -> None:
        self._modes.close()
        self._models.clear()
        super().__exit__(*exc)

    def record(self, case: TrainingCase) -> None:
        """Record the launches of one training step of ``case``: forward under its autocast and
        TF32 setting, backward (:func:`run_backward`) of the sum of all outputs."""
        key = (case.arch, case.extrapolation, case.img_size)
        if key not in self._models:  # host ops run for real here, so the model is real ...
            model = build_backbone(case, self.one_block_per_stage)
            self._models[key] = model.train().to('cuda')  # ... until its move to the device
        dtype, tf32 = PRECISIONS[case.precision]
        self.context = case.label
        with allow_tf32(tf32):
            images = torch.empty(case.batch, 3, *case.size, device='cuda')
            with cuda_autocast(dtype):
                outs = self._models[key](images)
            run_backward(sum(out.float().sum() for out in outs))


def size_variants(specs: Sequence[KernelSpecialization]) -> Dict[Tuple[str, str], int]:
    """Distinct specialisations per ``(kernel, dtype)``."""
    return dict(Counter((spec.kernel, spec.dtype) for spec in set(specs)))


def varying_arguments(specs: Sequence[KernelSpecialization],
                      declared: Sequence[str] = ()) -> List[str]:
    """The arguments (not among ``declared`` constexprs) whose specialisation differs between
    ``specs`` of one kernel: what ``do_not_specialize`` would have to list to merge them."""
    seen = defaultdict(set)
    names = set()
    for spec in specs:
        special = spec.value_specialised(declared)
        names.update(special)
        for name, _ in spec.signature:
            seen[name].add(special.get(name))
    return sorted(name for name in names if len(seen[name]) > 1)

