"""tools/analysis/visualize_attention.py and effective_receptive_field.py on the demo config (no
checkpoint), a non-TransNeXt backbone config and an mmdet:: config; fast in-process runs with a
shallow backbone, the full demo config as subprocesses in the slow tier."""
import os.path as osp
import sys

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'test_tools'))
from tool_helpers import MASK_RCNN_DEMO, ROOT, SHALLOW, load_tool, run_tool  # noqa: E402

from mmtransnext.cli import (ToolError, build_backbone, demo_image, load_config,  # noqa: E402
                             resolve_config_path)

RESNET_CONFIG = """
default_scope = 'mmdet'
model = dict(type='ResNet', depth=18, base_channels=8, norm_eval=True,
             init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet18'))
"""


def _png(path: str) -> np.ndarray:
    assert osp.getsize(path) > 1000
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 10  # not a blank canvas
    return image


@pytest.fixture(scope='module')
def resnet_config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp('configs') / 'resnet18_tiny.py'
    path.write_text(RESNET_CONFIG)
    return str(path)


def test_attention_tool_on_the_demo_config(tmp_path):
    tool = load_tool('visualize_attention')
    written = tool.main([MASK_RCNN_DEMO, '--point', 'center', '--point', '0', '127',
                         '--stage', '1', '--out', str(tmp_path), '--cfg-options',
                         'model.backbone.depths=[1,2,1,1]'])
    names = sorted(osp.basename(p) for p in written)
    assert names == sorted(f'attention_s1{kind}_y{y}x{x}.png'
                           for kind in ('b1', '_blocks') for y, x in ((64, 64), (0, 127)))
    for path in written:
        _png(path)
    # full attention (stage 3), one head, a given block
    written = tool.main([MASK_RCNN_DEMO, '--stage', '3', '--block', '0', '--head', '5',
                         '--out', str(tmp_path), '--cfg-options', *SHALLOW])
    assert [osp.basename(p) for p in written] == ['attention_s3b0_y64x64.png',
                                                  'attention_s3_blocks_y64x64.png']
    _png(written[0])


def test_attention_tool_on_a_transxnet_config(tmp_path):
    tool = load_tool('visualize_attention')
    config = osp.join(ROOT, 'configs', 'demo', 'retinanet_transxnet-tiny_fpn_shapes-128.py')
    image = tmp_path / 'input.jpg'
    cv2.imwrite(str(image), demo_image(3)[..., ::-1])
    written = tool.main([config, '--image', str(image), '--size', '96', '112', '--point', '10',
                         '100', '--stage', '1', '--out', str(tmp_path), '--cfg-options',
                         *SHALLOW])
    assert [osp.basename(p) for p in written] == ['attention_s1b0_y10x100.png',
                                                  'attention_s1_blocks_y10x100.png']
    for path in written:
        _png(path)


def test_attention_tool_errors(tmp_path, resnet_config):
    tool = load_tool('visualize_attention')
    options = ['--out', str(tmp_path), '--cfg-options', *SHALLOW]
    with pytest.raises(ToolError, match='outside the 128x128 image'):
        tool.main([MASK_RCNN_DEMO, '--point', '128', '0', *options])
    with pytest.raises(ToolError, match="'center' or Y X"):
        tool.main([MASK_RCNN_DEMO, '--point', '3', *options])
    with pytest.raises(ToolError, match='--stage 4'):
        tool.main([MASK_RCNN_DEMO, '--stage', '4', *options])
    with pytest.raises(ToolError, match='--head 2: stage 0 has 2 heads'):
        tool.main([MASK_RCNN_DEMO, '--stage', '0', '--head', '2', *options])
    with pytest.raises(ToolError, match='TransNeXt, TransXNet backbones, got ResNet'):
        tool.main([resnet_config, '--out', str(tmp_path)])


def test_erf_tool_on_a_resnet_config(tmp_path, resnet_config):
    """Any backbone config: a small ResNet built from a dict; its checkpoint (a runner file with
    a ``backbone.`` prefix and pickled extras) is loaded."""
    tool = load_tool('effective_receptive_field')
    backbone, _ = build_backbone(load_config(resnet_config), resnet_config)
    torch.manual_seed(0)
    state = {f'backbone.{k}': v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in backbone.state_dict().items()}
    checkpoint = tmp_path / 'iter_1.pth'
    torch.save(dict(state_dict=state, meta=dict(seed=np.int64(0))), checkpoint)
    out = tmp_path / 'erf.png'
    results = tool.main([resnet_config, str(checkpoint), '--demo', '--num', '2', '--size', '64',
                         '48', '--stage', '1', '--out', str(out), '--save-npy'])
    (result, ) = results
    assert result['backbone'] == 'ResNet' and result['erf'].shape == (64, 48)
    assert [r.threshold for r in result['ratios'].values()] == [0.2, 0.3, 0.5, 0.99]
    assert 0 < result['ratios'][0.2].ratio <= result['ratios'][0.99].ratio <= 1
    np.testing.assert_allclose(np.load(tmp_path / 'erf_0.npy'), result['erf'].numpy())
    _png(str(out))
    loaded, output = build_backbone(load_config(resnet_config), resnet_config,
                                           str(checkpoint), stage=1)
    assert output == 0 and loaded.out_indices == (1, )
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[f'backbone.{key}']), key


def test_erf_tool_side_by_side(tmp_path, resnet_config):
    tool = load_tool('effective_receptive_field')
    out = tmp_path / 'pair.png'
    results = tool.main([MASK_RCNN_DEMO, resnet_config, '--demo', '--num', '1', '--size', '64',
                         '64', '--stage', '3', '1', '--out', str(out), '--labels', 'TransNeXt',
                         'ResNet'])
    assert [(r['backbone'], r['stage']) for r in results] == [('TransNeXt', 3), ('ResNet', 1)]
    # global attention in the last stage: every input pixel reaches the central output
    assert bool((results[0]['erf'] > 0).all())
    image = _png(str(out))
    assert image.shape[1] > image.shape[0]


def test_erf_tool_errors(tmp_path, resnet_config):
    tool = load_tool('effective_receptive_field')
    with pytest.raises(ToolError, match='holds 0 images'):
        tool.main([resnet_config, '--images', str(tmp_path), '--num', '1', '--out',
                   str(tmp_path / 'x.png')])
    with pytest.raises(ToolError, match='2 titles for 1 models'):
        tool.main([resnet_config, '--demo', '--labels', 'a', 'b'])
    with pytest.raises(ToolError, match='3 stages for 1 models'):
        tool.main([resnet_config, '--demo', '--stage', '0', '1', '2'])
    with pytest.raises(ToolError, match='is not a config'):
        tool.main(['weights.pth', '--demo'])
    with pytest.raises(ToolError, match='config file not found: mmdet::nothing/here.py'):
        tool.main(['mmdet::nothing/here.py', '--demo'])


def test_erf_tool_mmdet_config(tmp_path):
    """A config of mmdet itself, named with mmdet::, builds its backbone (PVTv2-b0)."""
    config = 'mmdet::pvt/retinanet_pvtv2-b0_fpn_1x_coco.py'
    if not osp.isfile(resolve_config_path(config)):
        pytest.skip('mmdet ships no configs here')
    tool = load_tool('effective_receptive_field')
    results = tool.main([config, '--demo', '--num', '1', '--size', '64', '64', '--stage', '2',
                         '--out', str(tmp_path / 'pvt.png')])
    assert results[0]['backbone'] == 'PyramidVisionTransformerV2'
    _png(str(tmp_path / 'pvt.png'))


@pytest.mark.slow
def test_tools_as_scripts_on_the_demo_config(tmp_path):
    """Both tools as a user runs them: full demo config, no checkpoint."""
    result = run_tool([osp.join(ROOT, 'tools', 'analysis', 'visualize_attention.py'),
                       MASK_RCNN_DEMO, '--point', 'center', '--stage', '2', '--out',
                       str(tmp_path)], cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr
    assert 'wrote' in result.stdout
    for name in ('attention_s2b14_y64x64.png', 'attention_s2_blocks_y64x64.png'):
        _png(str(tmp_path / name))
    result = run_tool([osp.join(ROOT, 'tools', 'analysis', 'effective_receptive_field.py'),
                       MASK_RCNN_DEMO, '--demo', '--num', '2', '--size', '128', '128',
                       '--out', str(tmp_path / 'erf.png')], cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr
    assert 'high-contribution area ratio' in result.stdout
    _png(str(tmp_path / 'erf.png'))
    result = run_tool([osp.join(ROOT, 'tools', 'analysis', 'effective_receptive_field.py'),
                       MASK_RCNN_DEMO, 'missing.pth', '--demo'], cwd=str(tmp_path))
    assert result.returncode == 1
    assert 'error: checkpoint file not found: missing.pth' in result.stderr


def test_weight_image_places_window_and_pooled_cells():
    """4x4 tokens on an 8x8 image (2 px per token), 2x2 pooled keys, query at token (0, 1)."""
    tool = load_tool('visualize_attention')
    window = torch.arange(1., 10.).view(1, 3, 3) / 100
    pooled = torch.tensor([[[0.5, 0.6], [0.7, 0.8]]])
    maps = dict(window=window, pooled=pooled, query=torch.tensor([0, 1]),
                feature_size=torch.tensor([4, 4]))
    canvas, box = tool.weight_image(maps, (8, 8), head=0)
    assert box == (0, 4, 0, 6)  # tokens 0..1 x 0..2, clipped at the top border
    expected = np.kron(np.array([[0.5, 0.6], [0.7, 0.8]]), np.ones((4, 4)))
    expected[0:2, 0:6] = np.kron(window[0, 1].numpy()[None], np.ones((2, 2)))
    expected[2:4, 0:6] = np.kron(window[0, 2].numpy()[None], np.ones((2, 2)))
    np.testing.assert_allclose(canvas, expected, rtol=1e-6)
    # full attention: every key on its token; no window box
    canvas, box = tool.weight_image(dict(pooled=pooled, query=torch.tensor([1, 1]),
                                         feature_size=torch.tensor([2, 2])), (4, 6), head=None)
    assert box is None
    np.testing.assert_allclose(canvas, np.kron(pooled[0].numpy(), np.ones((2, 3))), rtol=1e-6)


def test_parse_points():
    tool = load_tool('visualize_attention')
    assert tool.parse_points(None, (10, 20)) == [(5, 10)]
    assert tool.parse_points([['centre', '1', '2'], ['3', '4', '5', '6']], (10, 20)) == [
        (5, 10), (1, 2), (3, 4), (5, 6)]


def test_erf_tool_reads_an_image_folder(tmp_path, resnet_config):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f'{i}.png'), (np.random.rand(40, 50, 3) * 255).astype(np.uint8))
    (tmp_path / 'notes.txt').write_text('not an image')
    tool = load_tool('effective_receptive_field')
    results = tool.main([resnet_config, '--images', str(tmp_path), '--num', '3', '--size', '32',
                         '48', '--stage', '0', '--out', str(tmp_path / 'erf.png')])
    assert results[0]['erf'].shape == (32, 48)
    _png(str(tmp_path / 'erf.png'))
