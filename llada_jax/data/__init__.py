"""Input pipelines: corpora → fixed-length token windows (pre-training) or padded chat rows (SFT) → Grain iterators.

Pre-training: documents (the built-in Shakespeare, text files, JSONL, ArrayRecord shards made by `prepare_data`, or
streamed Parquet/JSONL/ArrayRecord files) are tokenized, joined with one EOS after each, and cut into `seq_len`
windows. SFT: each conversation becomes
`prompt + answer + EOS`, right-padded with EOS (docs/design.md §4), with its prompt length.

  sources.py        which corpus a `DataConfig` names; its documents or conversations; the validation split
  run_tokenizer.py  the run's tokenizer (named, stored with prepared data, or the cached built-in BPE)
  packing.py        windows and SFT rows as random-access sources; the batch element's keys
  prepared.py       ArrayRecord shards: `prepare_data` and reading them back
  streaming.py      raw corpora read per host while training (`data.source=stream`): units, mixtures, workers
  pipeline.py       the Grain iterators the trainer calls, the summary's counts, the sample prompt
"""

from llada_jax.data.packing import PROMPT_LENGTH, TOKENS, WindowPacker, fit_row
from llada_jax.data.pipeline import data_stats, make_eval_iterator, make_train_iterator, sample_prompt
from llada_jax.data.prepared import prepare_data, read_manifest
from llada_jax.data.run_tokenizer import builtin_tokenizer, cache_dir, make_tokenizer, tokenizer_info
from llada_jax.data.sources import (builtin_documents, chatterbot_pairs, corpus_of, documents, is_validation,
                                    resolve_paths, split_documents, split_scenes, strip_markdown)

__all__ = ["PROMPT_LENGTH", "TOKENS", "WindowPacker", "builtin_documents", "builtin_tokenizer", "cache_dir",
           "chatterbot_pairs", "corpus_of", "data_stats", "documents", "fit_row", "is_validation",
           "make_eval_iterator", "make_tokenizer", "make_train_iterator", "prepare_data", "read_manifest",
           "resolve_paths", "sample_prompt", "split_documents", "split_scenes", "strip_markdown", "tokenizer_info"]
