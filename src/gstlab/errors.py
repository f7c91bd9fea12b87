"""The error of bad input (below every module that reports it: config, registries, data, models)."""


class ConfigError(ValueError):
    """Invalid configuration; the message names the field and what is allowed."""
