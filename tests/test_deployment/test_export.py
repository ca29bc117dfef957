"""Exports through onnxruntime (CPU provider, no custom ops) against PyTorch eager: both backbone
families, both TransNeXt position-bias modes, a segmentor and a detector's tensor forward, fixed
and free input sizes; and what must be refused.

Models are 1-block-per-stage variants with random weights; sizes are odd so that pooling bins
and position tables are uneven.
"""
import importlib.util
import os.path as osp
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper
import torch
import torch.nn.functional as F

from mmtransnext import deployment
from mmtransnext.models import TransNeXt, TransXNet
from mmtransnext.models.layers.weight_cache import worth_keeping
from mmtransnext.ops import dispatch
from mmtransnext.ops.pooling import adaptive_avg_pool2d, averaging_matrix

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOLERANCE = 1e-4  # relative, onnxruntime vs PyTorch
SHALLOW = ['model.backbone.depths=[1,1,1,1]']


def small_transnext(is_extrapolation: bool, **kwargs) -> TransNeXt:
    arch = dict(embed_dims=[16, 32, 32, 64], num_heads=[1, 2, 2, 4], depths=[1, 1, 1, 1])
    return TransNeXt(arch=arch, img_size=64, is_extrapolation=is_extrapolation,
                     **kwargs).eval()


def small_transxnet() -> TransXNet:
    arch = dict(depths=[1, 1, 1, 1], embed_dims=[16, 32, 32, 64], num_heads=[1, 2, 2, 4],
                num_groups=[2, 2, 2, 2], mlp_ratios=[2, 2, 2, 2])
    return TransXNet(arch=arch).eval()


def standard_ops_only(path: str) -> None:
    """Every node of the ONNX file is a standard operator (no custom domain, no function
    holding one)."""
    model = onnx.load(path)
    domains = {node.domain for node in model.graph.node}
    for function in model.functions:
        domains |= {node.domain for node in function.node}
    assert domains <= {'', 'ai.onnx'}, domains


def input_dims(path: str) -> list:
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField('dim_value') else d.dim_param for d in dims]


def load_export_tool():
    spec = importlib.util.spec_from_file_location(
        'export_tool', osp.join(ROOT, 'tools', 'deployment', 'export.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shallow_demo_model(config: str):
    """The demo config's model (one block per stage, random weights) as the tool builds it."""
    return load_export_tool().build_model(osp.join(ROOT, 'configs', 'demo', config),
                                          cfg_options={'model.backbone.depths': [1, 1, 1, 1]})


# ------------------------------------------------------------------------------- backbones
@pytest.mark.parametrize('is_extrapolation', [
    False, pytest.param(True, marks=pytest.mark.slow)], ids=['interpolation', 'extrapolation'])
def test_transnext_backbone_onnx_fixed_size(tmp_path, is_extrapolation):
    """Both position-bias modes at an odd size other than img_size (interpolation mode
    resizes its tables to it): tables and CPB grids baked, parity within 1e-4, standard
    operators only.

    The CPB MLP's output is baked from the weights being exported, even when they changed
    (through ``.data``, no version counter) after an eager forward kept a grid at that size;
    the graph holds one Scan per attention block (none runs the MLP), GELU as ONNX ``Gelu``
    and normalisations without ``Expand``."""
    model = small_transnext(is_extrapolation)
    with torch.no_grad():
        model(torch.randn(1, 3, 72, 104))  # keeps every block's grid at the export size
        for attn in (model.block1[0].attn, model.block4[0].attn):
            attn.cpb_fc2.weight.data.mul_(-50.)  # a bias that moves the outputs
    path = str(tmp_path / 'transnext.onnx')
    result = deployment.export(model, path, (72, 104), part='backbone', optimize=False)
    assert result.output_names == ['stage1', 'stage2', 'stage3', 'stage4']
    assert 'baked' in result.tables
    assert input_dims(path) == [1, 3, 72, 104]
    standard_ops_only(path)
    errors = deployment.check_onnx(path, model, 'backbone', [(72, 104)])
    assert errors[(72, 104)] < TOLERANCE, errors

    graph = onnx.load(path).graph
    nodes = graph_nodes(graph)
    ops = Counter(node.op_type for node in nodes)
    assert ops['Gelu'] > 0 and ops['Erf'] == 0, ops
    bodies = [Counter(n.op_type for n in graph_nodes(helper.get_node_attr_value(node, 'body')))
              for node in graph.node if node.op_type == 'Scan']
    assert sum(body['Softmax'] for body in bodies) == 4  # one attention Scan per block
    assert not [body for body in bodies if body['Relu']]  # no CPB MLP
    expanded = {out for node in nodes if node.op_type == 'Expand' for out in node.output}
    assert not [node.name for node in nodes
                if node.op_type == 'Div' and expanded.intersection(node.input)]


def graph_nodes(graph: onnx.GraphProto) -> list:
    """The nodes of ``graph`` and of the graphs its nodes hold (Scan bodies)."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                nodes += graph_nodes(attribute.g)
    return nodes


def export_dynamic_and_check(model, path: str) -> deployment.ExportResult:
    """Export ``model``'s backbone with free height and width at 64x96 and check the graph:
    symbolic height and width, standard operators, parity at its size and at the three
    others of :data:`deployment.DYNAMIC_CHECK_SIZES` (odd ones included)."""
    result = deployment.export(model, path, (64, 96), part='backbone', dynamic=True,
                               optimize=False)
    dims = input_dims(path)
    assert dims[:2] == [1, 3] and all(isinstance(d, str) for d in dims[2:]), dims
    standard_ops_only(path)
    sizes = [(64, 96), *deployment.DYNAMIC_CHECK_SIZES]
    assert len(sizes) == 4
    errors = deployment.check_onnx(path, model, 'backbone', sizes)
    assert max(errors.values()) < TOLERANCE, errors
    return result


@pytest.mark.slow
def test_transxnet_backbone_onnx_dynamic(tmp_path):
    """Free height and width: one graph checked at three more sizes, odd ones included (the
    adaptive pooling and the resized position tables follow the input)."""
    result = export_dynamic_and_check(small_transxnet(), str(tmp_path / 'transxnet.onnx'))
    assert 'in the graph' in result.tables


def tensor_elements(graph: onnx.GraphProto, dims: dict) -> list:
    """Elements of every tensor of ``graph`` and its subgraphs (a Scan's body) whose shape the
    exporter recorded, the symbolic dims (expressions of the input's, e.g. ``(s0 - 1)//4``)
    evaluated at ``dims``; shapes with other symbols are skipped."""
    sizes = []
    for value in list(graph.value_info) + list(graph.output):
        count = 1
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField('dim_value'):
                count *= dim.dim_value
                continue
            expr = dim.dim_param.replace('Max(', 'max(').replace('Min(', 'min(')
            try:
                count *= int(eval(expr, {'__builtins__': {}, 'max': max, 'min': min}, dims))
            except (NameError, SyntaxError, TypeError):
                count = None
                break
        if count is not None:
            sizes.append(count)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                sizes += tensor_elements(attribute.g, dims)
    return sizes


#: Sizes a dynamic TransNeXt graph exported at 64x96 is checked at: other multiples of 32 and
#: sizes that are not (uneven pooling bins, ragged last stage, a last chunk of padding rows).
TRANSNEXT_DYNAMIC_SIZES = ((64, 96), (72, 104), (100, 60), (128, 128))


@pytest.mark.slow
@pytest.mark.parametrize('is_extrapolation', [False, True], ids=['interpolation', 'extrapolation'])
def test_transnext_backbone_onnx_dynamic(tmp_path, is_extrapolation):
    """Free height and width for TransNeXt, both position-bias modes: one graph exported at
    64x96 checked against eager at sizes that are not multiples of 32 (tables or taps computed
    in the graph); no constant of the graph is a size-dependent table (none larger than the
    largest weight); and at 512x768 no tensor of the graph (its Scans' bodies included) holds
    the first stage's whole logits: the attention, and the CPB MLP over an in-graph table, run
    in chunks."""
    model = small_transnext(is_extrapolation)
    path = str(tmp_path / 'transnext.onnx')
    result = deployment.export(model, path, (64, 96), part='backbone', dynamic=True,
                               optimize=False)
    assert 'computed in the graph' in result.tables
    dims = input_dims(path)
    assert dims[:2] == [1, 3] and all(isinstance(d, str) for d in dims[2:]), dims
    standard_ops_only(path)
    errors = deployment.check_onnx(path, model, 'backbone', TRANSNEXT_DYNAMIC_SIZES)
    assert max(errors.values()) < TOLERANCE, errors

    graph = onnx.load(path).graph
    largest_weight = max(p.numel() for p in model.parameters())
    constants = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    assert max(constants.values()) <= largest_weight, constants
    height, width = 512, 768
    queries, pooled = (height // 4) * (width // 4), (height // 32) * (width // 32)
    elements = tensor_elements(graph, {dims[2]: height, dims[3]: width})
    assert len(elements) > 100  # most shapes were evaluated
    assert max(elements) < model.num_heads[0] * queries * pooled / 2


def test_transnext_exported_program_round_trip(tmp_path):
    """The exported-program format: saved, loaded and run, same numbers as eager."""
    model = small_transnext(is_extrapolation=True)
    path = str(tmp_path / 'transnext.pt2')
    deployment.export(model, path, (40, 56), fmt='exported-program', part='backbone')
    errors = deployment.check_program(path, model, 'backbone', [(40, 56)])
    assert errors[(40, 56)] < 1e-5, errors


# ----------------------------------------------------------------------- whole models
def test_segmentor_onnx_through_the_tool(tmp_path, capsys):
    """tools/deployment/export.py on the Semantic FPN demo config: logits of the tensor
    forward, checked by the tool in onnxruntime."""
    tool = load_export_tool()
    path = str(tmp_path / 'fpn.onnx')
    tool.main([osp.join(ROOT, 'configs', 'demo', 'fpn_transxnet-tiny_shapes-128.py'),
               '--shape', '72', '88', '--out', path, '--cfg-options', *SHALLOW])
    printed = capsys.readouterr().out
    line = [l for l in printed.splitlines() if l.startswith('onnxruntime vs PyTorch at 72x88')]
    assert line, printed
    assert float(line[0].rsplit(' ', 1)[1]) < TOLERANCE
    standard_ops_only(path)


@pytest.mark.slow
def test_detector_tensor_forward_onnx(tmp_path):
    """RetinaNet (TransXNet): class scores and box deltas of every level before decoding."""
    model = shallow_demo_model('retinanet_transxnet-tiny_fpn_shapes-128.py')
    path = str(tmp_path / 'retinanet.onnx')
    result = deployment.export(model, path, (72, 104), part='model', optimize=False)
    assert len(result.output_names) == 10  # 5 levels x (scores, deltas)
    errors = deployment.check_onnx(path, model, 'model', [(72, 104)])
    assert errors[(72, 104)] < TOLERANCE, errors


@pytest.mark.slow
def test_two_stage_detector_features_onnx(tmp_path):
    """Mask R-CNN (TransNeXt, interpolation mode), whose tensor forward cannot export: its
    backbone and FPN outputs (part='features'), checked in onnxruntime."""
    model = shallow_demo_model('mask-rcnn_transnext-micro_fpn_shapes-128.py')
    path = str(tmp_path / 'mask_rcnn_features.onnx')
    result = deployment.export(model, path, (72, 104), part='features', optimize=False)
    with torch.no_grad():
        levels = model.extract_feat(torch.zeros(1, 3, 72, 104))
    assert result.output_names == [f'features{i}' for i in range(len(levels))]
    assert len(onnx.load(path).graph.output) == len(levels) == 5  # the FPN's levels
    errors = deployment.check_onnx(path, model, 'features', [(72, 104)])
    assert errors[(72, 104)] < TOLERANCE, errors
    standard_ops_only(path)


# ------------------------------------------------------------------------------ refusals
def test_training_mode_is_refused(tmp_path):
    model = small_transxnet().train()
    with pytest.raises(deployment.ExportError, match=r'training mode.*model\.eval\(\)'):
        deployment.export(model, str(tmp_path / 'x.onnx'), (64, 64))


@pytest.mark.parametrize('impl', ['triton', 'ext'])
def test_kernel_backends_are_refused(tmp_path, impl):
    model = small_transnext(False, attn_impl=impl)
    with pytest.raises(deployment.ExportError, match=f"attn_impl='{impl}'.*attn_impl=torch"):
        deployment.export(model, str(tmp_path / 'x.onnx'), (64, 64))


def test_dynamic_reference_mode_is_refused(tmp_path):
    with pytest.raises(deployment.ExportError, match="attention_mode='reference'.*torch.unique"
                       ".*without --dynamic"):
        deployment.export(small_transnext(True, attention_mode='reference'),
                          str(tmp_path / 'x.onnx'), dynamic=True)


@pytest.mark.parametrize('config, why', [
    ('mask-rcnn_transnext-micro_fpn_shapes-128.py', "RPN's post-processing"),
    ('dino-4scale_transnext-micro_shapes-128.py', "transformer builds the level shapes"),
    ('mask2former_transnext-micro_shapes-128.py', "pixel decoder builds the level shapes"),
])
def test_untraceable_tensor_forwards_are_refused_up_front(tmp_path, config, why):
    """Models whose tensor forward torch.export cannot trace get the reason and the parts that
    do export, before any tracing starts."""
    model = shallow_demo_model(config)
    assert deployment.tensor_forward_refusal(model) is not None
    with pytest.raises(deployment.ExportError, match=f"{why}.*part='features'"):
        deployment.export(model, str(tmp_path / 'x.onnx'), (64, 64), part='model')


def test_exportable_tensor_forwards_are_not_refused():
    for config in ('retinanet_transxnet-tiny_fpn_shapes-128.py',
                   'upernet_transnext-micro_shapes-128.py'):
        model = shallow_demo_model(config)
        assert deployment.tensor_forward_refusal(model) is None, config


def test_bad_arguments(tmp_path):
    model = small_transxnet()
    with pytest.raises(ValueError, match='fmt must be one of'):
        deployment.export(model, str(tmp_path / 'x'), fmt='tflite')
    with pytest.raises(ValueError, match='part must be one of'):
        deployment.export(model, str(tmp_path / 'x'), part='neck')
    with pytest.raises(ValueError, match=r'shape must be \(H, W\)'):
        deployment.export(model, str(tmp_path / 'x'), shape=(0, 64))


def test_tool_reports_a_refusal_in_one_line(tmp_path, capsys):
    tool = load_export_tool()
    with pytest.raises(SystemExit) as exit_info:
        from mmtransnext.cli import run_main
        run_main(lambda: tool.main([
            osp.join(ROOT, 'configs', 'demo', 'upernet_transnext-micro_shapes-128.py'),
            '--dynamic', '--out', str(tmp_path / 'x.onnx'), '--cfg-options', *SHALLOW,
            'model.backbone.attention_mode=reference']))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith('error: cannot export') and 'height and width cannot be free' in err


# --------------------------------------------------------------------- dispatch, caches
class _Probe(torch.nn.Module):
    """Records what the package decides while traced by torch.export."""

    def __init__(self, impl: str, seen: dict) -> None:
        super().__init__()
        self.impl = impl
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.seen = [seen]  # in a list: export would copy a dict attribute

    def forward(self, x):
        self.seen[0]['keep'] = worth_keeping([self.weight])
        self.seen[0]['backend'] = dispatch.backend_for(self.impl, x)
        return x * self.weight


def test_export_takes_the_plain_pytorch_backend():
    """While torch.export traces, 'auto' and 'torch' get the matmul pooled kernel, kernel
    backends raise naming attn_impl, and weight-derived values are not kept; outside an export
    the cached decisions are untouched."""
    x = torch.randn(2, 3)
    for impl in ('auto', 'torch'):
        seen = {}
        torch.export.export(_Probe(impl, seen), (x,), strict=False)
        backend = seen['backend']
        assert (backend.name, backend.window, backend.pooled_kernel, backend.bias) == \
            ('torch', 'torch', 'math', 'torch')
        assert seen['keep'] is False
    assert dispatch.backend_for('torch', x).pooled_kernel == 'flash'  # eager CPU decision
    assert worth_keeping([torch.ones(3)])
    with pytest.raises(RuntimeError, match="attn_impl='ext' cannot be exported"):
        torch.export.export(_Probe('ext', {}), (x,), strict=False)


@pytest.mark.parametrize('size', [(7, 7), (13, 29), (64, 33), (3, 5)])
def test_exportable_adaptive_pooling_equals_pytorch(size):
    """The averaging matrices pool the bins of F.adaptive_avg_pool2d (uneven ones included),
    and a graph exported at one size pools correctly at another."""
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    by_matrices = averaging_matrix(size[0], 7, x.device, x.dtype) @ x @ \
        averaging_matrix(size[1], 7, x.device, x.dtype).t()
    torch.testing.assert_close(by_matrices, F.adaptive_avg_pool2d(x, 7))

    class Pool(torch.nn.Module):
        def forward(self, t):
            return adaptive_avg_pool2d(t, 7)

    from torch.export import Dim
    program = torch.export.export(Pool(), (torch.randn(1, 4, 20, 24),),
                                  dynamic_shapes=({2: Dim.DYNAMIC, 3: Dim.DYNAMIC},))
    x = x[:1].float()  # the example's batch of 1 is part of the graph
    torch.testing.assert_close(program.module()(x), F.adaptive_avg_pool2d(x, 7))
