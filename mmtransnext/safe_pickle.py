"""A restricted unpickler for the checkpoints mmengine, mmdet and mmseg write.

``torch.load(weights_only=True)`` admits tensors only, but a runner checkpoint also holds numpy
arrays, scalars and dtypes (meta, message hub) and mmengine's ``HistoryBuffer``. Unpickling it in
full would call whatever the file names. This module is a ``pickle_module`` for
:func:`torch.load` (it has ``Unpickler`` and ``load``) that resolves a global only when its exact
``module.name`` is listed below, and then often to a checking stand-in rather than the real
callable:

- a numpy dtype is made only from the string code of a numeric, ``U`` or ``S`` type (never
  ``object``, structured or datetime), always as a fresh copy; its pickled state may be applied
  once and is checked again afterwards; arrays and scalars take only such finished dtypes;
- an array is made only as an empty plain ``ndarray`` and gets its data as raw bytes, so an
  ``object`` array is refused at its dtype, before any element is read;
- ``builtins.getattr`` (what pickle writes for a nested name, e.g. ``getattr(numpy.dtypes,
  'Float64DType')``) only looks up names that are listed themselves:
  ``getattr(<allowed function>, '__globals__')`` is refused like any unlisted global;
- objects are created (REDUCE, NEWOBJ) only by listed callables and given state (BUILD) only when
  they are arrays, dtypes or listed plain-data classes; the extension registry (EXT) is refused.

Anything else raises :class:`RefusedGlobal` naming what was asked for, before it is called.
"""
import _compat_pickle
import functools
import importlib
import pickle
from collections import OrderedDict
from typing import Any, Callable, Dict, Tuple

import numpy as np
import torch

#: numpy dtype kinds a checkpoint may hold: bool, signed/unsigned int, float, complex, str, bytes.
PLAIN_DTYPE_KINDS = 'biufcUS'
#: numpy dtype character codes whose scalar types and DType classes may appear as values.
_NUMERIC_CODES = '?bhilqpBHILQPefdgFDG'

#: Classes of plain data that trainers pickle into checkpoints (mmengine's message hub, timm's
#: saved arguments): they may be created empty and given their pickled ``__dict__``. A
#: ``HistoryBuffer`` also pickles its statistics methods (``getattr(HistoryBuffer, 'mean')``,
#: ...), listed here with it.
PLAIN_DATA_CLASSES = {
    'mmengine.logging.history_buffer.HistoryBuffer': ('min', 'max', 'current', 'mean'),
    # timm's CheckpointSaver (the official ImageNet releases' trainer) stores its command line.
    'argparse.Namespace': (),
}

_CALL, _VALUE, _METHOD = 'call', 'value', 'method'


class RefusedGlobal(pickle.UnpicklingError):
    """The file names a global, or asks for an operation, that the restricted unpickler refuses.

    Attributes:
        name: what was refused, e.g. ``'posix.system'`` or ``"builtins.getattr(<function f>,
            '__globals__')"``.
    """

    def __init__(self, name: str, why: str = '') -> None:
        super().__init__(f'{name}{f" ({why})" if why else ""}')
        self.name = name


class _Namespace:
    """A module or class path leading to listed names (what ``getattr`` may start from)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return self.path


def _no_hooks(rebuild: Callable, storage_type: type, hooks_index: int) -> Callable:
    """``rebuild`` refusing anything but a ``storage_type`` first argument and empty hooks."""

    @functools.wraps(rebuild)
    def checked(*args):
        if not isinstance(args[0], storage_type):
            raise RefusedGlobal(f'torch._utils.{rebuild.__name__}',
                                f'called on a {type(args[0]).__name__}')
        if len(args) > hooks_index and args[hooks_index]:
            raise RefusedGlobal(f'torch._utils.{rebuild.__name__}', 'with backward hooks')
        return rebuild(*args)

    return checked


def _latin1(text: str, encoding: str = 'utf-8') -> bytes:
    """``_codecs.encode`` as pickle protocol 2 writes ``bytes``: ``encode(str, 'latin1')``."""
    if type(text) is not str or encoding not in ('latin1', 'latin-1'):
        raise RefusedGlobal('_codecs.encode', f'with a {type(text).__name__} and {encoding!r}')
    return text.encode('latin1')


def _empty_bytes() -> bytes:
    """``builtins.bytes`` as pickle writes ``b''``: called without arguments."""
    return b''


@functools.lru_cache(maxsize=1)
def _listed() -> Dict[str, Tuple[str, Any]]:
    """``module.name`` -> (role, object) of every global a checkpoint may name.

    Roles: ``call`` (may be called to build an object), ``value`` (only used as data), ``method``
    (an :class:`Unpickler` method that checks its arguments and tracks numpy objects).
    """
    from torch import _utils
    storage = torch.storage.TypedStorage
    listed: Dict[str, Tuple[str, Any]] = {
        'collections.OrderedDict': (_CALL, OrderedDict),
        'builtins.set': (_CALL, set),
        'builtins.frozenset': (_CALL, frozenset),
        'builtins.complex': (_CALL, complex),
        'builtins.slice': (_CALL, slice),
        'builtins.bytes': (_CALL, _empty_bytes),
        '_codecs.encode': (_CALL, _latin1),
        'builtins.getattr': (_METHOD, '_getattr'),
        'torch.Size': (_CALL, torch.Size),
        'torch.device': (_CALL, torch.device),
        'torch._utils._rebuild_tensor': (_CALL, _no_hooks(_utils._rebuild_tensor, storage, 9)),
        'torch._utils._rebuild_tensor_v2': (_CALL, _no_hooks(_utils._rebuild_tensor_v2,
                                                             storage, 5)),
        'torch._utils._rebuild_parameter': (_CALL, _no_hooks(_utils._rebuild_parameter,
                                                             torch.Tensor, 2)),
        'numpy.dtype': (_METHOD, '_dtype'),
        'numpy.ndarray': (_VALUE, np.ndarray),  # only as the class argument of _reconstruct
        'numpy.bool': (_VALUE, np.bool_),  # numpy 2 spelling
    }
    # Newer torch writes _rebuild_tensor_v3 for some tensors; torch 2.1 has none.
    if hasattr(_utils, '_rebuild_tensor_v3'):
        listed['torch._utils._rebuild_tensor_v3'] = (
            _CALL, _no_hooks(_utils._rebuild_tensor_v3, storage, 5))
    for path, methods in PLAIN_DATA_CLASSES.items():
        module, name = path.rsplit('.', 1)
        cls = getattr(importlib.import_module(module), name)
        listed[path] = (_CALL, cls)
        listed.update({f'{path}.{method}': (_VALUE, getattr(cls, method)) for method in methods})
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            listed[f'torch.{name}'] = (_VALUE, value)
    for core in ('numpy.core', 'numpy._core'):  # numpy 1 and numpy 2 spellings
        listed[f'{core}.multiarray._reconstruct'] = (_METHOD, '_array')
        listed[f'{core}.multiarray.scalar'] = (_METHOD, '_scalar')
        listed[f'{core}._DType_reconstruct'] = (_METHOD, '_dtype_class')
    for code in _NUMERIC_CODES:
        dtype = np.dtype(code)
        listed[f'numpy.{dtype.type.__name__}'] = (_VALUE, dtype.type)
        listed[f'numpy.dtypes.{type(dtype).__name__}'] = (_VALUE, type(dtype))
    return listed


@functools.lru_cache(maxsize=1)
def _namespaces() -> frozenset:
    """Every proper prefix of a listed name (``numpy``, ``numpy.dtypes``, ...)."""
    return frozenset(key[:i] for key in _listed() for i, c in enumerate(key) if c == '.')


def _is_plain(dtype: np.dtype) -> bool:
    return (dtype.kind in PLAIN_DTYPE_KINDS and not dtype.hasobject and dtype.fields is None
            and dtype.subdtype is None)


class Unpickler(pickle._Unpickler):
    """``pickle``'s Python unpickler, restricted as the module docstring says.

    The Python implementation is used (not the C one) because only it lets BUILD be checked.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resolved: Dict[str, Any] = {}
        self._key_of: Dict[int, str] = {}
        self._callable_ids = set()
        for key, (role, obj) in _listed().items():
            if role == _METHOD:
                obj = getattr(self, obj)  # bound once, so that its id stays the same
            self._resolved[key] = obj
            self._key_of.setdefault(id(obj), key)
            if role != _VALUE:
                self._callable_ids.add(id(obj))
        # state_dict() OrderedDicts carry a _metadata attribute
        self._buildable = (OrderedDict, *(self._resolved[path] for path in PLAIN_DATA_CLASSES))
        # numpy objects made here, by id (holding them keeps the ids unique): whether their
        # pickled state has been applied yet
        self._dtypes: Dict[int, Tuple[np.dtype, bool]] = {}
        self._arrays: Dict[int, Tuple[np.ndarray, bool]] = {}

    # ---------------------------------------------------------------------------- globals
    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # protocol 2 files name Python 2 modules
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return self._resolve(f'{module}.{name}')

    def _resolve(self, key: str) -> Any:
        if key in self._resolved:
            return self._resolved[key]
        if key in _namespaces():
            return _Namespace(key)
        raise RefusedGlobal(key, 'not on the list of plain-data globals')

    def _getattr(self, obj: Any, name: str) -> Any:
        path = obj.path if isinstance(obj, _Namespace) else self._key_of.get(id(obj))
        key = f'{path}.{name}'
        if path is None or type(name) is not str or (key not in self._resolved
                                                     and key not in _namespaces()):
            raise RefusedGlobal(f'builtins.getattr({obj!r}, {name!r})',
                                'getattr is resolved only for listed names')
        return self._resolve(key)

    def _check_callable(self, func: Any, opcode: str) -> None:
        if id(func) not in self._callable_ids:
            raise RefusedGlobal(f'{opcode} of {func!r}', 'only listed callables may be called')

    # ---------------------------------------------------------------------------- numpy
    def _dtype(self, code: Any, align: bool = False, copy: bool = True) -> np.dtype:
        if type(code) is not str or type(align) is not bool:
            raise RefusedGlobal(f'numpy.dtype({code!r})', 'dtypes are made from type codes')
        dtype = np.dtype(code, bool(align), True)  # always a copy: BUILD must not touch numpy's
        if not _is_plain(dtype):
            raise RefusedGlobal(f'numpy.dtype({code!r})',
                                f'{dtype} arrays are refused; only numeric, str and bytes')
        self._dtypes[id(dtype)] = (dtype, False)
        return dtype

    def _finished_dtype(self, dtype: Any, user: str) -> np.dtype:
        made, finished = self._dtypes.get(id(dtype), (None, False))
        if made is not dtype or not finished:
            raise RefusedGlobal(user, 'its dtype is not a finished numpy dtype of this file')
        return dtype

    def _array(self, subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
        if (subtype is not np.ndarray or type(shape) is not tuple or shape != (0,)
                or type(typecode) not in (bytes, str) or typecode not in (b'b', 'b')):
            raise RefusedGlobal(f'numpy _reconstruct({subtype!r}, {shape!r}, {typecode!r})',
                                'only a plain empty ndarray')
        array = np.empty(0, dtype=np.int8)
        self._arrays[id(array)] = (array, False)
        return array

    def _scalar(self, dtype: Any, data: Any = None) -> np.generic:
        dtype = self._finished_dtype(dtype, 'numpy scalar')
        if type(data) is not bytes or len(data) != dtype.itemsize:
            raise RefusedGlobal('numpy scalar', f'needs {dtype.itemsize} bytes')
        return np.frombuffer(data, dtype=dtype, count=1)[0]

    def _dtype_class(self, scalar_type: Any) -> type:
        if (id(scalar_type) not in self._key_of or not isinstance(scalar_type, type)
                or not issubclass(scalar_type, np.generic)):
            raise RefusedGlobal(f'numpy _DType_reconstruct({scalar_type!r})')
        return type(np.dtype(scalar_type))

    # ---------------------------------------------------------------------------- opcodes
    def load_reduce(self) -> None:
        self._check_callable(self.stack[-2], 'REDUCE')
        super().load_reduce()

    def load_newobj(self) -> None:
        self._check_callable(self.stack[-2], 'NEWOBJ')
        super().load_newobj()

    def load_newobj_ex(self) -> None:
        self._check_callable(self.stack[-3], 'NEWOBJ_EX')
        super().load_newobj_ex()

    def _instantiate(self, klass, args) -> None:  # INST and OBJ
        self._check_callable(klass, 'INST')
        super()._instantiate(klass, args)

    def load_ext(self) -> None:
        raise RefusedGlobal('EXT', 'the copyreg extension registry is not used')

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if id(inst) in self._arrays and self._arrays[id(inst)][0] is inst:
            self._build_array(inst, state)
        elif id(inst) in self._dtypes and self._dtypes[id(inst)][0] is inst:
            self._build_dtype(inst, state)
        elif type(inst) in self._buildable:
            self._check_plain_state(inst, state)
            super().load_build()
        else:
            raise RefusedGlobal(f'BUILD of a {type(inst).__module__}.{type(inst).__qualname__}',
                                'state is applied only to listed plain-data classes')

    def _check_plain_state(self, inst: Any, state: Any) -> None:
        """A HistoryBuffer's statistics methods are registered on its class: only its own."""
        methods = state.get('statistics_methods', {}) if isinstance(state, dict) else {}
        cls = type(inst)
        if not isinstance(methods, dict) or any(
                type(name) is not str or getattr(cls, name, None) is not method
                for name, method in methods.items()):
            raise RefusedGlobal(f'{cls.__qualname__} statistics_methods {methods!r}',
                                f'only {cls.__qualname__}\'s own methods under their names')

    def _build_array(self, array: np.ndarray, state: Any) -> None:
        if self._arrays[id(array)][1]:
            raise RefusedGlobal('numpy.ndarray.__setstate__', 'applied twice')
        if not (type(state) is tuple and len(state) == 5 and type(state[4]) is bytes):
            raise RefusedGlobal('numpy.ndarray.__setstate__', 'raw data expected')
        self._finished_dtype(state[2], 'numpy.ndarray')
        self.stack.pop()
        array.__setstate__(state)
        self._arrays[id(array)] = (array, True)

    def _build_dtype(self, dtype: np.dtype, state: Any) -> None:
        if self._dtypes[id(dtype)][1]:
            raise RefusedGlobal('numpy.dtype.__setstate__', 'applied twice')
        self.stack.pop()
        dtype.__setstate__(state)
        if not _is_plain(dtype):
            raise RefusedGlobal(f'numpy.dtype.__setstate__ -> {dtype}',
                                'only numeric, str and bytes dtypes')
        self._dtypes[id(dtype)] = (dtype, True)

    for _opcode, _handler in ((pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj),
                              (pickle.NEWOBJ_EX, load_newobj_ex),
                              (pickle.BUILD, load_build), (pickle.EXT1, load_ext),
                              (pickle.EXT2, load_ext), (pickle.EXT4, load_ext)):
        dispatch[_opcode[0]] = _handler
    del _opcode, _handler


def load(file, **kwargs) -> Any:
    """Read one pickled object from ``file`` with :class:`Unpickler`."""
    return Unpickler(file, **kwargs).load()
