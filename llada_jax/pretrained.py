"""`load_pretrained`: the object a Hugging Face user expects, over our functional model."""

import contextlib
import dataclasses
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import checkpoint, convert, likelihood, paths, sampler
from llada_jax import model as model_lib
from llada_jax.config import ModelConfig
from llada_jax.errors import UserError


@functools.partial(jax.jit, static_argnames="config")
def _logits(params, tokens, attention_mask, config):
  return model_lib.apply(params, tokens, attention_mask, config=config)


class LLaDAModel:
  """A loaded model: `.config`, `.params` (stacked pytree of jax arrays), `.logits(...)`, `.generate(...)`,
  `.save_pretrained(...)`; `.stored_sampling`, the sampling defaults stored with the weights (generation_config.json)
  or None, and `.sampling`, those or SamplingConfig()'s."""

  def __init__(self, config: ModelConfig, params, mesh=None,
               stored_sampling: "sampler.SamplingConfig | None" = None):
    self.config, self.params, self.mesh = config, params, mesh
    self.stored_sampling = stored_sampling
    self.sampling = sampler.SamplingConfig() if stored_sampling is None else stored_sampling

  def sampling_with(self, sampling: "sampler.SamplingConfig | None" = None, **options) -> "sampler.SamplingConfig":
    """`sampling` if given, else the model's defaults with `options` (SamplingConfig fields) replaced."""
    if sampling is not None:
      if options:
        raise TypeError("pass either sampling= or SamplingConfig fields as keywords, not both")
      return sampling
    return dataclasses.replace(self.sampling, **options)

  def _mesh_context(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def check_tokens(self, tokens, attention_mask=None) -> tuple[jax.Array, jax.Array | None]:
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
      tokens = tokens[None]
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
      raise UserError(f"tokens must be integer ids of shape [batch, length], got {tokens.dtype} {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.embedding_size):
      raise UserError(f"token ids must lie in [0, {self.config.embedding_size}); got {tokens.min()}..{tokens.max()}"
                      " — was the text encoded with this model's tokenizer?")
    if attention_mask is not None:
      attention_mask = np.asarray(attention_mask)
      if attention_mask.ndim == 1:
        attention_mask = attention_mask[None]
      if attention_mask.shape != tokens.shape:
        raise UserError(f"attention_mask shape {attention_mask.shape} differs from tokens shape {tokens.shape}")
      attention_mask = jnp.asarray(attention_mask, jnp.int32)
    return jnp.asarray(tokens, jnp.int32), attention_mask

  def logits(self, tokens, attention_mask=None) -> jax.Array:
    """Logits [batch, length, embedding_size]; `attention_mask` (1 = real token) masks padded keys."""
    tokens, attention_mask = self.check_tokens(tokens, attention_mask)
    with self._mesh_context():
      return _logits(self.params, tokens, attention_mask, self.config)

  def generate(self, prompt, attention_mask=None, sampling: "sampler.SamplingConfig | None" = None, *, rng=None,
               return_history: bool = False, **options) -> "sampler.GenerateOutput":
    """The reverse sampler (`llada_jax.sampler.generate`): a `SamplingConfig`, or fields replacing the model's
    defaults as keywords."""
    prompt, attention_mask = self.check_tokens(prompt, attention_mask)
    with self._mesh_context():
      return sampler.generate(self.params, prompt, attention_mask, config=self.config,
                              sampling=self.sampling_with(sampling, **options), rng=rng,
                              return_history=return_history)

  def generate_blocks(self, prompt, attention_mask=None, sampling: "sampler.SamplingConfig | None" = None, *,
                      rng=None) -> "Iterator[sampler.BlockUpdate]":
    """`generate`, yielding the canvas as each block becomes final (`llada_jax.sampler.generate_blocks`)."""
    prompt, attention_mask = self.check_tokens(prompt, attention_mask)
    with self._mesh_context():
      yield from sampler.generate_blocks(self.params, prompt, attention_mask, config=self.config,
                                         sampling=self.sampling_with(sampling), rng=rng)

  def log_likelihood(self, prompt, answer, *, mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0,
                     mask_id: int | None = None, rng=None) -> float:
    """Monte-Carlo estimate of log p(answer | prompt) in nats (`llada_jax.likelihood.log_likelihood`)."""
    prompt, _ = self.check_tokens(np.asarray(prompt, np.int64))
    answer, _ = self.check_tokens(np.asarray(answer, np.int64))
    with self._mesh_context():
      return likelihood.log_likelihood(self.params, prompt, answer, config=self.config, mc_num=mc_num,
                                       batch_size=batch_size, cfg_scale=cfg_scale, mask_id=mask_id, rng=rng)

  def log_likelihoods(self, pairs, *, rngs, mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0,
                      mask_id: int | None = None, pairs_per_call: int = 4, progress=None) -> np.ndarray:
    """`log_likelihood` of many (prompt, answer) pairs, several per jitted call, pair i with key rngs[i]
    (`llada_jax.likelihood.log_likelihoods`)."""
    pairs = [tuple(self.check_tokens(np.asarray(part, np.int64))[0] for part in pair) for pair in pairs]
    with self._mesh_context():
      return likelihood.log_likelihoods(self.params, pairs, config=self.config, rngs=rngs, mc_num=mc_num,
                                        batch_size=batch_size, cfg_scale=cfg_scale, mask_id=mask_id,
                                        pairs_per_call=pairs_per_call, progress=progress)

  def save_pretrained(self, out_dir: str, format: str = "hf", max_shard_size: str = "5GB",
                      overwrite: bool = False, tokenizer=None) -> None:
    """`format="hf"`: what `transformers` loads (`convert.save_hf`: config, sharded safetensors, remote code, the
    sampling defaults and `tokenizer`); `format="jax"`: our Orbax params checkpoint (with `tokenizer`)."""
    if format not in ("hf", "jax"):
      raise UserError(f"format must be 'hf' or 'jax', got {format!r}")
    host = jax.tree.map(np.asarray, checkpoint.to_layered(self.params, self.config.n_layers))
    if format == "hf":
      convert.save_hf(host, self.config, out_dir, max_shard_size, overwrite, tokenizer=tokenizer,
                      sampling=self.sampling)
    else:
      checkpoint.save_params(out_dir, host, self.config, overwrite)
      if tokenizer is not None:
        tokenizer.save(out_dir)


def load_pretrained(path: str, dtype: str | None = None, mesh=None, attention_impl: str = "auto") -> LLaDAModel:
  """Loads an HF LLaDA directory (config.json + weights), a llada-jax params checkpoint, a training workdir (its
  latest checkpoint) or one step directory of it.

  `dtype` casts the parameters (float32 / bfloat16 / float16); `mesh` shards them by the logical-axis rules;
  `attention_impl` picks the attention kernel (auto, xla, cudnn, splash: `llada_jax.ops`). A Hugging Face model id
  is looked up in the local HF cache (`paths.existing_model`).
  """
  path = paths.existing_model(path)
  if not paths.path(path).is_dir():
    raise UserError(f"{path} is not a directory")
  if not paths.path(path, "config.json").is_file():  # HF directories are read locally (memory-mapped safetensors)
    config, params = checkpoint.restore_params(path, dtype=dtype, mesh=mesh)
  else:
    config, layered = convert.load_hf(path, dtype)
    placement = checkpoint.layered_abstract(config, mesh=mesh)
    layered = jax.tree.map(lambda a, p: jax.device_put(a, p.sharding), layered, placement)
    params = checkpoint.stack_on_device(layered, config, mesh)
  config = config.replace(attention_impl=attention_impl)  # how to run is the caller's choice, not the file's
  if dtype:  # computing in the dtype the user asked for, as torch's model.to(dtype) does
    config = config.replace(dtype=dtype)
  return LLaDAModel(config, params, mesh, convert.read_sampling_defaults(path))


def load_tokenizer_for(path: str, tokenizer_path: str | None = None):
  """The tokenizer of a checkpoint: `tokenizer_path`, or the one saved with the run / HF directory."""
  from llada_jax.tokenizer import load_tokenizer
  found = tokenizer_path or checkpoint.find_tokenizer(paths.existing_model(path))
  if found is None:
    raise UserError(f"no tokenizer found with {path}; pass --tokenizer (a tokenizer.json or sentencepiece .model)")
  return load_tokenizer(found)


def load_for_inference(path: str, tokenizer_path: str | None = None, dtype: str | None = None, mesh=None,
                       tokenizer=None):
  """(model, tokenizer) for the CLI: the tokenizer is `tokenizer` (already loaded), --tokenizer, or the one saved
  with the run / HF directory; `mesh` shards the parameters and the work (`load_pretrained`)."""
  tokenizer = tokenizer or load_tokenizer_for(path, tokenizer_path)
  model = load_pretrained(path, dtype=dtype, mesh=mesh)
  if tokenizer.mask_id != model.config.mask_token_id:
    raise UserError(f"the tokenizer's mask id {tokenizer.mask_id} differs from the model's "
                    f"{model.config.mask_token_id}: this tokenizer does not belong to this model")
  return model, tokenizer
