"""Errors a user can cause. The CLI prints their message on one line and exits with their code.

Exit codes, so that scripts can tell failures apart (documented in the README):

    0    success
    1    any other cifarkit error
    2    usage: an unknown option, a missing argument (argparse)
    3    bad recipe: unknown key, wrong type or range, a model over the parameter budget
    4    bad data: a missing, corrupt or wrongly formatted dataset, pickle or image
    5    bad checkpoint or run directory: missing, corrupt, another architecture, in use
    6    device unavailable: --device cuda without a GPU
    7    out of memory (GPU or CPU): lower the batch size
    8    training diverged: non-finite loss or gradients
    9    file system: an output cannot be written (disk full, permissions)
    130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM
    141  stdout was a pipe whose reader went away (`| head`): ends silently, as shell tools do
"""

EXIT_USAGE = 2
EXIT_OUT_OF_MEMORY = 7


class CifarkitError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""

    exit_code = 1


class ConfigError(CifarkitError):
    """A recipe or override is invalid."""

    exit_code = 3


class BudgetError(ConfigError):
    """A model has more parameters than the budget allows."""


class DataError(CifarkitError):
    """A data file is missing, corrupt, or not in the expected format."""

    exit_code = 4


class CheckpointError(CifarkitError):
    """A checkpoint or run directory is missing, corrupt, does not fit the model, or is in use."""

    exit_code = 5


class DeviceError(CifarkitError):
    """The requested device is not available."""

    exit_code = 6


class TrainingDiverged(CifarkitError):
    """The loss or the gradients became NaN or infinite."""

    exit_code = 8


class OutputError(CifarkitError):
    """An output file or folder cannot be written (disk full, permissions, a file in the way)."""

    exit_code = 9
