"""The restricted unpickler behind read_checkpoint: what a runner checkpoint holds loads without
trust; crafted files are refused with nothing executed.

"Nothing executed" is made concrete: each hostile file's payload creates a marker file. The test
asserts that the marker is absent after the refusal, and then loads the same file with trust to
show that the payload is real (the marker appears).
"""
import argparse
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.logging import history_buffer as history_buffer_module
from mmengine.runner.checkpoint import _load_checkpoint

from mmtransnext import safe_pickle
from mmtransnext.checkpoint import (CheckpointError, mmengine_loader, read_checkpoint,
                                    trusted_checkpoints)


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv('MMTRANSNEXT_TRUSTED_CHECKPOINTS', raising=False)


class _Call:
    """Pickles as ``func(*args)`` (then given ``state``): what a hostile file can ask for."""

    def __init__(self, func, *args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)

    def __call__(self, *args):  # lets a _Call stand as the callable of another _Call
        raise AssertionError('only pickled, never called here')


def _getattr(obj, name: str) -> _Call:
    return _Call(getattr, obj, name)


def _write_marker(marker) -> str:
    return f'open({str(marker)!r}, "w").close()'


def _torch_file(path, pickle_bytes: bytes) -> None:
    """Make ``path`` a ``torch.save`` file whose pickle is ``pickle_bytes`` (hand-written
    opcodes); tensor data is kept from the file that is there."""
    if path.exists():
        buffer = io.BytesIO(path.read_bytes())
    else:
        buffer = io.BytesIO()
        torch.save(0, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, 'w') as target:
        for info in source.infolist():
            is_pickle = info.filename.endswith('/data.pkl')
            target.writestr(info.filename, pickle_bytes if is_pickle else source.read(info))


def _pickle_of(path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith('/data.pkl')))


def _runner_like(tmp_path, **save_options):
    """What mmengine's Runner saves: numpy numbers in meta, HistoryBuffers, optimizer state;
    returns the file and its content as the plain pickle module reads it."""
    model = torch.nn.Linear(3, 2)
    optim = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optim.step()
    buffer = HistoryBuffer()
    for value in (0.5, 0.25, 0.125):
        buffer.update(np.float64(value))
    content = {
        'meta': {'iter': 10, 'seed': np.int64(3), 'lr': np.float32(0.5), 'flag': np.bool_(True),
                 'dataset_meta': {'classes': ('square', 'circle'), 'palette': [(1, 2, 3)]},
                 'names': np.array(['ab', 'c']), 'counts': np.arange(6, dtype='>i2')[::2]},
        'state_dict': model.state_dict(), 'optimizer': optim.state_dict(),
        'message_hub': {'log_scalars': {'train/loss': buffer}, 'runtime_info': {'iter': 10}},
    }
    path = tmp_path / 'iter_10.pth'
    torch.save(content, path, **save_options)
    # the oracle: Python's own unpickler, unrestricted (numpy loads '>i2' data as native int16)
    return path, pickle.loads(pickle.dumps(content))


def _assert_same(a, b) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, HistoryBuffer):
        _assert_same(vars(a), vars(b))
    else:
        assert a == b


@pytest.mark.parametrize('save_options', [{}, {'pickle_protocol': 4},
                                          {'_use_new_zipfile_serialization': False}],
                         ids=['default', 'protocol 4', 'legacy format'])
def test_runner_checkpoint_loads_untrusted_and_equal(tmp_path, save_options):
    path, content = _runner_like(tmp_path, **save_options)
    with pytest.raises(pickle.UnpicklingError):  # what the plain weights-only reader says
        torch.load(path, weights_only=True)
    _assert_same(read_checkpoint(str(path)), content)
    with mmengine_loader():  # mmengine's loader, as the apis call it, with the package's installed
        _assert_same(_load_checkpoint(str(path)), content)


def test_other_numpy_major_spelling_loads(tmp_path):
    """numpy 1 writes numpy.core.multiarray, numpy 2 numpy._core.multiarray; a DType class can
    come as getattr(numpy.dtypes, ...)."""
    path, content = _runner_like(tmp_path)
    data = _pickle_of(path)
    written, other = b'numpy.core.multiarray', b'numpy._core.multiarray'
    if written not in data:
        written, other = other, written
    assert written in data and other not in data
    _torch_file(path, data.replace(written, other))
    _assert_same(read_checkpoint(str(path)), content)

    # {'kind': getattr(numpy.dtypes, 'Float64DType')}, by hand: the form pickle gives a nested
    # name at protocol 2
    dtype_class = (pickle.PROTO + b'\x02' + pickle.EMPTY_DICT + pickle.BINUNICODE + b'\x04\0\0\0'
                   b'kind' + pickle.GLOBAL + b'__builtin__\ngetattr\n' + pickle.GLOBAL
                   + b'numpy\ndtypes\n' + pickle.BINUNICODE + b'\x0c\0\0\0Float64DType'
                   + pickle.TUPLE2 + pickle.REDUCE + pickle.SETITEM + pickle.STOP)
    assert pickle.loads(dtype_class) == {'kind': type(np.dtype('f8'))}
    _torch_file(path, dtype_class)
    assert read_checkpoint(str(path)) == {'kind': type(np.dtype('f8'))}


def test_official_weights_stay_on_the_weights_only_reader(tmp_path, monkeypatch):
    path = tmp_path / 'transnext_micro_224_1k.pth'
    torch.save({'model': {'w': torch.ones(2)}}, path)

    def fail(*args, **kwargs):
        raise AssertionError('a tensor-only file reached the restricted unpickler')

    monkeypatch.setattr(safe_pickle.Unpickler, 'load', fail)
    assert torch.equal(read_checkpoint(str(path))['model']['w'], torch.ones(2))


SYSTEM = f'{os.system.__module__}.system'  # posix.system


def _hostile(marker):
    """name -> (object to save, text the refusal must name)."""
    touch = _Call(os.system, f'touch {marker}')
    exec_ = _write_marker(marker)
    # getattr(<allowed function>, '__globals__') leads to the module's builtins and so to eval
    module_globals = _getattr(torch._utils._rebuild_tensor_v2, '__globals__')
    builtins = _Call(_getattr(module_globals, 'get'), '__builtins__')
    eval_ = _Call(_getattr(builtins, 'get'), 'eval')
    return {
        'os.system': (touch, SYSTEM),
        'eval': (_Call(eval, exec_), 'builtins.eval'),
        'object array': (np.array([touch, 1], dtype=object), "numpy.dtype('O"),
        'structured object array': (np.array([(1, touch)], dtype=[('a', 'i4'), ('b', 'O')]),
                                    "numpy.dtype('V"),
        'getattr chain': (_Call(eval_, exec_), "getattr(<function _rebuild_tensor_v2"),
    }


@pytest.mark.parametrize('case', sorted(_hostile('m')))
def test_hostile_file_is_refused_and_nothing_runs(case, tmp_path):
    marker = tmp_path / 'marker'
    payload, named = _hostile(marker)[case]
    path = tmp_path / 'hostile.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': {'x': payload}}, path)
    with pytest.raises(CheckpointError, match='was not loaded') as refusal:
        read_checkpoint(str(path))
    assert named in str(refusal.value)
    assert 'MMTRANSNEXT_TRUSTED_CHECKPOINTS' in str(refusal.value)
    assert not marker.exists()
    if 'array' in case:
        # refused at the dtype, before any element (the os.system payload) was read; full
        # unpickling would not call the payload either, it would only rebuild it
        assert SYSTEM not in str(refusal.value)
        return
    with trusted_checkpoints():  # the payload is real: full unpickling runs it
        read_checkpoint(str(path))
    assert marker.exists()


def test_history_buffer_state_cannot_rebind_statistics():
    """HistoryBuffer.__setstate__ registers the file's statistics methods on the class."""
    rebind = _Call(HistoryBuffer, state={'statistics_methods': {'mean': HistoryBuffer.max},
                                         'max_length': 3})
    assert 'statistics_methods' in _refused(pickle.dumps(rebind, protocol=2))
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean


def test_trusted_load_says_which_global_needed_it(tmp_path, monkeypatch):
    path = tmp_path / 'odd.pth'
    torch.save({'error': pickle.PicklingError('x')}, path)
    logged = []
    monkeypatch.setattr('mmtransnext.checkpoint.print_log', lambda msg, **kw: logged.append(msg))
    monkeypatch.setenv('MMTRANSNEXT_TRUSTED_CHECKPOINTS', '1')
    assert isinstance(read_checkpoint(str(path))['error'], pickle.PicklingError)
    assert logged and 'needs pickle.PicklingError' in logged[0]


def test_unknown_class_from_a_newer_mmengine_is_named(tmp_path, monkeypatch):
    class FancyBuffer:
        pass

    FancyBuffer.__module__ = history_buffer_module.__name__
    FancyBuffer.__qualname__ = 'FancyBuffer'
    monkeypatch.setattr(history_buffer_module, 'FancyBuffer', FancyBuffer, raising=False)
    path = tmp_path / 'newer.pth'
    torch.save({'message_hub': {'log_scalars': {'loss': FancyBuffer()}}}, path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError,
                       match=r'mmengine\.logging\.history_buffer\.FancyBuffer \(not on the list'):
        read_checkpoint(str(path))


def test_truncated_file(tmp_path):
    path, _ = _runner_like(tmp_path)
    data = path.read_bytes()
    for size in (len(data) // 2, 40):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint'):
            read_checkpoint(str(path))


def test_truncated_pickle_inside_a_valid_archive(tmp_path):
    path, _ = _runner_like(tmp_path)
    data = _pickle_of(path)
    _torch_file(path, data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint'):
        read_checkpoint(str(path))


def _refused(pickle_bytes: bytes) -> str:
    with pytest.raises(safe_pickle.RefusedGlobal) as refusal:
        safe_pickle.load(io.BytesIO(pickle_bytes))
    return str(refusal.value)


def test_numpy_objects_are_checked_where_they_are_made():
    f8 = pickle.dumps(np.dtype('f8'), protocol=2)
    assert safe_pickle.load(io.BytesIO(f8)) == np.dtype('f8')
    assert "numpy.dtype('O" in _refused(pickle.dumps(np.dtype('O'), protocol=2))
    # a float64 dtype whose pickled state sets numpy's object flags: plain pickle obliges (an
    # array of it would read its raw bytes as object pointers); refused after __setstate__
    flagged = f8.replace(b'J\xff\xff\xff\xffK\x00t', b'J\xff\xff\xff\xffK?t')
    assert flagged != f8 and pickle.loads(flagged).hasobject
    assert 'numpy.dtype.__setstate__ -> float64' in _refused(flagged)
    # numpy's dtype singletons are never given state: every dtype is made as a copy
    assert safe_pickle.load(io.BytesIO(f8)) is not np.dtype('f8')
    # numpy.ndarray itself is not a callable: np.ndarray((1,), 'O') would make an object array
    assert 'REDUCE of' in _refused(pickle.dumps(_Call(np.ndarray, (1, ), 'O'), protocol=2))
    # a numpy scalar needs a finished dtype of this file and exactly its bytes
    scalar = pickle.dumps(np.float64(1.5), protocol=2)
    assert safe_pickle.load(io.BytesIO(scalar)) == 1.5
    short = _Call(np.core.multiarray.scalar, np.dtype('f8'), b'\0' * 3)
    assert 'needs 8 bytes' in _refused(pickle.dumps(short, protocol=2))


def test_torchscript_archive_is_not_handed_to_jit(tmp_path, monkeypatch):
    """torch.load(weights_only=False) would pass a TorchScript archive to torch.jit.load."""
    path = tmp_path / 'scripted.pt'
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))

    def fail(*args, **kwargs):
        raise AssertionError('torch.jit.load was called')

    monkeypatch.setattr(torch.jit, 'load', fail)
    with pytest.raises(CheckpointError, match='TorchScript'):
        read_checkpoint(str(path))


def test_dtype_state_cannot_change_under_an_array():
    """Plain pickle lets a file re-apply a 'U1' dtype's state after an array uses it, growing
    its item size past the array's buffer; a dtype gets its state once, before any use."""
    def text(value: str) -> bytes:
        return pickle.BINUNICODE + len(value).to_bytes(4, 'little') + value.encode()

    def u1_state(itemsize: int) -> bytes:  # (3, '<', None, None, None, itemsize, 4, 8)
        return (pickle.MARK + pickle.BININT1 + b'\x03' + text('<') + pickle.NONE * 3
                + pickle.BININT + itemsize.to_bytes(4, 'little') + pickle.BININT1 + b'\x04'
                + pickle.BININT1 + b'\x08' + pickle.TUPLE)

    dtype = (pickle.GLOBAL + b'numpy\ndtype\n' + text('U1') + pickle.NEWFALSE + pickle.NEWTRUE
             + pickle.TUPLE3 + pickle.REDUCE + pickle.BINPUT + b'\x00' + u1_state(4)
             + pickle.BUILD)
    array = (pickle.GLOBAL + b'numpy.core.multiarray\n_reconstruct\n' + pickle.GLOBAL
             + b'numpy\nndarray\n' + pickle.BININT1 + b'\x00' + pickle.TUPLE1
             + pickle.SHORT_BINBYTES + b'\x01b' + pickle.TUPLE3 + pickle.REDUCE + pickle.MARK
             + pickle.BININT1 + b'\x01' + pickle.BININT1 + b'\x01' + pickle.TUPLE1
             + pickle.BINGET + b'\x00' + pickle.NEWFALSE + pickle.SHORT_BINBYTES + b'\x04a\0\0\0'
             + pickle.TUPLE + pickle.BUILD)
    honest = pickle.PROTO + b'\x02' + dtype + array + pickle.STOP
    assert safe_pickle.load(io.BytesIO(honest)).tolist() == ['a']
    regrow = pickle.BINGET + b'\x00' + u1_state(4000) + pickle.BUILD + pickle.POP
    hostile = pickle.PROTO + b'\x02' + dtype + array + regrow + pickle.STOP
    assert pickle.loads(hostile).dtype.itemsize == 4000  # plain pickle: 4000-byte items, 4 bytes
    assert 'applied twice' in _refused(hostile)


def test_timm_saver_file_with_its_arguments_loads_untrusted(tmp_path):
    """Official ImageNet files come from timm's CheckpointSaver, which stores the training
    command line as an ``argparse.Namespace`` next to the weights."""
    args = argparse.Namespace(model='transxnet_t', lr=1e-3, drop_path=0.1,
                              input_size=[3, 224, 224])
    weights = {'stem.weight': torch.randn(4, 3)}
    path = tmp_path / 'transx-t.pth.tar'
    torch.save({'epoch': 299, 'arch': 'transxnet_t', 'state_dict': weights, 'args': args,
                'metric': np.float64(81.6), 'version': 2}, path)
    loaded = read_checkpoint(str(path))
    assert vars(loaded['args']) == vars(args)
    torch.testing.assert_close(loaded['state_dict']['stem.weight'], weights['stem.weight'])
