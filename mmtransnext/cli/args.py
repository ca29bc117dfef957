"""argparse types and the options several tools share."""
import argparse
from typing import Sequence, Tuple


def key_value(text: str) -> str:
    """An argparse type: a ``KEY=VALUE`` config override, kept as text (to be handed on to
    another tool's ``--cfg-options``; :func:`cfg_options_dict` parses it)."""
    if '=' not in text or text.startswith('='):
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE, got {text!r}')
    return text


def cfg_options_dict(items: Sequence[str]) -> dict:
    """``KEY=VALUE`` overrides as ``--cfg-options`` parses them (mmengine's ``DictAction``)."""
    from mmengine.config import DictAction
    namespace = argparse.Namespace()
    DictAction(option_strings=['--cfg-options'], dest='options')(None, namespace, list(items))
    return getattr(namespace, 'options', None) or {}


def positive_int(text: str) -> int:
    """argparse ``type``: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse ``type``: an integer >= 0 (indices, counts that may be zero)."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """argparse ``type``: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not a number: {text!r}') from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f'must be > 0, got {text}')
    return value


def image_size(text: str) -> Tuple[int, int]:
    """argparse ``type``: ``HxW`` (or one size for both) as positive ``(height, width)``."""
    height, _, width = text.lower().partition('x')
    try:
        size = int(height), int(width or height)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected HxW or one size, got {text!r}') from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f'sizes must be >= 1, got {text!r}')
    return size


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not an integer: {text!r}') from None
    if value < least:
        raise argparse.ArgumentTypeError(f'must be >= {least}, got {value}')
    return value


def add_fixed_pool_size_flag(parser: argparse.ArgumentParser) -> None:
    """``--fixed-pool-size N`` (tools/train.py and tools/test.py)."""
    parser.add_argument('--fixed-pool-size', type=positive_int, metavar='N',
                        help="TransNeXt's linear inference mode: pool the keys of every "
                        'aggregated-attention stage to NxN (7 equals the normal mode at 224x224; '
                        'the same as --cfg-options model.backbone.fixed_pool_size=N)')


def add_non_finite_flag(parser: argparse.ArgumentParser) -> None:
    """``--allow-non-finite`` (tools/train.py and tools/test.py): see :func:`allow_non_finite`."""
    parser.add_argument('--allow-non-finite', action='store_true',
                        help='load checkpoints whose weights hold NaN or inf (each reported as '
                        'a warning) instead of refusing them')
