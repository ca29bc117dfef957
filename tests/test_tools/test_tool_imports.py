"""How the tools find their code: what they share is the package's :mod:`mmtransnext.cli`,
imported like any module; no tool edits the module search path, and no script imports another
script (a tool may import a plain module beside it, as ``python tools/...`` finds it)."""
import ast
import os
import os.path as osp
from typing import Iterator, List

from tool_helpers import TOOLS


def _tool_files(ext: str = '') -> Iterator[str]:
    for folder, _, names in os.walk(TOOLS):
        for name in sorted(names):
            if name.endswith(ext):
                yield osp.join(folder, name)


def _is_script(path: str) -> bool:
    return "if __name__ == '__main__':" in open(path).read()


def _imported_names(tree: ast.AST) -> List[str]:
    """Top-level module names of every absolute import, function-level ones included."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name.split('.')[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module.split('.')[0])
    return names


def test_no_tool_edits_the_module_search_path():
    offenders = [osp.relpath(path, TOOLS) for path in _tool_files()
                 if not path.endswith(('.txt', '.pyc')) and 'sys.path' in open(path).read()]
    assert offenders == []


def test_no_script_imports_another_script():
    imports = []
    for path in _tool_files('.py'):
        for name in _imported_names(ast.parse(open(path).read(), path)):
            sibling = osp.join(osp.dirname(path), f'{name}.py')
            if osp.isfile(sibling) and _is_script(sibling):
                imports.append(f'{osp.relpath(path, TOOLS)} imports {name}')
    assert imports == []


def test_the_shared_code_is_the_package_module():
    assert not osp.exists(osp.join(TOOLS, 'cli_common.py'))
    users = set()
    for path in _tool_files('.py'):
        tree = ast.parse(open(path).read(), path)
        if any(isinstance(node, ast.ImportFrom) and node.module == 'mmtransnext.cli'
               for node in ast.walk(tree)):
            users.add(osp.relpath(path, TOOLS))
    assert users >= {'train.py', 'test.py', 'demo.py', 'check_triton_build.py',
                     osp.join('deployment', 'export.py'), osp.join('analysis', 'get_flops.py'),
                     osp.join('analysis', 'visualize_attention.py')}
