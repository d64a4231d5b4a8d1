"""User-facing errors.

Anything raised as a :class:`LongtailError` is a problem the user can fix (a bad config value, missing
data, a corrupt checkpoint). The CLI prints its message without a traceback and exits non-zero;
``--debug`` shows the traceback.
"""


class LongtailError(Exception):
    """An error whose message tells the user what went wrong and what to do."""


class ConfigError(LongtailError, ValueError):
    """A config key or value is invalid."""


class DataError(LongtailError):
    """A dataset is missing, incomplete or malformed."""


class ChecksumError(DataError):
    """A file's checksum differs from the published one. The file is left untouched."""


class CheckpointError(LongtailError):
    """A checkpoint cannot be read or does not fit the current config."""


class OutputExistsError(LongtailError):
    """A command would replace a finished output (a run, features, a report, a file); nothing was changed."""


class NonFiniteLossError(LongtailError):
    """Training produced a NaN or infinite loss."""


class Interrupted(LongtailError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""


#: exit status of the CLI for each kind of error (anything else: 2)
EXIT_CODES = {"Interrupted": 130, "NonFiniteLossError": 3}
