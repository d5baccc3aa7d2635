"""Pre-training input at pod scale (`data.source=stream`): raw corpora read, tokenized and packed on every host while
training, inside Grain, with worker processes; one stream or a weighted mixture of several.

A stream's files are cut into *units* that hosts and workers share: a Parquet row group, a byte range of a plain
JSONL file (about `data.shard_bytes`; a line belongs to the range holding its first byte), a whole gzip or zstd JSONL
file, or a range of records of an ArrayRecord file of UTF-8 documents. Listing them reads metadata only (file
sizes, Parquet footers, ArrayRecord indexes). Every host shuffles the list with the run's seed and takes every
process_count-th unit, so no host reads another's bytes. Within a host, `data.cycle_length` units are read at once
(interleaved), documents are shuffled within a window of `data.shuffle_window`, tokenized with one EOS after each,
joined and cut into `seq_len` windows (concat-then-split), mixed by weight across streams, and batched; with
`data.num_workers` > 0 each worker process does all of this for its own share of the host's units.

Ordering: the global shuffle of `data.source=array_record` (prepared windows) is exact; a stream shuffles units
each epoch and documents within a window, which is what a corpus too large to index allows. The iterator state
(every open unit's position, the shuffle window, the packer's partial window, every worker's state) is saved with
each checkpoint, so a resumed run reads exactly the batches an uninterrupted one reads; resuming with another
mixture, other paths, worker count or process count is refused in one line.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import math
import os
from typing import Iterator

import grain
import numpy as np

from llada_jax import paths as paths_lib
from llada_jax.config import DataConfig
from llada_jax.data.packing import TOKENS
from llada_jax.errors import UserError

FORMATS = ("parquet", "jsonl", "array_record")
_EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl", ".jsonl.zst": "jsonl",
               ".jsonl.zstd": "jsonl", ".array_record": "array_record", ".arrayrecord": "array_record"}
_RECORDS_PER_UNIT = 4096  # ArrayRecord documents per unit
_TOKENIZE_CHUNK = 64  # documents tokenized together (one encode_batch call)


@dataclasses.dataclass(frozen=True)
class Stream:
  name: str
  paths: tuple[str, ...]
  format: str
  field: str
  weight: float


@dataclasses.dataclass(frozen=True)
class Unit:
  """A piece of one file: Parquet row group `start`; JSONL bytes [start, stop) (stop −1: the whole, compressed,
  file); ArrayRecord records [start, stop)."""
  path: str
  format: str
  field: str
  start: int
  stop: int
  size: int  # bytes, about: for balance and the benchmark


# ---- Configuration ----

def streams_of(data_cfg: DataConfig) -> list[Stream]:
  """The configured streams, files resolved: `data.streams` (a mixture), else one stream from `data.paths`."""
  from llada_jax.data.sources import resolve_paths
  entries = list(data_cfg.streams) or [{"paths": data_cfg.paths, "field": data_cfg.jsonl_field}]
  streams = []
  for i, entry in enumerate(entries):
    entry = dict(entry)
    unknown = set(entry) - {"name", "paths", "format", "field", "weight"}
    if unknown or not entry.get("paths"):
      raise UserError(f"data.streams[{i}] must be a dict with paths (and optionally name, format, field, weight); "
                      + (f"unknown keys {', '.join(sorted(unknown))}" if unknown else "it has no paths"))
    files = resolve_paths("stream", entry["paths"])
    fmt = entry.get("format") or _format_of(files[0])
    if fmt not in FORMATS:
      raise UserError(f"data.streams[{i}]: format {fmt!r} is not one of {', '.join(FORMATS)}")
    weight = float(entry.get("weight", 1.0))
    if not weight > 0:
      raise UserError(f"data.streams[{i}]: weight {weight} must be positive")
    streams.append(Stream(str(entry.get("name") or f"stream{i}"), files, fmt, str(entry.get("field") or "text"),
                          weight))
  return streams


def _format_of(path: str) -> str:
  name = os.path.basename(path).lower()
  for ext, fmt in sorted(_EXTENSIONS.items(), key=lambda e: -len(e[0])):
    if name.endswith(ext):
      return fmt
  raise UserError(f"cannot tell the format of {path} from its name; set format (parquet, jsonl or array_record) "
                  "in data.streams")


def split_files(stream: Stream, data_cfg: DataConfig) -> dict[str, tuple[str, ...]]:
  """A stream's training and validation files: `data.val_paths` when given (then every stream file trains), else
  the ceil(val_fraction × files) files that come first by a hash of their names (stable across runs and hosts)."""
  if data_cfg.val_paths:
    return {"train": stream.paths, "val": ()}
  if not data_cfg.val_fraction:
    return {"train": stream.paths, "val": ()}
  ranked = sorted(stream.paths, key=lambda p: hashlib.sha256(os.path.basename(p).encode()).digest())
  held = set(ranked[:math.ceil(data_cfg.val_fraction * len(ranked))]) if len(ranked) > 1 else set()
  return {"train": tuple(p for p in stream.paths if p not in held), "val": tuple(p for p in stream.paths if p in held)}


def fingerprint(data_cfg: DataConfig, tokenizer, seed: int, process_count: int) -> str:
  """What decides the batches: changing any of it makes a saved iterator position meaningless."""
  streams = [dataclasses.asdict(s) for s in streams_of(data_cfg)]
  what = dict(streams=streams, val_paths=data_cfg.val_paths, val_fraction=data_cfg.val_fraction,
              seq_len=data_cfg.seq_len, global_batch=data_cfg.global_batch, shuffle_window=data_cfg.shuffle_window,
              cycle_length=data_cfg.cycle_length, shard_bytes=data_cfg.shard_bytes, workers=data_cfg.num_workers,
              processes=process_count, seed=seed, bad_data=data_cfg.bad_data, eos=tokenizer.eos_id,
              vocab=tokenizer.vocab_size)
  return json.dumps(what, sort_keys=True)


# ---- Units ----

def units_of(files: tuple[str, ...], fmt: str, field: str, shard_bytes: int) -> list[Unit]:
  """Every unit of the files, in file order: metadata reads only."""
  units = []
  for path in files:
    try:
      if fmt == "parquet":
        import pyarrow.parquet as pq
        with open_binary(path) as f:
          meta = pq.ParquetFile(f).metadata
        units += [Unit(path, fmt, field, g, g + 1, meta.row_group(g).total_byte_size)
                  for g in range(meta.num_row_groups) if meta.row_group(g).num_rows]
      elif fmt == "array_record":
        count = _array_record_reader(path).num_records()
        units += [Unit(path, fmt, field, s, min(s + _RECORDS_PER_UNIT, count), 0)
                  for s in range(0, count, _RECORDS_PER_UNIT)]
      else:
        size = _file_size(path)
        if _compression(path):
          units.append(Unit(path, fmt, field, 0, -1, size))
        else:
          units += [Unit(path, fmt, field, s, min(s + shard_bytes, size), min(shard_bytes, size - s))
                    for s in range(0, size, shard_bytes)]
    except UserError:
      raise
    except Exception as e:  # pyarrow's, array_record's and the filesystem's own errors
      raise UserError(f"cannot read {path} as {fmt} ({_reason(e)}); fix or remove it from the data paths") from None
  return units


def _reason(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return (text[0] if text else type(e).__name__)[:200]


def _compression(path: str) -> str | None:
  name = path.lower()
  return "gzip" if name.endswith(".gz") else "zstd" if name.endswith((".zst", ".zstd")) else None


def _array_record_reader(path: str):
  from array_record.python import array_record_module
  return array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")


def host_units(units: list[Unit], seed: int, process_index: int, process_count: int, what: str) -> list[Unit]:
  """This host's share: every process_count-th unit of a seeded shuffle of all of them."""
  order = np.random.default_rng(_seed(seed, "hosts", what)).permutation(len(units))
  mine = [units[i] for i in order[process_index::process_count]]
  if not mine:
    raise UserError(f"{what} has {len(units)} units (Parquet row groups, JSONL ranges of data.shard_bytes, "
                    f"ArrayRecord record ranges) for {process_count} processes; lower data.shard_bytes or add files")
  return mine


def _seed(seed: int, *what) -> int:
  return int.from_bytes(hashlib.sha256("/".join(map(str, (seed, *what))).encode()).digest()[:4], "little")


# ---- Reading one unit ----

class _Skip(Exception):
  """A document `data.bad_data=skip` drops."""


class UnitDocuments(grain.IterDataset):
  """The token arrays of one unit's documents (each followed by EOS), tokenized in chunks."""

  def __init__(self, unit: Unit, tokenizer, bad_data: str, max_document_bytes: int):
    super().__init__()
    self._args = (unit, tokenizer, bad_data, max_document_bytes)

  def __iter__(self):
    return _UnitIterator(*self._args)


class _UnitIterator(grain.DatasetIterator):
  """State: how many documents of the unit have been returned; a restore reads the unit again up to there (a unit
  is one row group or `shard_bytes`, so that costs little) without tokenizing what it skips."""

  def __init__(self, unit: Unit, tokenizer, bad_data: str, max_document_bytes: int):
    super().__init__()
    self._unit, self._tokenizer, self._bad_data, self._max = unit, tokenizer, bad_data, max_document_bytes
    self._texts = None
    self._ready: list[np.ndarray] = []
    self._returned = 0
    self._skipped = 0  # bad documents passed over (data.bad_data=skip)

  def _open(self, skip: int = 0) -> None:
    self._texts = self._documents()
    for _ in range(skip):
      next(self._texts)
    self._returned, self._ready = skip, []

  def __next__(self) -> dict:
    if self._texts is None:
      self._open()
    if not self._ready:
      chunk = [text for _, text in zip(range(_TOKENIZE_CHUNK), self._texts)]
      if not chunk:
        if self._returned >= 0:  # one marker at the end: the documents the unit held, those skipped as bad
          documents, self._returned = self._returned, -1
          return {_END: documents, _SKIPPED: self._skipped}
        raise StopIteration
      eos = self._tokenizer.eos_id
      self._ready = [np.asarray(ids + [eos], np.int32) for ids in self._tokenizer.encode_batch(chunk)][::-1]
    self._returned += 1
    return {TOKENS: self._ready.pop()}

  def get_state(self) -> dict:
    return {"returned": self._returned}

  def set_state(self, state: dict) -> None:
    returned = int(state["returned"])
    if returned < 0:  # past the end marker
      self._texts, self._ready, self._returned = iter(()), [], -1
    else:
      self._open(returned)


  def _documents(self) -> Iterator[str]:
    """The unit's non-empty documents as text; bad ones raise a UserError naming the file, or are skipped."""
    unit = self._unit
    try:
      for where, text in _READERS[unit.format](unit, self._max):
        try:
          if isinstance(text, _Bad):
            raise _Skip(text.why)
          if text.strip():
            yield text
        except _Skip as bad:
          if self._bad_data != "skip":
            raise UserError(f"{where}: {bad} (set data.bad_data=skip to skip such documents)") from None
          logging.warning("skipped a document (data.bad_data=skip): %s: %s", where, bad)
          self._skipped += 1
    except UserError:
      raise
    except Exception as e:  # a truncated or unreadable file
      raise UserError(f"cannot read {unit.path} as {unit.format} ({_reason(e)}); fix or remove it from the data "
                      "paths") from None


_END, _SKIPPED = "unit_end", "skipped"  # the keys of the marker a unit's documents end with (removed by `_Documents`)


class _Documents(grain.IterDataset):
  """The interleaved documents without the units' end markers. A whole cycle of units without a document (every
  unit empty, or only blank lines) is an error, not a silent stall waiting for text that never comes."""

  def __init__(self, parent: grain.IterDataset, units: int, what: str):
    super().__init__(parent)
    self._units, self._what = units, what

  def __iter__(self):
    return _DocumentsIterator(self._parent.__iter__(), self._units, self._what)


class _DocumentsIterator(grain.DatasetIterator):

  def __init__(self, parent, units: int, what: str):
    super().__init__(parent)
    self._units, self._what, self._empty, self._skipped = units, what, 0, 0

  def __next__(self) -> dict:
    while True:
      element = next(self._parent)
      if _END not in element:
        self._empty = 0
        return element
      self._empty = 0 if element[_END] else self._empty + 1
      self._skipped += element[_SKIPPED]
      # Units are shuffled each epoch, so while any holds a document, fewer than two epochs' worth end empty in a row.
      if self._empty > 2 * self._units:
        raise UserError(f"{self._what}: none of its {self._units} units on this process holds a document (empty "
                        "values or blank lines only); fix or remove the files")

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(), "empty": self._empty, _SKIPPED: self._skipped}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._empty, self._skipped = state["empty"], state[_SKIPPED]


def unit_texts(unit: Unit, max_document_bytes: int, bad_data: str = "skip") -> Iterator[str]:
  """The non-empty documents of one unit as text, untokenized (a prompt, the benchmark's reference text)."""
  return _UnitIterator(unit, None, bad_data, max_document_bytes)._documents()


@dataclasses.dataclass
class _Bad:
  why: str


def open_binary(path: str):
  """A file of the corpus, local or in a bucket, for reading bytes."""
  return paths_lib.path(path).open("rb")


def _parquet_documents(unit: Unit, max_bytes: int):
  import pyarrow.parquet as pq
  with open_binary(unit.path) as f:
    parquet = pq.ParquetFile(f)
    if unit.field not in parquet.schema_arrow.names:
      raise UserError(f"{unit.path} has no column {unit.field!r} (its columns: "
                      f"{', '.join(parquet.schema_arrow.names)}); set field in data.streams (or data.jsonl_field)")
    column = parquet.read_row_group(unit.start, columns=[unit.field]).column(0)
    for row, value in enumerate(column.to_pylist()):
      where = f"{unit.path} row group {unit.start} row {row}"
      if not isinstance(value, str):
        yield where, _Bad(f"column {unit.field!r} holds {type(value).__name__}, not text")
      elif len(value) > max_bytes:
        yield where, _Bad(f"a document of {len(value):,} characters, over data.max_document_bytes={max_bytes:,}")
      else:
        yield where, value


def _jsonl_documents(unit: Unit, max_bytes: int):
  with open_binary(unit.path) as raw:
    if unit.stop < 0:
      f = _decompressed(raw, unit.path)
      position, end = 0, math.inf
    else:
      if unit.start:  # a line belongs to the range holding its first byte: skip the one begun before
        raw.seek(unit.start - 1)
        raw.readline()
      f, position, end = raw, raw.tell(), unit.stop
    while position < end:
      line = f.readline(max_bytes + 1)
      if not line:
        break
      position += len(line)
      where = f"{unit.path} byte {position - len(line)}"
      if len(line) > max_bytes and not line.endswith(b"\n"):
        while line and not line.endswith(b"\n"):  # the rest of the overlong line
          line = f.readline(max_bytes + 1)
          position += len(line)
        yield where, _Bad(f"a line over data.max_document_bytes={max_bytes:,} bytes")
        continue
      if not line.strip():
        continue
      try:
        row = json.loads(line.decode("utf-8"))
      except UnicodeDecodeError:
        yield where, _Bad("invalid UTF-8")
        continue
      except json.JSONDecodeError as e:
        yield where, _Bad(f"not valid JSON ({e.msg})")
        continue
      text = row.get(unit.field) if isinstance(row, dict) else None
      if not isinstance(text, str):
        found = f"its fields are {', '.join(map(str, row))}" if isinstance(row, dict) else "it is not an object"
        raise UserError(f"{where}: no string field {unit.field!r} ({found}); set field in data.streams (or "
                        "data.jsonl_field)")
      yield where, text


def _decompressed(raw, path: str):
  if _compression(path) == "gzip":
    return gzip.GzipFile(fileobj=raw)
  try:
    import zstandard
  except ImportError:
    raise UserError(f"{path} is zstd-compressed: pip install zstandard") from None
  return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))


def _array_record_documents(unit: Unit, max_bytes: int):
  reader = _array_record_reader(unit.path)
  try:
    for index, record in zip(range(unit.start, unit.stop), reader.read(list(range(unit.start, unit.stop)))):
      where = f"{unit.path} record {index}"
      if len(record) > max_bytes:
        yield where, _Bad(f"a record of {len(record):,} bytes, over data.max_document_bytes={max_bytes:,}")
        continue
      try:
        yield where, record.decode("utf-8")
      except UnicodeDecodeError:
        yield where, _Bad("invalid UTF-8")
  finally:
    reader.close()


_READERS = {"parquet": _parquet_documents, "jsonl": _jsonl_documents, "array_record": _array_record_documents}


# ---- The pipelines ----

def _windows(units: list[Unit], data_cfg: DataConfig, tokenizer, seed: int, what: str,
             shuffle: bool) -> grain.IterDataset:
  """Endless `seq_len` windows from these units: interleaved, window-shuffled documents, concat-then-split."""
  source = grain.MapDataset.source(units)
  if shuffle:  # a fresh order of the units every epoch
    source = source.shuffle(seed=_seed(seed, "units", what))
  args = (tokenizer, data_cfg.bad_data, data_cfg.max_document_bytes)
  docs = source.repeat().map(lambda unit: UnitDocuments(unit, *args))
  ds = grain.experimental.InterleaveIterDataset(docs, cycle_length=max(1, min(data_cfg.cycle_length, len(units))))
  ds = _Documents(ds, len(units), what)
  if shuffle and data_cfg.shuffle_window > 1:
    ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=data_cfg.shuffle_window,
                                                     seed=_seed(seed, "documents", what))
  ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={TOKENS: data_cfg.seq_len})
  return ds.map(lambda element: {TOKENS: element[TOKENS]})


def train_dataset(data_cfg: DataConfig, tokenizer, *, seed: int, process_index: int, process_count: int,
                  batch: int) -> grain.IterDataset:
  """This host's endless training batches from every stream, mixed by weight."""
  parts, weights = [], []
  for stream in streams_of(data_cfg):
    files = split_files(stream, data_cfg)["train"]
    units = units_of(files, stream.format, stream.field, data_cfg.shard_bytes)
    mine = host_units(units, seed, process_index, process_count, f"stream {stream.name}")
    if data_cfg.num_workers > len(mine):
      raise UserError(f"stream {stream.name} gives this host {len(mine)} units, fewer than data.num_workers="
                      f"{data_cfg.num_workers}; lower data.num_workers or data.shard_bytes, or add files")
    parts.append(_windows(mine, data_cfg, tokenizer, seed, f"stream {stream.name}", shuffle=True))
    weights.append(stream.weight)
  ds = parts[0] if len(parts) == 1 else grain.IterDataset.mix(parts, weights)
  return ds.batch(batch, drop_remainder=True)


def _val_files(data_cfg: DataConfig) -> list[tuple[tuple[str, ...], str, str]]:
  """(files, format, field) of the validation data: the named files, or each stream's held-out files."""
  if data_cfg.val_paths:
    from llada_jax.data.sources import resolve_paths
    files = resolve_paths("stream", data_cfg.val_paths)
    return [(files, _format_of(files[0]), streams_of(data_cfg)[0].field)]
  return [(split_files(stream, data_cfg)["val"], stream.format, stream.field) for stream in streams_of(data_cfg)]


def val_units(data_cfg: DataConfig) -> list[Unit]:
  """The validation units: the named files, or each stream's held-out files."""
  return [unit for files, fmt, field in _val_files(data_cfg) for unit in units_of(files, fmt, field,
                                                                                  data_cfg.shard_bytes)]


def val_dataset(data_cfg: DataConfig, tokenizer, *, process_index: int, process_count: int,
                batch: int) -> grain.IterDataset:
  """Validation batches, the same at every evaluation: every host reads the validation units in order (a small set)
  and takes its strided share of the batches."""
  units = val_units(data_cfg)
  if not units:
    raise UserError("data.source=stream holds out no validation files: name them in data.val_paths, raise "
                    "data.val_fraction (a share of each stream's files, at least one, needs two files or more), or "
                    "set train.eval_every=0")
  windows = _windows(units, data_cfg, tokenizer, 0, "the validation files", shuffle=False)
  return windows.batch(batch * process_count, drop_remainder=True).map(
      lambda rows: {TOKENS: rows[TOKENS][process_index * batch:(process_index + 1) * batch]})


def skipped_documents(state) -> int:
  """Bad documents this process's pipeline skipped (data.bad_data=skip), summed over the `_Documents` states in its
  iterator state (every stream's, in every worker; up to a shuffle window behind what was consumed)."""
  if isinstance(state, dict):
    if {"parent", "empty", _SKIPPED} <= state.keys():
      return state[_SKIPPED]
    return sum(skipped_documents(value) for value in state.values())
  if isinstance(state, list):
    return sum(skipped_documents(value) for value in state)
  return 0


class Checked(grain.DatasetIterator):
  """An iterator whose saved state carries the fingerprint of what decides its batches, and which refuses a state
  saved under another one."""

  def __init__(self, inner, fingerprint_: str):
    super().__init__(inner)  # closing this closes the pipeline (and its workers)
    self._inner, self._fingerprint = inner, fingerprint_

  def __next__(self):
    return next(self._inner)

  def get_state(self) -> dict:
    return {"fingerprint": self._fingerprint, "inner": self._inner.get_state()}

  def set_state(self, state: dict) -> None:
    saved = state.get("fingerprint")
    if saved != self._fingerprint:
      raise UserError("the checkpoint's data position belongs to other data settings ("
                      + _difference(saved, self._fingerprint) + "); resume with the settings it was saved with, or "
                      "train into a new workdir (--config.train.init_from=WORKDIR keeps the weights)")
    self._inner.set_state(state["inner"])


def _difference(saved: str | None, now: str) -> str:
  if not saved:
    return "it was saved by another data source"
  before, after = json.loads(saved), json.loads(now)
  changed = [k for k in sorted(after) if before.get(k) != after[k]]
  return "changed: " + ", ".join(changed)


def stats(data_cfg: DataConfig) -> dict[str, int]:
  """What the run summary can say without reading the corpus: files and bytes of each split (file sizes only: the
  units' metadata was read when the pipeline was built and is not read again)."""
  streams = streams_of(data_cfg)
  files = {"train": [p for stream in streams for p in split_files(stream, data_cfg)["train"]],
           "val": [p for group, _, _ in _val_files(data_cfg) for p in group]}
  counts = {"streams": len(streams)}
  for name, paths in files.items():
    counts[f"{name}_files"] = len(set(paths))
    counts[f"{name}_file_bytes"] = sum(_file_size(p) for p in set(paths))
  return counts


def _file_size(path: str) -> int:
  return os.path.getsize(path) if not paths_lib.is_url(path) else paths_lib.path(path).stat().length


def first_document(data_cfg: DataConfig) -> str:
  """The first document of the validation units (the first stream's training units without any): a prompt."""
  units = val_units(data_cfg)
  if not units:
    stream = streams_of(data_cfg)[0]
    units = units_of(split_files(stream, data_cfg)["train"][:1], stream.format, stream.field, data_cfg.shard_bytes)
  for unit in units[:4]:
    text = next(unit_texts(unit, data_cfg.max_document_bytes), None)
    if text:
      return text
  return ""
