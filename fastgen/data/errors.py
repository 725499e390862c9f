"""The one exception type the data modules raise for bad input (a ValueError, so callers may catch either)."""


class DataError(ValueError):
    """Bad or missing data: the message names the file (and line) and the config key to change."""
