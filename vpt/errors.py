"""Errors a user can cause. The CLI prints them as one line and exits with `exit_code`."""


class VptError(Exception):
    """A mistake in the user's input: printed as one line, no traceback."""

    exit_code = 1


class ConfigError(VptError):
    """An unknown key, a wrong type or a missing config file."""

    exit_code = 2


class UsageError(VptError):
    """A wrong combination of command-line options."""

    exit_code = 2


class TrainingDiverged(VptError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class Interrupted(VptError):
    """The user pressed Ctrl-C; what was finished is kept and the same command continues."""

    exit_code = 130
