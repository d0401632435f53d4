"""The errors improvd reports to its user, each with the exit code the CLI documents."""


class ImprovdError(Exception):
    """Base of every error improvd reports as one line; ``exit_code`` is the CLI's."""

    exit_code = 1


class ConfigError(ImprovdError):
    """The configuration (file or flags) is invalid; the message lists every problem."""

    exit_code = 1


class InputFileError(ImprovdError):
    """A seed file that cannot be used (missing, empty, truncated, not MIDI, no notes, huge)."""

    exit_code = 2


class ModelError(ImprovdError):
    """The model files are missing, corrupt, or do not match this improvd's vocabulary."""

    exit_code = 3


class PortError(ImprovdError):
    """A MIDI port cannot be found or opened."""

    exit_code = 4


class EmptyContinuationError(ImprovdError):
    """--output-file would get a continuation of no notes; the message says why."""

    exit_code = 5


class UsageError(ImprovdError):
    """The command line itself: an unknown flag, or a value a flag cannot take (EX_USAGE of sysexits.h)."""

    exit_code = 64
