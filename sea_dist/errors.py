"""User-facing errors: the CLI prints their message on one line and exits non-zero.

Every :class:`SeaDistError` but :class:`TrainingFailed` is one that no retry can fix (a wrong key, a corrupt file, a
diverged model): raised inside a Ray Train worker it ends the run at once instead of being
retried like a lost node (see ``train/trainer.py``).
"""


class SeaDistError(Exception):
    """A problem with the user's input (a file, a row, a key) rather than a bug."""

    exit_code = 2


class ConfigError(SeaDistError):
    """An invalid config file or ``--set`` override."""


class DataError(SeaDistError):
    """Invalid or corrupt input data; the message names the file and the row, column or key."""


class CheckpointError(SeaDistError):
    """A checkpoint file that is unreadable or holds more than tensors and plain values."""


class DivergenceError(SeaDistError):
    """Training produced non-finite losses or embeddings; resuming would diverge again."""


class TrainingFailed(SeaDistError):
    """The driver's report that the workers failed more often than ``train.max_failures``
    allows (a bug, or lost nodes); the traceback is in the run's ``train.log``."""

    exit_code = 1
