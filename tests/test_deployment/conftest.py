import os.path as osp
import sys

# tools/ holds cli_common and tools/deployment/export.py imports it as the tools do
sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools'))
