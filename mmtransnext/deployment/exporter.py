"""Export of the backbones and of the mmdet / mmseg models built on them: ONNX (torch's dynamo
exporter, checked with onnxruntime) and ``torch.export`` programs.

The graph takes what mmdeploy's graphs take: the preprocessed, normalised ``(B, 3, H, W)``
image tensor (the data preprocessor's mean, std, BGR-to-RGB and padding stay outside). Parts:

- ``'backbone'``: the stage features of the backbone;
- ``'features'``: ``model.extract_feat(x)``, the backbone and neck (FPN, ChannelMapper) outputs
  of an mmdet / mmseg model: what every model built here exports, the ones whose heads do not
  included (:func:`tensor_forward_refusal`);
- ``'model'``: ``model(x, data_samples, mode='tensor')``, the raw head outputs before any
  post-processing (decoding, NMS, resizing to the image), flattened into a tuple of tensors;
- ``'predict'``: the whole model with its post-processing, mmdeploy's outputs (detectors'
  ``dets`` and ``labels``, segmentors' label map; :mod:`.whole`).

Attention lowers to standard operators: while exporting, :func:`mmtransnext.ops.dispatch.
backend_for` gives every layer the plain-PyTorch backend (pooled keys by matmuls, one chunk per
map), the numbers of ``attn_impl='torch'``; an explicit ``attn_impl='triton'`` or ``'ext'`` is
refused (:func:`check_exportable`) rather than silently replaced.

What a backbone family cannot export, and how a graph holds its size-dependent position data,
are the family's export rules (its ``export_refusal`` and ``export_position_data``, e.g.
TransNeXt bakes tables built by an eager forward at the export size, :func:`prepare`, or with
``dynamic`` computes them in the graph, and refuses free sizes in its reference mode only;
TransXNet resizes its tables in the graph). Weight-derived caches are never used while
exporting (:func:`mmtransnext.models.layers.weight_cache.worth_keeping`). TransNeXt's attention
runs in bounded chunks of query rows under one ONNX ``Scan`` per block
(:mod:`mmtransnext.ops.export_attention`).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..models.backbones.base import family_of
from ..ops.backend import BACKENDS
from .errors import ExportError
from .whole import ONNX_TRANSLATIONS, predict_module

FORMATS = ('onnx', 'exported-program')
PARTS = ('backbone', 'features', 'model', 'predict')
#: ONNX opset of the exports: 20 has ``Gelu``, one onnxruntime kernel, where at 18 the exporter
#: writes GELU as ``Erf`` and four elementwise nodes, which onnxruntime does not fuse.
OPSET = 20
#: Sizes (multiples of 32 plus odd remainders) a dynamic export is checked at, besides its own.
DYNAMIC_CHECK_SIZES = ((96, 128), (160, 96), (133, 171))


@dataclass
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        path: the file.
        fmt: ``'onnx'`` or ``'exported-program'``.
        part: one of :data:`PARTS`.
        shape: ``(H, W)`` of the example input.
        dynamic: whether height and width are free.
        tables: how the size-dependent position data is held (:func:`position_tables`).
        output_names: one name per graph output.
        input_name: the graph input's name.
    """
    path: str
    fmt: str
    part: str
    shape: Tuple[int, int]
    dynamic: bool
    tables: str
    output_names: List[str] = field(default_factory=list)
    input_name: str = 'input'


# ------------------------------------------------------------------------------------ checks
def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone of an mmdet / mmseg model, or ``model`` itself if it is a backbone."""
    return getattr(model, 'backbone', model)


def check_exportable(model: nn.Module, dynamic: bool = False) -> None:
    """Raise :class:`ExportError` for what cannot be exported, naming the option to change.

    - a model in training mode (dropout, drop path and batch statistics would be traced);
    - an attention layer with ``attn_impl`` ``'triton'`` or ``'ext'`` (kernels, not standard
      operators);
    - what the backbone's family refuses (its ``export_refusal``, e.g. a dynamic TransNeXt,
      whose position tables are built on the host per size).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be an nn.Module, got {type(model).__name__}')
    if model.training:
        raise ExportError('the model is in training mode; call model.eval() before exporting '
                          '(dropout, drop path and batch-norm statistics would be exported)')
    for name, module in model.named_modules():
        impl = getattr(module, 'attn_impl', None)
        if impl in BACKENDS[:2]:
            raise ExportError(
                f"{name or type(module).__name__} has attn_impl={impl!r}, whose kernels are not "
                "standard operators an exported graph can hold; set attn_impl='auto' or 'torch' "
                "(e.g. --cfg-options model.backbone.attn_impl=torch)")
    backbone = backbone_of(model)
    reason = backbone.export_refusal(dynamic) if family_of(backbone) else None
    if reason:
        raise ExportError(reason)


def position_tables(model: nn.Module, dynamic: bool) -> str:
    """How an export of ``model`` holds the size-dependent position data, in words (its
    backbone family's ``export_position_data``)."""
    backbone = backbone_of(model)
    if family_of(backbone):
        return backbone.export_position_data(dynamic)
    return f'{type(backbone).__name__}: no position tables'


# ------------------------------------------------------------------------------- modules
def _flatten(value: Any, name: str, out: List[Tuple[str, Tensor]]) -> None:
    if isinstance(value, Tensor):
        out.append((name, value))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flatten(item, f'{name}.{i}' if name else str(i), out)
    elif isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f'{name}.{key}' if name else str(key), out)
    elif value is not None:
        raise ExportError(f'the tensor forward returned a {type(value).__name__} at '
                          f'{name or "the top"}; only tensors (in tuples, lists, dicts) export')


def flatten_outputs(value: Any) -> List[Tuple[str, Tensor]]:
    """``(name, tensor)`` of every tensor in nested tuples / lists / dicts, in order."""
    out: List[Tuple[str, Tensor]] = []
    _flatten(value, '', out)
    return out


def _data_samples(library: str, height: Any, width: Any, batch: int) -> list:
    """Data samples whose metainfo says the batch is unpadded images of the input's size
    (what the heads' tensor forwards read: masks, image shapes)."""
    meta = dict(img_shape=(height, width), ori_shape=(height, width),
                pad_shape=(height, width), batch_input_shape=(height, width),
                scale_factor=(1., 1.), flip=False)
    if library == 'mmdet':
        from mmdet.structures import DetDataSample
        cls = DetDataSample
    else:
        from mmseg.structures import SegDataSample
        cls = SegDataSample
    return [cls(metainfo=dict(meta)) for _ in range(batch)]


def library_of_model(model: nn.Module) -> str:
    """``'mmdet'`` or ``'mmseg'``, from the model class's module."""
    root = type(model).__module__.split('.')[0]
    if root not in ('mmdet', 'mmseg'):
        raise ExportError(f'{type(model).__name__} is not an mmdet or mmseg model; export '
                          "its backbone (part='backbone') or the module itself")
    return root


def _head_needs_samples(model: nn.Module) -> bool:
    """Whether an mmseg model's decode head takes the data samples (Mask2Former's does, but
    mmseg's ``mode='tensor'`` calls it without them)."""
    import inspect
    head = getattr(model, 'decode_head', None)
    return head is not None and 'batch_data_samples' in inspect.signature(head.forward).parameters


class TensorForward(nn.Module):
    """``model(x, data_samples, mode='tensor')`` with the data samples made from ``x``'s size,
    its outputs flattened into a tuple (names in :attr:`output_names` after a call). For an
    mmseg decode head that needs the data samples (Mask2Former), ``decode_head(features,
    data_samples)``: the class scores and mask logits of every decoder layer."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.library = library_of_model(model)
        self.output_names: List[str] = []

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        samples = _data_samples(self.library, x.shape[2], x.shape[3], x.shape[0])
        if self.library == 'mmseg' and _head_needs_samples(self.model):
            outputs = self.model.decode_head(self.model.extract_feat(x), samples)
        else:
            outputs = self.model(x, samples, mode='tensor')
        named = flatten_outputs(outputs)
        self.output_names = [name or 'output' for name, _ in named]
        return tuple(t for _, t in named)


def tensor_forward_refusal(model: nn.Module) -> Optional[str]:
    """Why ``model``'s tensor forward cannot be exported, or None. Known cases (each found by
    exporting the demo config, see docs/deployment.md):

    - two-stage detectors (Mask R-CNN): the tensor forward runs the RPN's ``predict`` (box
      decoding, filtering by a data-dependent mask, NMS) before the RoI head;
    - deformable-attention transformers (DINO, Deformable DETR; Mask2Former's pixel decoder):
      mmdet builds the level shapes with ``torch._shape_as_tensor`` and loops over that tensor's
      values (``torch.linspace`` per level, the levels' split sizes), which a graph cannot
      hold without rewriting mmdet's code (mmdeploy's function rewriters do).
    """
    name = type(model).__name__
    if hasattr(model, 'rpn_head') and hasattr(model, 'roi_head'):
        return (f"{name}'s tensor forward runs the RPN's post-processing (box decoding, a "
                'data-dependent filter and NMS) before the RoI head, which torch.export cannot '
                "trace; export part='predict' (the whole model with its post-processing, "
                "rewritten for export), part='features' (backbone and neck) or part='backbone'")
    pixel_decoder = getattr(getattr(model, 'decode_head', None), 'pixel_decoder', None)
    deformable = [m for m in (model, pixel_decoder) if m is not None and any(
        cls.__name__ in ('DeformableDETR', 'MSDeformAttnPixelDecoder')
        for cls in type(m).__mro__)]
    if deformable:
        return (f"{name}'s {'pixel decoder' if deformable[0] is pixel_decoder else 'transformer'} "
                "builds the level shapes with torch._shape_as_tensor and loops over their "
                'values (mmdet code), which torch.export cannot trace; export '
                "part='predict' (DINO, mmseg's Mask2Former: the whole model, rewritten for "
                "export), part='features' (backbone and neck) or part='backbone'")
    return None


class FeaturesForward(nn.Module):
    """``model.extract_feat(x)`` (backbone, then neck if any) as a tuple, named
    ``features{i}``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        library_of_model(model)
        self.model = model
        self.output_names: List[str] = []

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        outs = self.model.extract_feat(x)
        outs = tuple(outs) if isinstance(outs, (list, tuple)) else (outs,)
        self.output_names = [f'features{i}' for i in range(len(outs))]
        return outs


class BackboneForward(nn.Module):
    """The backbone's stage features as a tuple, named ``stage{i}``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        out_indices = getattr(backbone, 'out_indices', None)
        self.output_names = [f'stage{i + 1}' for i in out_indices] if out_indices else []

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        outs = self.backbone(x)
        return tuple(outs) if isinstance(outs, (list, tuple)) else (outs,)


def export_module(model: nn.Module, part: str) -> nn.Module:
    """The module that is exported for ``part`` of ``model`` (see :data:`PARTS`)."""
    if part not in PARTS:
        raise ValueError(f'part must be one of {PARTS}, got {part!r}')
    if part == 'backbone':
        return BackboneForward(backbone_of(model)).eval()
    if part == 'features':
        return FeaturesForward(model).eval()
    if part == 'predict':
        return predict_module(model).eval()
    reason = tensor_forward_refusal(model)
    if reason is not None:
        raise ExportError(reason)
    return TensorForward(model).eval()


# ------------------------------------------------------------------------------- export
def _example(shape: Sequence[int], batch: int = 1, seed: int = 0) -> Tensor:
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f'shape must be (H, W) with positive sizes, got {tuple(shape)}')
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, int(shape[0]), int(shape[1]), generator=generator)


def prepare(module: nn.Module, example: Tensor) -> Tuple[Tensor, ...]:
    """One eager forward at the export size: builds the size-dependent position tables that a
    fixed-shape export bakes in (and checks the model runs at that size); returns the outputs."""
    with torch.no_grad():
        return module(example)


def _dynamic_shapes(dynamic: bool) -> Optional[tuple]:
    if not dynamic:
        return None
    from torch.export import Dim
    return ({2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)


def export_program(module: nn.Module, example: Tensor, dynamic: bool = False):
    """``torch.export.export`` of ``module`` (non-strict) at ``example``'s size; ``dynamic``
    frees height and width."""
    try:
        return torch.export.export(module, (example,), dynamic_shapes=_dynamic_shapes(dynamic),
                                   strict=False)
    except ExportError:
        raise
    except RuntimeError as err:  # the dispatcher's refusals are RuntimeErrors
        if 'cannot be exported' in str(err):
            raise ExportError(str(err).split('\n')[0]) from err
        raise


def export(model: nn.Module, out: str, shape: Sequence[int] = (512, 512), fmt: str = 'onnx',
           part: str = 'backbone', dynamic: bool = False, optimize: bool = True) -> ExportResult:
    """Export ``part`` of an eval-mode ``model`` to ``out``.

    Args:
        model: a backbone of a registered family or an mmdet / mmseg model built on one.
        out: the file to write (``.onnx``; ``.pt2`` for an exported program).
        shape: ``(H, W)`` of the example input (the baked size without ``dynamic``).
        fmt: ``'onnx'`` or ``'exported-program'``.
        part: one of :data:`PARTS`: ``'backbone'`` (stage features), ``'features'``,
            ``'model'`` (the tensor forward) or ``'predict'`` (with post-processing).
        dynamic: height and width free (checked by :func:`check_exportable`).
        optimize: run the ONNX exporter's graph optimisation (constant folding, fusions).

    Raises:
        ExportError: what cannot be exported, with what to change.
    """
    if fmt not in FORMATS:
        raise ValueError(f'fmt must be one of {FORMATS}, got {fmt!r}')
    check_exportable(model, dynamic)
    if dynamic and part == 'predict':
        raise ExportError("part='predict' is exported at one size (its post-processing is "
                          'checked at fixed sizes only); export without dynamic, once per size')
    module = export_module(model, part)
    example = _example(shape)
    prepare(module, example)
    names = list(module.output_names)
    program = export_program(module, example, dynamic)
    result = ExportResult(out, fmt, part, (int(shape[0]), int(shape[1])), dynamic,
                          position_tables(model, dynamic), names)
    if fmt == 'exported-program':
        torch.export.save(program, out)
        return result
    onnx_program = torch.onnx.export(program, (example,), dynamo=True, opset_version=OPSET,
                                     input_names=[result.input_name],
                                     output_names=names or None, optimize=optimize,
                                     verbose=False, **({'custom_translation_table':
                                                        ONNX_TRANSLATIONS} if part == 'predict'
                                                       else {}))
    onnx_program.save(out)
    return result


# ------------------------------------------------------------------------------ checking
def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max |expected|`` (0 for two all-zero tensors)."""
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.
    return diff / scale if scale > 0 else diff


def onnx_session(path: str, threads: Optional[int] = None, fold_constants: bool = False):
    """An onnxruntime session on the CPU provider (no custom-op libraries).

    ``fold_constants`` False (default) turns off onnxruntime's constant folding, which the
    checks do not need (onnxruntime's default has it on; a TransNeXt graph is made to stay
    small with it: what it can fold per block, the column-folded position grid, is small, and
    the CPB MLP and the attention run under ``Scan`` nodes, :mod:`mmtransnext.ops.
    export_attention`). Its memory pattern is off (see the comment below).
    """
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    # onnxruntime's memory pattern plans one block for every tensor of a run; with the Scans
    # of a TransNeXt graph it reserves far more than a run touches at detection sizes.
    options.enable_mem_pattern = False
    disabled = [] if fold_constants else ['ConstantFolding']
    return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'],
                                        disabled_optimizers=disabled)


def run_onnx(session, x: Tensor) -> List[Tensor]:
    """The outputs of an onnxruntime ``session`` for input ``x``."""
    name = session.get_inputs()[0].name
    return [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]


def check_onnx(path: str, model: nn.Module, part: str,
               sizes: Sequence[Sequence[int]]) -> Dict[Tuple[int, int], float]:
    """Largest relative error (:func:`relative_error`) over the outputs of the ONNX file at
    ``path`` in onnxruntime against ``part`` of ``model`` in PyTorch, per input size."""
    session = onnx_session(path)
    module = export_module(model, part)
    errors = {}
    for i, size in enumerate(sizes):
        x = _example(size, seed=i + 1)
        expected = prepare(module, x)
        actual = run_onnx(session, x)
        if len(actual) != len(expected):
            raise ExportError(f'{path} gives {len(actual)} outputs, PyTorch {len(expected)}')
        errors[(int(size[0]), int(size[1]))] = max(
            relative_error(a, e) for a, e in zip(actual, expected))
    return errors


def check_program(path_or_program: Union[str, Any], model: nn.Module, part: str,
                  sizes: Sequence[Sequence[int]]) -> Dict[Tuple[int, int], float]:
    """As :func:`check_onnx` for an exported program (a ``.pt2`` file or the program)."""
    program = path_or_program
    if isinstance(program, str):
        program = torch.export.load(program)
    graph = program.module()
    module = export_module(model, part)
    errors = {}
    for i, size in enumerate(sizes):
        x = _example(size, seed=i + 1)
        expected = prepare(module, x)
        with torch.no_grad():
            actual = graph(x)
        errors[(int(size[0]), int(size[1]))] = max(
            relative_error(a, e) for a, e in zip(actual, expected))
    return errors
