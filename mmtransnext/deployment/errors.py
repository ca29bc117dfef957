"""The error every export refusal raises."""


class ExportError(RuntimeError):
    """A model or setting that cannot be exported, with what to change."""
