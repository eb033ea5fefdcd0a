"""The one exception type for user mistakes.

Anything a user can get wrong (a file, a flag, a YAML key, a column) raises `AamUserError`
with a single line that says what is wrong, where, and how to fix it. The CLI prints that
line and exits with code 2; every other exception is a bug and keeps its traceback.
"""


class AamUserError(Exception):
    """A mistake in what the user passed: printed as one line, exit code 2."""

    exit_code = 2


class AamRunFailed(AamUserError):
    """A run that failed for good after its retries (its workers kept dying): one line, exit code 1.

    Not the user's mistake, but no traceback of Ray's would help either: the line says what
    failed and that the run can be continued from its last checkpoint.
    """

    exit_code = 1
