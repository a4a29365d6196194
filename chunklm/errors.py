"""Errors a user can cause (bad paths, configs, data).

The CLI turns a `UserError` into one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem with the user's input, reported without a traceback."""


class ConfigError(UserError):
  """An invalid configuration: unknown key, wrong type or a value that cannot work."""


class DataError(UserError):
  """Unreadable, missing or unusable training/evaluation data."""


class CheckpointError(UserError):
  """A workdir whose checkpoints cannot be used with the requested run."""
