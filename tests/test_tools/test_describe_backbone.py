"""tools/analysis/describe_backbone.py: either backbone family, its stage shapes and size."""
import pytest
from tool_helpers import ROOT, run_tool

pytestmark = pytest.mark.slow  # subprocesses


@pytest.mark.parametrize('backbone,arch,line', [
    ('transxnet', 'tiny', '48x9x12 96x5x6 224x3x3 448x2x2'),
    ('transnext', 'micro', '48x9x12 96x5x6 192x3x3 384x2x2'),
])
def test_describes_either_backbone(backbone, arch, line):
    proc = run_tool(['tools/analysis/describe_backbone.py', '--backbone', backbone, '--arch',
                     arch, '--size', '33', '47', '--img-size', '64'], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(r for r in proc.stdout.splitlines() if r.startswith(arch))
    assert row.endswith(line)
    params = {'transxnet': 12.39, 'transnext': 12.42}[backbone]
    assert float(row.split()[1]) == pytest.approx(params, abs=0.005)


def test_unknown_arch_for_the_family_is_named():
    proc = run_tool(['tools/analysis/describe_backbone.py', '--backbone', 'transxnet', '--arch',
                     'micro'], cwd=ROOT)
    assert proc.returncode != 0 and "archs ['tiny', 'small', 'base']" in proc.stderr
