"""llada-jax: LLaDA masked-diffusion language models in JAX — model, conversion, training, sampling, evaluation."""

__version__ = "0.1.0"


def load_pretrained(path: str, dtype: str | None = None, mesh=None, attention_impl: str = "auto"):
  """Loads an HF LLaDA directory or a llada-jax checkpoint; see `llada_jax.pretrained.load_pretrained`."""
  from llada_jax.pretrained import load_pretrained as _load
  return _load(path, dtype=dtype, mesh=mesh, attention_impl=attention_impl)


def __getattr__(name: str):
  if name == "SamplingConfig":  # imported on first use: `import llada_jax` stays free of JAX
    from llada_jax.sampler import SamplingConfig
    return SamplingConfig
  raise AttributeError(f"module 'llada_jax' has no attribute {name!r}")
