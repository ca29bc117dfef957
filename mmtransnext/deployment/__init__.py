"""Deployment: export of the backbones and of the mmdet / mmseg models built on them (ONNX,
``torch.export`` programs) and the checks of exported graphs against PyTorch."""
from .exporter import (DYNAMIC_CHECK_SIZES, FORMATS, OPSET, PARTS, BackboneForward,
                       ExportError, ExportResult, FeaturesForward, TensorForward, backbone_of,
                       check_exportable, check_onnx, check_program, export,
                       export_module, export_program, family_of, flatten_outputs,
                       library_of_model, onnx_session, position_tables, prepare, relative_error,
                       run_onnx, tensor_forward_refusal)

__all__ = [
    'DYNAMIC_CHECK_SIZES', 'FORMATS', 'OPSET', 'PARTS', 'BackboneForward', 'ExportError',
    'ExportResult', 'FeaturesForward', 'TensorForward', 'backbone_of', 'check_exportable',
    'check_onnx', 'check_program', 'export', 'export_module',
    'export_program', 'family_of', 'flatten_outputs', 'library_of_model', 'onnx_session',
    'position_tables', 'prepare', 'relative_error', 'run_onnx', 'tensor_forward_refusal'
]
