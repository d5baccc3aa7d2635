"""The PyTorch remote code an HF export carries (configuration_llada.py, modeling_llada.py), written for llada-jax
from the LLaDA paper (arXiv 2502.09992) and docs/design.md in the llada-jax repository. `transformers` loads an
export with `trust_remote_code=True`; the tests use the same network as the PyTorch oracle the JAX model is checked
against."""
