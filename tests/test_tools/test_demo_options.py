"""tools/demo.py hands its ``--cfg-options`` on: to the config it reads, then to tools/train.py
and tools/test.py, before its own settings (the tools stand in for the real ones here: the
demo's training itself is README's main command, timed in its own runs)."""
from types import SimpleNamespace

import pytest
from tool_helpers import load_tool


class _Recorded:
    """A stand-in for tools/train.py or tools/test.py recording the argv it is given."""

    def __init__(self, result):
        self.argv, self.result = None, result

    def main(self, argv):
        self.argv = argv
        return self.result


def test_demo_hands_cfg_options_to_train_and_test(tmp_path, monkeypatch, capsys):
    demo = load_tool('demo')
    train = _Recorded(SimpleNamespace(iter=3, work_dir=str(tmp_path / 'work')))
    test = _Recorded({'coco/bbox_mAP': 0.9, 'coco/segm_mAP': 0.8})
    monkeypatch.setattr(demo, '_tool', {'train': train, 'test': test}.__getitem__)
    monkeypatch.setattr('mmtransnext.datasets.ensure_shapes_coco', lambda root, **kw: root)
    options = ['model.backbone.attn_impl=torch', 'train_dataloader.batch_size=1']
    demo.main(['--work-dir', str(tmp_path / 'work'), '--data-root', str(tmp_path / 'data'),
               '--iters', '3', '--cfg-options', *options])
    train_options = train.argv[train.argv.index('--cfg-options') + 1:]
    test_options = test.argv[test.argv.index('--cfg-options') + 1:]
    # the user's first, so that the demo's own (--iters, --data-root, no validation) apply after
    assert train_options[:2] == test_options[:2] == options
    assert 'train_cfg.max_iters=3' in train_options and 'val_cfg=None' in train_options
    assert f'test_dataloader.dataset.data_root={tmp_path / "data"}/' in test_options
    assert 'training:   3 iterations x 1 images' in capsys.readouterr().out


def test_demo_refuses_an_option_without_a_value(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('demo').parse_args(['--cfg-options', 'model.backbone.attn_impl'])
    assert exit_info.value.code == 2
    assert "expected KEY=VALUE, got 'model.backbone.attn_impl'" in capsys.readouterr().err


def test_options_parse_as_train_py_parses_them():
    """What the classification demo merges into each config: mmengine's own parsing."""
    from mmtransnext.cli import cfg_options_dict
    assert cfg_options_dict([]) == {}
    assert cfg_options_dict(['model.backbone.depths=[1,1,1,1]', 'a.b=x', 'a.b=2']) == \
        {'model.backbone.depths': [1, 1, 1, 1], 'a.b': 2}
