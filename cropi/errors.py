"""Errors a user can act on.

Every error raised for bad input (a config field, a dataset row, a checkpoint, a reward
function, a CLI argument) is a `CropiError` whose message names the field, row or file.
The CLI prints it without a traceback and exits 2.
"""


class CropiError(Exception):
    """Bad input or state the user can fix; the message says where and what."""


class ConfigError(CropiError):
    """A config field is unknown or has an invalid value."""


class DataError(CropiError):
    """A dataset file or row is malformed."""


class WorkerDied(CropiError):
    """A stage's actor died (a killed process, a lost node) beyond what Ray restarted: the stage
    can be redone from what it saved (cropi.loop retries training within the job)."""
