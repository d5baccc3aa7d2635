"""The PyTorch remote code an HF export carries (configuration_llada.py, modeling_llada.py), written for llada-jax
from LLADA_SPEC. `transformers` loads an export with `trust_remote_code=True`; the tests use the same network as
the PyTorch oracle the JAX model is checked against."""
