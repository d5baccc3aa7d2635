"""The Grain pipelines the trainer calls: a global shuffle from the seed, endless epochs (each reshuffled),
per-process batches, a strided slice of them, prefetch.

Every process shuffles the same global order and takes its contiguous share of each global batch, so an optimizer
step sees the same `global_batch` consecutive elements, in the same rows, whatever the number of processes, and the
processes never overlap. The iterators are Grain `DatasetIterator`s: their JSON `get_state()`/`set_state()` go into
the training checkpoint, and a resumed run reads exactly the batches it would have read. In-memory sources are
tokenized once per process and cached.
"""

import hashlib
import os

import grain

from llada_jax.config import OBJECTIVES, SFT_SOURCES, DataConfig, source_problem
from llada_jax.data import streaming
from llada_jax.data.packing import Windows, packed_windows, sft_rows, too_small_message
from llada_jax.data.prepared import prepared_windows, read_manifest
from llada_jax.data.sources import (SPLITS, Corpus, conversation_key, conversations, corpus_of, documents,
                                    first_preferring_val, prompt_line)
from llada_jax.errors import UserError

_EVAL_SHUFFLE_SEED = 0


def per_process_batch(data_cfg: DataConfig, process_count: int) -> int:
  if data_cfg.global_batch % process_count:
    raise UserError(f"data.global_batch={data_cfg.global_batch} must be a positive multiple of the "
                    f"{process_count} processes")
  return data_cfg.global_batch // process_count


def _examples(data_cfg: DataConfig, tokenizer, objective: str, split: str):
  """The random-access source of one split's examples for this objective."""
  corpus = corpus_of(data_cfg)
  _check_objective(objective, corpus.source)
  if corpus.source == "array_record":
    examples = prepared_windows(corpus, tokenizer, split)
  elif corpus.source in SFT_SOURCES:
    examples = sft_rows(corpus, tokenizer)[0][split]
  else:
    examples = Windows(packed_windows(corpus, tokenizer)[0][split])
  if not len(examples):
    raise UserError(_empty_split_message(corpus, split, data_stats(data_cfg, tokenizer)))
  return examples


def _check_objective(objective: str, source: str) -> None:
  if objective not in OBJECTIVES:
    raise UserError(f"train.objective={objective!r} is not one of {', '.join(OBJECTIVES)}")
  if problem := source_problem(objective, source):
    raise UserError(problem)


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
  return too_small_message(corpus, split, stats[f"{split}_tokens"])


def make_train_iterator(data_cfg: DataConfig, tokenizer, *, seed: int, process_index: int = 0, process_count: int = 1,
                        objective: str = "diffusion") -> grain.DatasetIterator:
  """This process's endless training batches: {"tokens": int32 [b, seq_len]} (+ "prompt_length": int32 [b] for SFT)
  with b = global_batch / process_count.

  Every epoch is a fresh permutation derived from `seed` (streams: see `streaming`); the iterator's
  get_state()/set_state() resume it exactly.
  """
  batch = per_process_batch(data_cfg, process_count)
  if data_cfg.source == "stream":
    _check_objective(objective, data_cfg.source)
    ds = streaming.train_dataset(data_cfg, tokenizer, seed=seed, process_index=process_index,
                                 process_count=process_count, batch=batch)
    it = iter(_read_ahead(ds, data_cfg.prefetch, data_cfg.num_workers))
    return streaming.Checked(it, streaming.fingerprint(data_cfg, tokenizer, seed, process_count))
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
  if data_cfg.source == "stream":
    _check_objective(objective, data_cfg.source)
    ds = streaming.val_dataset(data_cfg, tokenizer, process_index=process_index, process_count=process_count,
                               batch=batch)
    return iter(_read_ahead(ds, data_cfg.prefetch, 0))
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


def _read_ahead(ds: grain.MapDataset | grain.IterDataset, prefetch: int, num_workers: int) -> grain.IterDataset:
  """Batches read `prefetch` ahead by as many threads, in `num_workers` processes when > 0. Random-access sources
  form batches before the split across workers, so their sequence does not depend on num_workers; a stream's
  workers each read their own units, so its sequence does (and a resume checks it)."""
  if isinstance(ds, grain.MapDataset):
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch))
  elif prefetch and not num_workers:
    it = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
  else:
    it = ds
  if num_workers:
    _parse_absl_flags()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=max(prefetch, 1)),
                        worker_init_fn=_one_core_per_worker)
  return it


def _one_core_per_worker(worker_index: int, worker_count: int) -> None:
  """Workers are the parallelism: each runs on one core of those the process may use, worker i on the i-th (mod
  their number). Left alone, every worker would spread its interleaved readers' tokenization, Parquet decoding and
  HF tokenizers' own threads over all cores, and N workers would oversubscribe the host N times."""
  del worker_count
  if hasattr(os, "sched_setaffinity"):
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[worker_index % len(cores)]})
  os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _parse_absl_flags() -> None:
  """grain 0.2.18's mp_prefetch reads an absl flag, which raises unless absl flags were parsed (google/grain#1355,
  fixed in later releases); our CLI does not use absl.app, so take the flags' defaults as parsed."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def data_stats(data_cfg: DataConfig, tokenizer) -> dict[str, int]:
  """Counts per split for the run summary: documents/tokens/windows for pre-training; conversations, rows, and rows
  truncated or dropped as longer than seq_len for SFT. Free after the iterators are built (same caches)."""
  if data_cfg.source == "stream":
    return streaming.stats(data_cfg)
  corpus = corpus_of(data_cfg)
  if corpus.source == "array_record":
    splits = read_manifest(corpus.paths[0])["splits"]
    # "bytes" is absent from manifests written before it was counted
    return {f"{name}_{what}": splits[name][what] for name in SPLITS
            for what in ("documents", "tokens", "bytes", "windows") if what in splits[name]}
  if corpus.source in SFT_SOURCES:
    return dict(sft_rows(corpus, tokenizer)[1])
  return dict(packed_windows(corpus, tokenizer)[1])


def sample_prompt(data_cfg: DataConfig) -> str:
  """A prompt to show what a model learned: from the first validation document (the training split's when nothing is
  held out), its first line of three or more words — bare headings ("ACT IV") and speaker names give the model
  little to continue; for SFT sources the first user message."""
  if data_cfg.source == "stream":
    return prompt_line(streaming.first_document(data_cfg))
  corpus = corpus_of(data_cfg)
  if corpus.source == "array_record":
    return read_manifest(corpus.paths[0]).get("sample_prompt", "")
  if corpus.source in SFT_SOURCES:
    chosen = first_preferring_val(conversations(corpus), conversation_key, corpus.val_fraction)
    return next((m["content"] for m in chosen if m["role"] == "user"), chosen[0]["content"]) if chosen else ""
  return prompt_line(first_preferring_val(documents(corpus), str, corpus.val_fraction) or "")
