"""Where files live: local paths and object stores (gs://, s3://) through one layer, etils.epath.

Orbax, Grain, ArrayRecord, tensorboardX and JAX's compilation cache all read and write through epath (or their own
gs:// support), so a workdir, a params checkpoint, a tokenizer or the data may be a bucket URL as well as a local
directory as long as llada-jax's own file handling goes through here too. Local paths are made absolute (`~`
expanded); URLs are left as they are (`os.path.abspath` would turn gs://b/x into ./gs:/b/x).
"""

import glob as glob_lib
import os
import re
import uuid

from etils import epath

from llada_jax.errors import UserError


def is_url(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """The path as every module stores and prints it: absolute when local, the URL itself otherwise."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def path(location: str | os.PathLike, *parts: str) -> epath.Path:
  """An epath.Path for a local path or URL, with `parts` joined on (pathlib's interface: `/`, exists, is_dir,
  iterdir, read_text, …)."""
  return epath.Path(absolute(location)).joinpath(*parts)


def write_atomically(target: str | os.PathLike, data: str | bytes) -> None:
  """Writes a sibling temporary file and renames it over `target`: a kill leaves the old file or the new one, never
  half of one (on object stores, where a rename is a copy, the new object appears whole)."""
  target = path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
  try:
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    tmp.replace(target)
  finally:
    if tmp.exists():
      tmp.unlink()


def glob(pattern: str) -> list[str]:
  """Files matching a glob, sorted. Local patterns may use `**` (recursive); URL patterns may not (epath refuses
  it: on an object store it would list every object below)."""
  pattern = absolute(pattern)
  if not is_url(pattern):
    return sorted(p for p in glob_lib.glob(pattern, recursive=True) if os.path.isfile(p))
  parts = pattern.split("/")
  first_magic = next(i for i, part in enumerate(parts) if glob_lib.has_magic(part))
  base = epath.Path("/".join(parts[:first_magic]))
  return sorted(str(p) for p in base.glob("/".join(parts[first_magic:])) if p.is_file())


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model(location: str, allow_download: bool | None = None) -> str:
  """A model directory: `location` itself, or for a Hugging Face id ("GSAI-ML/LLaDA-8B-Base") that is not a local
  path, its snapshot in the local HF cache (HF_HOME / HF_HUB_CACHE). Nothing is downloaded unless allowed
  (`allow_download`, default: the LLADA_JAX_ALLOW_DOWNLOAD=1 environment variable)."""
  if is_url(location) or os.path.exists(os.path.expanduser(location)) or not _HUB_ID.fullmatch(location):
    return location
  import huggingface_hub
  from huggingface_hub.errors import LocalEntryNotFoundError
  if allow_download is None:
    allow_download = os.environ.get("LLADA_JAX_ALLOW_DOWNLOAD") == "1"
  try:
    return huggingface_hub.snapshot_download(location, local_files_only=not allow_download)
  except LocalEntryNotFoundError:
    raise UserError(f"{location} is neither a local directory nor in the local Hugging Face cache "
                    f"({huggingface_hub.constants.HF_HUB_CACHE}); download it (huggingface-cli download {location}, "
                    "or set LLADA_JAX_ALLOW_DOWNLOAD=1) or pass the directory holding it") from None
  except Exception as e:  # the hub's network and authorisation errors
    raise UserError(f"fetching {location} from the Hugging Face hub failed ({type(e).__name__}: {e}); pass a local "
                    "directory instead") from None


def existing_model(location: str) -> str:
  """`resolve_model`, refusing a location that is not there: a mistyped checkpoint is reported as what it is, not as
  the first file a loader then fails to find in it (its tokenizer, its config.json)."""
  resolved = resolve_model(location)
  if not path(resolved).exists():
    raise UserError(f"the checkpoint {location} does not exist; pass a llada-jax checkpoint, a training workdir or an "
                    "HF LLaDA directory")
  return resolved
