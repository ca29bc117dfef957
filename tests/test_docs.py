"""The documentation: README.md stays a short user's page whose links into docs/ resolve, and
the docs/ site builds with Sphinx + MyST with every warning an error (broken internal links and
heading anchors included).

The link checks read the Markdown directly and run everywhere; the Sphinx build needs
requirements/docs.txt (tools/install.sh installs it) and skips, saying so, without it. The
build takes a few seconds.
"""
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys
from typing import Dict, List, Set, Tuple

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOCS = osp.join(ROOT, 'docs')
README = osp.join(ROOT, 'README.md')
#: What the issue asks of the README: a page a user reads in five minutes.
README_MAX_LINES = 300
DOCS_PACKAGES = ('sphinx', 'myst_parser', 'furo')

_LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
_FENCE = re.compile(r'^\s*(```|~~~)')
_HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')


def _prose_lines(path: str) -> List[Tuple[int, str]]:
    """The lines of a Markdown file outside fenced code blocks, with their numbers."""
    out, fenced = [], False
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if _FENCE.match(line):
                fenced = not fenced
                continue
            if not fenced:
                out.append((number, line.rstrip('\n')))
    return out


def slug(heading: str) -> str:
    """The anchor GitHub (and MyST's ``myst_heading_anchors``) gives a heading: lower case,
    markup and punctuation dropped, spaces as hyphens."""
    text = re.sub(r'[`*]', '', heading)
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)  # a link keeps its text
    text = text.strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path: str) -> Set[str]:
    """The heading anchors of a Markdown file, GitHub's ``-1`` suffixes for repeats included."""
    seen: Dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f'{base}-{n}')
    return out


def broken_links(path: str) -> List[str]:
    """Relative links of a Markdown file whose target file or heading anchor does not exist."""
    problems = []
    here = osp.dirname(path)
    for number, line in _prose_lines(path):
        for target in _LINK.findall(line):
            if re.match(r'[a-z][a-z0-9+.-]*:', target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition('#')
            resolved = osp.normpath(osp.join(here, file_part)) if file_part else path
            where = f'{osp.relpath(path, ROOT)}:{number}: {target}'
            if not osp.exists(resolved):
                problems.append(f'{where}: no file {osp.relpath(resolved, ROOT)}')
            elif anchor and resolved.endswith('.md') and anchor not in anchors(resolved):
                problems.append(f'{where}: no heading with anchor #{anchor} in '
                                f'{osp.relpath(resolved, ROOT)}')
    return problems


def _docs_pages() -> List[str]:
    return sorted(osp.join(d, f) for d, dirs, files in os.walk(DOCS)
                  if not osp.relpath(d, DOCS).startswith('_build')
                  for f in files if f.endswith('.md'))


def test_readme_is_a_short_page():
    with open(README, encoding='utf-8') as f:
        lines = f.read().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f'README.md has {len(lines)} lines (at most {README_MAX_LINES}): move details to docs/')


def test_readme_links_into_docs_resolve():
    targets = [t for _, line in _prose_lines(README) for t in _LINK.findall(line)]
    assert any(t.startswith('docs/') and t.endswith('.md') for t in targets), \
        'README.md links no page of docs/'
    problems = broken_links(README)
    assert not problems, 'README.md links that do not resolve:\n' + '\n'.join(problems)


def test_every_readme_link_into_docs_names_a_page_of_the_site():
    pages = {osp.relpath(p, ROOT) for p in _docs_pages()}
    targets = {t.partition('#')[0] for _, line in _prose_lines(README)
               for t in _LINK.findall(line) if t.startswith('docs/') and '.md' in t}
    assert targets <= pages, sorted(targets - pages)


def test_docs_links_resolve():
    """The same check on the docs pages, without Sphinx (which checks them again below)."""
    problems = [p for page in _docs_pages() for p in broken_links(page)]
    assert not problems, 'docs/ links that do not resolve:\n' + '\n'.join(problems)


def test_slug_follows_githubs_rule():
    assert slug('torch.compile on CPU') == 'torchcompile-on-cpu'
    assert slug('Arguments, weight updates and dtypes') == 'arguments-weight-updates-and-dtypes'
    assert slug('What `--run` does') == 'what---run-does'
    assert slug('Install and run') == 'install-and-run'


_MISSING = [p for p in DOCS_PACKAGES if importlib.util.find_spec(p) is None]


@pytest.mark.skipif(bool(_MISSING), reason=f'the docs tools are not installed ({", ".join(_MISSING)} '
                    'missing): pip install -r requirements/docs.txt')
def test_docs_build_with_warnings_as_errors(tmp_path):
    """``sphinx-build -W --keep-going -n``: every warning fails the build, among them MyST's
    broken cross-references and missing heading anchors and pages outside every toctree."""
    cmd = [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-n', '-q', '-b', 'html',
           '-d', str(tmp_path / 'doctrees'), DOCS, str(tmp_path / 'html')]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    warnings = [line for line in proc.stderr.splitlines() if 'WARNING' in line or 'ERROR' in line]
    assert proc.returncode == 0, (
        f'the docs build failed ({" ".join(cmd)}):\n' + '\n'.join(warnings or
                                                                 [proc.stdout, proc.stderr]))
    assert not warnings, '\n'.join(warnings)
    assert (tmp_path / 'html' / 'index.html').exists()
