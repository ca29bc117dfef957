"""The package's layers import one way: every import of every module of ``mmtransnext/``
(module-level and inside functions, relative ones resolved) goes to its own part of the
package or to a lower layer of :data:`LAYERS`, and no modules import each other in a cycle.
Read from the source with ``ast``: nothing is imported."""
import ast
import os
from typing import Dict, List, Optional, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'mmtransnext'

#: Rank of each top-level module or subpackage of ``mmtransnext``: a module may import its own
#: part (e.g. ``ops`` from ``ops``) and parts of a lower rank only. ``'__init__'`` is the package
#: itself (``import mmtransnext``), which registers everything and which nothing imports.
LAYERS: Dict[str, int] = {
    'version': 0,        # the version and the torch floor
    'utils': 1,          # compatibility with the supported torch releases
    'safe_pickle': 2,    # the restricted unpickler
    'registry': 2,       # registration in the OpenMMLab registries
    'ops': 2,            # kernels, launchers, the backend chooser and its self-test
    'checkpoint': 3,     # reading, converting and loading checkpoints (the models load theirs)
    'compile': 3,        # what torch.compile needs to trace the models' ops
    'models': 4,         # the backbones, their layers and the classifiers
    'datasets': 4,       # the synthetic demo datasets
    'hooks': 4,          # runner hooks that install the checkpoint reader / compile rule for a run
    'analysis': 5,       # attention maps, receptive fields, launch counts of the models
    'deployment': 5,     # export of the models
    'cli': 6,            # the tools' shared code
    '__init__': 7,       # the package: imports what it exposes and registers it
}


def _modules() -> Dict[str, str]:
    """Dotted name -> path of every module of the package."""
    modules = {}
    for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for name in sorted(files):
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
                modules[dotted[:-len('.__init__')] if dotted.endswith('.__init__')
                        else dotted] = path
    return modules


def _imports(name: str, path: str, modules: Set[str]) -> Set[str]:
    """The package's modules that module ``name`` imports anywhere in its source: for ``from X
    import y``, ``X.y`` when it is a module, else ``X``; a name outside the known modules is
    cut back to its longest known prefix."""
    with open(path, encoding='utf-8') as file:
        tree = ast.parse(file.read(), path)
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split('.')
                base = '.'.join(parts[:len(parts) - node.level + 1])
                source = f'{base}.{node.module}' if node.module else base
            else:
                source = node.module or ''
            for alias in node.names:
                submodule = f'{source}.{alias.name}'
                targets.add(submodule if submodule in modules else source)
    resolved = set()
    for target in targets:
        if target != PACKAGE and not target.startswith(PACKAGE + '.'):
            continue
        while target not in modules and '.' in target:
            target = target.rpartition('.')[0]
        if target != name:
            resolved.add(target)
    return resolved


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _part(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else '__init__'


def _cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.fixture(scope='module')
def graph() -> Dict[str, Set[str]]:
    return _graph()


def test_every_part_of_the_package_has_a_layer(graph):
    unknown = sorted({_part(module) for module in graph} - set(LAYERS))
    assert not unknown, (f'{unknown}: new top-level module(s) of mmtransnext; add each to '
                         'LAYERS in tests/test_layering.py with the rank of the layer it '
                         'belongs to')


def test_no_module_imports_upwards_or_sideways(graph):
    wrong = [f'{module} (layer {_part(module)!r}) imports {target} (layer {_part(target)!r})'
             for module, targets in sorted(graph.items()) for target in sorted(targets)
             if _part(target) != _part(module) and
             LAYERS.get(_part(target), -1) >= LAYERS.get(_part(module), -1)]
    assert not wrong, 'imports against the layers (LAYERS):\n' + '\n'.join(wrong)


def test_no_import_cycle(graph):
    cycle = _cycle(graph)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_the_checks_see_function_level_relative_imports_and_cycles(tmp_path):
    """The parser itself: an import inside a function, relative to a subpackage, is seen, and
    a cycle through it is found."""
    source = tmp_path / 'module.py'
    source.write_text('def f():\n    from ..models.layers import attention\n'
                      '    from . import dispatch\n')
    modules = {'mmtransnext.ops', 'mmtransnext.ops.dispatch', 'mmtransnext.models.layers',
               'mmtransnext.models.layers.attention'}
    found = _imports('mmtransnext.ops.self_test', str(source), modules)
    assert found == {'mmtransnext.models.layers.attention', 'mmtransnext.ops.dispatch'}
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
    assert _cycle({'a': {'b'}, 'b': set()}) is None
