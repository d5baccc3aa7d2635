"""Examples as the trainer reads them: pre-training documents packed into fixed-length windows, SFT
conversations as EOS-padded rows with their prompt length; both random-access sources of batch elements.

The element keys, written down once: every element has `TOKENS` (int32 [seq_len]); SFT elements also have
`PROMPT_LENGTH` (int32).
"""

import functools
from typing import Iterator, Sequence

import numpy as np

from llada_jax.data.sources import (SPLITS, Corpus, conversation_key, conversations, documents, is_validation)

TOKENS, PROMPT_LENGTH = "tokens", "prompt_length"


class WindowPacker:
  """Joins documents, each followed by one EOS, into a stream and cuts it into `seq_len` windows; the tokens of a
  partial last window never come out.

  Grain's `ConcatThenSplitIterDataset` cuts the same windows (tests/test_data.py checks it) but packs a Grain
  dataset, pads a partial last window, and adds segment ids and positions we do not use; this packer takes one
  document at a time, which is what lets `prepare_data` stream a corpus of any size into shards, and gives the
  in-memory and the ArrayRecord paths one definition of the windows."""

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
def packed_windows(corpus: Corpus, tokenizer) -> tuple[dict[str, np.ndarray], dict[str, int]]:
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


class Windows:
  """In-memory windows as a Grain random-access source of {"tokens": [seq_len]} elements."""

  def __init__(self, windows: np.ndarray):
    self._windows = windows

  def __len__(self) -> int:
    return len(self._windows)

  def __getitem__(self, index: int) -> dict:
    return {TOKENS: self._windows[index]}


def fit_row(prompt: list[int], answer: list[int], seq_len: int, overlong: str) -> tuple[list[int] | None, str]:
  """(ids, "fits" | "truncated" | "dropped") for one example. Truncation keeps the prompt and cuts the answer; a
  prompt that fills the row leaves nothing to learn, so that row is dropped either way."""
  ids = prompt + answer
  if len(ids) <= seq_len:
    return ids, "fits"
  if overlong == "truncate" and len(prompt) < seq_len:
    return ids[:seq_len], "truncated"
  return None, "dropped"


class Rows:
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
    return {TOKENS: tokens, PROMPT_LENGTH: self._prompt_lengths[index]}


@functools.lru_cache(maxsize=4)
def sft_rows(corpus: Corpus, tokenizer) -> tuple[dict[str, Rows], dict[str, int]]:
  """The SFT rows of each split and the counts the trainer reports (rows, truncated, dropped)."""
  rows = {name: ([], []) for name in SPLITS}
  stats = {f"{name}_{what}": 0 for name in SPLITS for what in ("conversations", "rows", "truncated", "dropped")}
  for messages in conversations(corpus):
    split = "val" if is_validation(conversation_key(messages), corpus.val_fraction) else "train"
    prompt, answer = tokenizer.chat_prompt_and_answer(messages)
    ids, status = fit_row(list(prompt), list(answer), corpus.seq_len, corpus.overlong)
    stats[f"{split}_conversations"] += 1
    if status != "fits":
      stats[f"{split}_{status}"] += 1
    if ids is not None:
      rows[split][0].append(ids)
      rows[split][1].append(len(prompt))
  stats.update({f"{name}_rows": len(rows[name][0]) for name in SPLITS})
  return {name: Rows(*rows[name], corpus.seq_len, tokenizer.eos_id) for name in SPLITS}, stats


def too_small_message(corpus: Corpus, split: str, n_tokens: int) -> str:
  return (f"the {split} split of data.source={corpus.source} has {n_tokens} tokens, fewer than one window of "
          f"data.seq_len={corpus.seq_len}; lower data.seq_len or add data")
