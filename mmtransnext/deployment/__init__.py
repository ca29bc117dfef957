"""Deployment: export of the backbones and of the mmdet / mmseg models built on them (ONNX,
``torch.export`` programs) and the checks of exported graphs against PyTorch."""
from .exporter import (DYNAMIC_CHECK_SIZES, FORMATS, OPSET, PARTS, BackboneForward,
                       ExportError, ExportResult, FeaturesForward, TensorForward, backbone_of,
                       check_exportable, check_onnx, check_program, export,
                       export_module, export_program, flatten_outputs,
                       library_of_model, onnx_session, position_tables, prepare, relative_error,
                       run_onnx, tensor_forward_refusal)
from .whole import (compare_predictions, predict_module, predict_refusal,
                    reference_predictions, to_data_sample)

__all__ = [
    'DYNAMIC_CHECK_SIZES', 'FORMATS', 'OPSET', 'PARTS', 'BackboneForward', 'ExportError',
    'ExportResult', 'FeaturesForward', 'TensorForward', 'backbone_of', 'check_exportable',
    'check_onnx', 'check_program', 'export', 'export_module',
    'export_program', 'flatten_outputs', 'library_of_model', 'onnx_session',
    'position_tables', 'prepare', 'relative_error', 'run_onnx', 'tensor_forward_refusal',
    'compare_predictions', 'predict_module', 'predict_refusal', 'reference_predictions',
    'to_data_sample'
]
