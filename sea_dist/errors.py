"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class SeaDistError(Exception):
    """A problem with the user's input (a file, a row, a key) rather than a bug."""

    exit_code = 2


class ConfigError(SeaDistError):
    """An invalid config file or ``--set`` override."""


class DataError(SeaDistError):
    """Invalid or corrupt input data; the message names the file and the row, column or key."""
