"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class CifarkitError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""

    exit_code = 2


class DataError(CifarkitError):
    """A data file is missing, corrupt, or not in the expected format."""


class ConfigError(CifarkitError):
    """A recipe or override is invalid."""


class BudgetError(CifarkitError):
    """A model has more parameters than the budget allows."""


class CheckpointError(CifarkitError):
    """A checkpoint is missing, corrupt or does not fit the model."""


class DeviceError(CifarkitError):
    """The requested device is not available."""
