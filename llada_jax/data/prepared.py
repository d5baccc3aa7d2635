"""The pod-scale path: `prepare_data` tokenizes and packs a corpus once into ArrayRecord shards (with its
tokenizer and a manifest); training then reads windows on demand and never loads the corpus."""

import json
import os
from typing import Callable, Sequence

import grain
import numpy as np

from llada_jax import paths as paths_lib
from llada_jax.config import DataConfig
from llada_jax.data.packing import TOKENS, Windows, pack_documents, too_small_message
from llada_jax.data.sources import MANIFEST, SPLITS, Corpus, corpus_of, prompt_line
from llada_jax.data.run_tokenizer import make_tokenizer, tokenizer_info
from llada_jax.errors import UserError

MANIFEST_FORMAT = "llada_jax.packed_windows/1"


class RecordWindows:
  """Windows read on demand from ArrayRecord shards (little-endian int32 records), in shard order."""

  def __init__(self, files: Sequence[str]):
    self._source = grain.sources.ArrayRecordDataSource(list(files))

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return {TOKENS: np.frombuffer(self._source[index], "<i4")}


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
    raise UserError(too_small_message(corpus, "train", splits["train"]["tokens"]))
  manifest = {"format": MANIFEST_FORMAT, "seq_len": corpus.seq_len, "dtype": "int32",
              "corpus": {"source": corpus.source, "paths": list(corpus.paths), "jsonl_field": corpus.jsonl_field,
                         "val_fraction": corpus.val_fraction},
              "tokenizer": dict(tokenizer_info(tokenizer), file=os.path.basename(tokenizer.save(out_dir)),
                                origin=data_cfg.tokenizer or "built-in"),
              "splits": splits, "sample_prompt": prompt_line(first_text.get("val", first_text["train"]))}
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


def prepared_windows(corpus: Corpus, tokenizer, split: str) -> "RecordWindows | Windows":
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
    return Windows(np.zeros((0, corpus.seq_len), np.int32))
  return RecordWindows([os.path.join(directory, name) for name in files])
