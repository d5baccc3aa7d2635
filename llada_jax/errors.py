"""The one exception type for mistakes a user can fix.

The CLI prints `UserError` as a single line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem caused by user input (config, paths, shapes, files); the message names the fix."""
