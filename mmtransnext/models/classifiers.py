"""The official ImageNet classifiers of both families as MMPretrain ``ImageClassifier`` s.

Both official classifiers are "last stage -> normalise -> global average pool -> linear", which
in MMPretrain is a backbone with ``out_indices=(3,)`` (its output norm: TransNeXt's ``norm4``,
TransXNet's ``norm6``, a ``GroupNorm(1, C)`` like the official ``classifier.0``), a
``GlobalAveragePooling`` neck and a ``LinearClsHead``. The only difference is where the weights
sit, so :class:`OfficialImageClassifier` converts the official key layout whenever a state dict
is loaded into it (``mmengine.runner.load_checkpoint``, hence ``load_from``, testing a
checkpoint and the inferencers), strictly: a file that does not fit raises
(:func:`mmtransnext.checkpoint.convert_official_classifier`).
"""
from mmpretrain.models import ImageClassifier
from mmpretrain.registry import MODELS

from ..checkpoint import convert_official_classifier


@MODELS.register_module()
class OfficialImageClassifier(ImageClassifier):
    """mmpretrain's ``ImageClassifier`` that also loads the official TransNeXt
    (``{'model': ...}``, ``head.*``) and TransXNet (``classifier.{0,2}.*``) ImageNet files.

    Arguments are those of ``ImageClassifier``; see the configs in
    ``configs/classification/`` for the backbone / neck / head that reproduce the official
    classifiers.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Runs before any child loads its part, so the renamed keys reach backbone and head.
        self.register_load_state_dict_pre_hook(_convert_on_load)


def _convert_on_load(module: OfficialImageClassifier, state_dict: dict, prefix: str,
                     *args) -> None:
    convert_official_classifier(state_dict, module, prefix)
