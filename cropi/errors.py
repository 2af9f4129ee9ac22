"""Errors a user can act on.

Every error raised for bad input (a config field, a dataset row, a checkpoint, a reward
function, a CLI argument) is a `CropiError` whose message names the field, row or file.
The CLI prints it without a traceback and exits 2.
"""

import errno


class CropiError(Exception):
    """Bad input or state the user can fix; the message says where and what."""


class ConfigError(CropiError):
    """A config field is unknown or has an invalid value."""


class DataError(CropiError):
    """A dataset file or row is malformed."""


class WorkerDied(CropiError):
    """A stage's actor died (a killed process, a lost node) beyond what Ray restarted: the stage
    can be redone from what it saved (cropi.loop retries training within the job)."""


class WorkerHung(WorkerDied):
    """A stage's actor stopped answering (a stuck collective, a stopped process) for longer than
    run.hang_timeout_s: it was killed, and the stage is redone as after a death."""


class StorageError(CropiError):
    """Writing a run file failed in the file system (no space left, quota, read-only, permission):
    the file named was not written and earlier outputs are whole; a rerun resumes once it is fixed."""


# errno values that mean "the disk, not the program": reported as StorageError, without a traceback
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES})


def storage_error(e: OSError, path=None, atomic: bool = False) -> StorageError:
    """A StorageError for OSError E met while writing PATH (else the file E names). ATOMIC: the
    write was an atomic one (cropi.store.files), so nothing half-written was kept."""
    where = path if path is not None else (e.filename or "a file")
    kept = "nothing half-written was kept there and earlier outputs are whole: " if atomic else ""
    return StorageError(f"could not write {where}: {e.strerror or e} (errno {e.errno}); {kept}free the space "
                        "(or fix the permission) and rerun the same command to resume")
