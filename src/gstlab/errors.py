"""The error of bad input, how any error is quoted in one line, and the one-line warning (below every module
that reports them: config, registries, data, models, the store, the runner and executors)."""

import sys

# characters that break a line (str.splitlines), written escaped so that an error stays one line even when it
# quotes a user's key or value that contains them
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class ConfigError(ValueError):
    """Invalid configuration; the message names the field and what is allowed (always one line)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(str(message).translate(_LINE_BREAKS))


def one_line(err: BaseException, limit: int = 120) -> str:
    """An exception's message on one line (whitespace runs collapsed; its type's name when empty), cut to
    ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def warn(message: str) -> None:
    """``gst: warning: MESSAGE`` on stderr, always one line (line breaks in quoted values are escaped)."""
    print(f"gst: warning: {str(message).translate(_LINE_BREAKS)}", file=sys.stderr)
