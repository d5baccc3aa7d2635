"""The run's tokenizer: the one named by data.tokenizer, the one stored with prepared data, or the built-in
byte-level BPE trained on the corpus once and cached."""

import dataclasses
import hashlib
import os

import numpy as np

from llada_jax.config import SFT_SOURCES, DataConfig
from llada_jax.data.sources import Corpus, corpus_of, split_documents
from llada_jax.errors import UserError

_TOKENIZER_PROBE = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer 0123456789"


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
  if data_cfg.source == "stream":
    raise UserError("data.source=stream needs data.tokenizer (a tokenizer.json, a sentencepiece .model, or a "
                    "directory holding one, e.g. an HF LLaDA checkpoint's): a streamed corpus is not read whole to "
                    "train one; `llada-jax tokenizer train --input SAMPLE.txt --out DIR` trains one on a sample")
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
