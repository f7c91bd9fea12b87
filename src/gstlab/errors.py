"""The error of bad input (below every module that reports it: config, registries, data, models)."""

# characters that break a line (str.splitlines), written escaped so that an error stays one line even when it
# quotes a user's key or value that contains them
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class ConfigError(ValueError):
    """Invalid configuration; the message names the field and what is allowed (always one line)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(str(message).translate(_LINE_BREAKS))
