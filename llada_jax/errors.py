"""The one exception type for mistakes a user can fix, and the translation of environment failures into it.

The CLI prints `UserError` as a single line and exits with status 2; anything else is a bug and keeps its traceback.
A full disk, a read-only or forbidden directory is the user's to fix too, but it surfaces from deep inside Orbax,
tensorstore or tensorboardX as whatever exception type they use (often with the OS error only in the message), so
`environment_problem` recognises it anywhere in an exception's chain.
"""

import errno
import re


class UserError(Exception):
  """A problem caused by user input (config, paths, shapes, files); the message names the fix."""


class CorruptCheckpoint(UserError):
  """A checkpoint whose files cannot be read back or whose arrays differ from the fingerprints taken at save."""


# errno → (what happened, how to fix it)
_ENVIRONMENT = {
    errno.ENOSPC: ("no space left on device", "free space or choose a directory on a larger disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose a directory on a larger disk"),
    errno.EROFS: ("read-only file system", "choose a writable directory"),
    errno.EACCES: ("permission denied", "choose a directory you can write to or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a directory you can write to or fix its permissions"),
}
_PATTERNS = [(re.compile(pattern, re.IGNORECASE), code) for pattern, code in [
    (r"no space left on device|os_error_code='?28\b", errno.ENOSPC),
    (r"disk quota exceeded|os_error_code='?122\b", errno.EDQUOT),
    (r"read-only file system|os_error_code='?30\b", errno.EROFS),
    (r"permission denied|os_error_code='?13\b", errno.EACCES),
]]
_QUOTED_PATH = re.compile(r"""["'](/[^"']+)["']""")


def _chain(exc: BaseException):
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or exc.__context__


def environment_problem(exc: BaseException) -> tuple[str, str, str | None] | None:
  """(what happened, the fix, the path if known) when `exc` comes from a full disk or an unwritable location."""
  for link in _chain(exc):
    code = getattr(link, "errno", None) if isinstance(link, OSError) else None
    text = str(link)
    if code not in _ENVIRONMENT:
      code = next((c for pattern, c in _PATTERNS if pattern.search(text)), None)
    if code in _ENVIRONMENT:
      path = getattr(link, "filename", None) if isinstance(link, OSError) else None
      if path is None:
        found = _QUOTED_PATH.search(text)
        path = found.group(1) if found else None
      return (*_ENVIRONMENT[code], path)
  return None


def short_reason(exc: BaseException, limit: int = 200) -> str:
  """One line saying why `exc` happened: the first line of its root cause (Orbax wraps tensorstore's specific
  message in a generic one), without the tensorstore specs Orbax appends."""
  while exc.__cause__ is not None:
    exc = exc.__cause__
  text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
  text = text.split(" See full TensorStore details")[0]
  return text if len(text) <= limit else text[:limit - 1] + "…"


_PEER_FAILURE = re.compile(r"gloo|connection reset by peer|connection refused|heartbeat|task .* (failed|crashed)|"
                           r"unavailable|broken pipe", re.IGNORECASE)


def peer_failure(exc: BaseException) -> str | None:
  """Why a collective failed, when the reason is another process of a multi-process run going away."""
  for link in _chain(exc):
    if type(link).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and _PEER_FAILURE.search(str(link)):
      return short_reason(link)
  return None
