"""The error a tool reports as one line: a problem the user can fix."""


class ToolError(RuntimeError):
    """A problem the user can fix (missing file, wrong option); printed without a traceback."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (mmengine's syntax errors span several)."""
    return ' '.join(str(err).split())
