"""Weights to and from the official PyTorch / Hugging Face format (docs/design.md §2), streaming.

One table (`_BLOCK_TENSORS`, `_TOP_TENSORS`) names each tensor on both sides with its transform. Safetensors files
are memory-mapped and read one tensor at a time, and written one tensor at a time, so converting holds about one
copy of the model in the target dtype. Round trips in the same dtype are bit-exact: transforms only transpose
and reshape.
"""

import json
import os
import re
import shutil
import struct
from typing import Any, Callable, Iterator

import ml_dtypes
import numpy as np
from tqdm import tqdm

from llada_jax import checkpoint, paths
from llada_jax.config import DTYPES, ModelConfig
from llada_jax.hf_config import from_hf_config, to_hf_config
from llada_jax.errors import UserError
from llada_jax.sampler import SamplingConfig

PREFIX = "model.transformer."
_ST_DTYPES = {"F32": np.dtype(np.float32), "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16),
              "F64": np.dtype(np.float64)}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def _linear_in(c: ModelConfig, w: np.ndarray) -> np.ndarray:  # torch [out, in] → ours [in, out]
  return w.T


def _heads_in(n_heads: Callable[[ModelConfig], int]):
  def convert(c: ModelConfig, w: np.ndarray) -> np.ndarray:  # [heads·hd, embed] → [embed, heads, hd]
    return w.T.reshape(c.d_model, n_heads(c), c.head_dim)
  return convert


def _heads_out(n_heads: Callable[[ModelConfig], int]):
  def convert(c: ModelConfig, w: np.ndarray) -> np.ndarray:  # [embed, heads, hd] → [heads·hd, embed]
    return w.reshape(c.d_model, n_heads(c) * c.head_dim).T
  return convert


def _attn_out_in(c: ModelConfig, w: np.ndarray) -> np.ndarray:  # [embed, heads·hd] → [heads, hd, embed]
  return w.T.reshape(c.n_heads, c.head_dim, c.d_model)


def _attn_out_out(c: ModelConfig, w: np.ndarray) -> np.ndarray:
  return w.reshape(c.n_heads * c.head_dim, c.d_model).T


def _same(c: ModelConfig, w: np.ndarray) -> np.ndarray:
  return w


_Q_HEADS, _KV_HEADS = (lambda c: c.n_heads), (lambda c: c.n_kv_heads)
# our name: (HF name suffix, HF → ours, ours → HF, HF shape)
_BLOCK_TENSORS: dict[str, tuple[str, Callable, Callable, Callable]] = {
    "attn_norm": ("attn_norm", _same, _same, lambda c: (c.d_model,)),
    "q_proj": ("q_proj", _heads_in(_Q_HEADS), _heads_out(_Q_HEADS), lambda c: (c.n_heads * c.head_dim, c.d_model)),
    "k_proj": ("k_proj", _heads_in(_KV_HEADS), _heads_out(_KV_HEADS),
               lambda c: (c.n_kv_heads * c.head_dim, c.d_model)),
    "v_proj": ("v_proj", _heads_in(_KV_HEADS), _heads_out(_KV_HEADS),
               lambda c: (c.n_kv_heads * c.head_dim, c.d_model)),
    "attn_out": ("attn_out", _attn_out_in, _attn_out_out, lambda c: (c.d_model, c.n_heads * c.head_dim)),
    "ff_norm": ("ff_norm", _same, _same, lambda c: (c.d_model,)),
    "ff_proj": ("ff_proj", _linear_in, _linear_in, lambda c: (c.mlp_hidden_size, c.d_model)),
    "up_proj": ("up_proj", _linear_in, _linear_in, lambda c: (c.mlp_hidden_size, c.d_model)),
    "ff_out": ("ff_out", _linear_in, _linear_in, lambda c: (c.d_model, c.mlp_hidden_size)),
}
_TOP_TENSORS: dict[str, tuple[str, Callable, Callable, Callable]] = {
    "wte": ("wte", _same, _same, lambda c: (c.embedding_size, c.d_model)),
    "ln_f": ("ln_f", _same, _same, lambda c: (c.d_model,)),
    "ff_out": ("ff_out", _linear_in, _linear_in, lambda c: (c.embedding_size, c.d_model)),
}


def tensor_table(config: ModelConfig) -> list[tuple[tuple[str, ...], str, Callable, Callable, Callable]]:
  """(our on-disk path, HF name, HF → ours, ours → HF, HF shape) for every tensor, in the official order."""
  rows = [(("wte",), PREFIX + "wte.weight") + _TOP_TENSORS["wte"][1:]]
  for i in range(config.n_layers):
    for ours, (hf, to_ours, to_hf, shape) in _BLOCK_TENSORS.items():
      rows.append((("blocks", str(i), ours), f"{PREFIX}blocks.{i}.{hf}.weight", to_ours, to_hf, shape))
  rows.append((("ln_f",), PREFIX + "ln_f.weight") + _TOP_TENSORS["ln_f"][1:])
  if not config.weight_tying:
    rows.append((("ff_out",), PREFIX + "ff_out.weight") + _TOP_TENSORS["ff_out"][1:])
  return rows


# ---- Reading a Hugging Face directory ----

class _SafetensorsFile:
  """A .safetensors file: the header at open, each tensor read from disk into its own buffer when asked for.

  Plain reads rather than a memory map: mapped pages would stay resident (and counted) until the whole file is
  closed, so converting would hold the source and the converted copy at once.
  """

  def __init__(self, path: str):
    try:
      with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
      raise UserError(f"{path} is not a readable safetensors file ({e}); re-download or re-export it") from None
    header.pop("__metadata__", None)
    self.path, self.header, self.data_start = path, header, 8 + header_len
    self.size = os.path.getsize(path)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.header[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    if info["dtype"] not in _ST_DTYPES:
      raise UserError(f"{self.path}: tensor {name} has dtype {info['dtype']}, which llada-jax cannot read")
    begin, end = info["data_offsets"]
    if self.data_start + end > self.size:
      raise UserError(f"{self.path} is truncated (tensor {name}); re-download or re-export it")
    raw = np.fromfile(self.path, dtype=np.uint8, count=end - begin, offset=self.data_start + begin)
    return raw.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])


class HFReader:
  """Tensors of an HF checkpoint directory by name: sharded/single safetensors, or PyTorch .bin files."""

  def __init__(self, hf_dir: str):
    self.hf_dir = hf_dir
    self._sources: dict[str, Any] = {}
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    single = os.path.join(hf_dir, "model.safetensors")
    bins = sorted(f for f in os.listdir(hf_dir) if re.fullmatch(r"pytorch_model.*\.bin", f))
    if os.path.isfile(index):
      with open(index) as f:
        weight_map = json.load(f).get("weight_map", {})
      files = {}
      for shard in sorted(set(weight_map.values())):
        path = os.path.join(hf_dir, shard)
        if not os.path.isfile(path):
          raise UserError(f"shard {shard} listed in model.safetensors.index.json is missing from {hf_dir}")
        files[shard] = _SafetensorsFile(path)
      self._sources = {name: files[shard] for name, shard in weight_map.items()}
    elif os.path.isfile(single):
      st = _SafetensorsFile(single)
      self._sources = {name: st for name in st.header}
    elif bins:
      for b in bins:
        state = _load_torch_bin(os.path.join(hf_dir, b))
        self._sources.update({name: state for name in state})
    else:
      raise UserError(f"{hf_dir} has no weights (model.safetensors, model.safetensors.index.json or "
                      "pytorch_model*.bin)")

  def names(self) -> set[str]:
    return set(self._sources)

  def get(self, name: str) -> np.ndarray:
    source = self._sources[name]
    if isinstance(source, _SafetensorsFile):
      return source.get(name)
    return _torch_to_numpy(source[name])

  def shape(self, name: str) -> tuple[int, ...]:
    source = self._sources[name]
    return source.shape(name) if isinstance(source, _SafetensorsFile) else tuple(source[name].shape)

  def dtype(self, name: str) -> np.dtype:
    source = self._sources[name]
    if isinstance(source, _SafetensorsFile):
      return _ST_DTYPES.get(source.header[name]["dtype"], np.dtype(np.uint8))
    return _torch_to_numpy(source[name].flatten()[:1]).dtype


def _load_torch_bin(path: str) -> dict[str, Any]:
  try:
    import torch
  except ImportError:
    raise UserError("reading pytorch_model*.bin needs PyTorch: pip install 'llada-jax[torch]'") from None
  try:
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
  except Exception as e:  # torch raises many types for a bad file
    raise UserError(f"{path} is not a readable PyTorch checkpoint ({e})") from None


def _torch_to_numpy(t) -> np.ndarray:
  import torch
  if t.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  if not os.path.isdir(hf_dir):
    raise UserError(f"{hf_dir} is not a directory")
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{hf_dir} is not an LLaDA checkpoint: it has no config.json")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e})") from None


def _target_dtype(name: str | None, fallback: np.dtype) -> np.dtype:
  if name is None:
    return fallback
  if name not in DTYPES:
    raise UserError(f"--dtype {name!r} is not supported; use one of {', '.join(DTYPES)}")
  return DTYPES[name]


def _cast(w: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
  if w.dtype == dtype:
    return w
  with np.errstate(over="ignore"):
    out = w.astype(dtype)
  if np.isfinite(w).all() and not np.isfinite(out).all():
    raise UserError(f"{name} overflows {dtype.name}: this dtype cannot hold the weights; choose bfloat16 or "
                    "float32")
  return out


def load_hf(hf_dir: str, dtype: str | None = None, progress: bool = False) -> tuple[ModelConfig, dict[str, Any]]:
  """(config, on-disk-layout params as host numpy arrays) from an HF directory, one tensor at a time (a progress bar
  on stderr with `progress`)."""
  hf_config = read_hf_config(hf_dir)
  config = from_hf_config(hf_config)
  reader = HFReader(hf_dir)
  table = tensor_table(config)
  expected = {row[1] for row in table}
  names = reader.names()
  missing, extra = sorted(expected - names), sorted(names - expected)
  if missing:
    raise UserError(f"{hf_dir} lacks {len(missing)} tensor(s) its config.json requires, e.g. {missing[0]}")
  if extra:
    raise UserError(f"{hf_dir} has {len(extra)} tensor(s) an LLaDA model with this config.json does not have, "
                    f"e.g. {extra[0]}; refusing to drop weights silently")
  for _, name, _, _, shape in table:
    got = reader.shape(name)
    if got != shape(config):
      raise UserError(f"tensor {name} has shape {got} but config.json implies {shape(config)}")
  source_dtype = reader.dtype(table[0][1])
  target = _target_dtype(dtype, source_dtype)
  layered: dict[str, Any] = {}
  for path, name, to_ours, _, _ in tqdm(table, desc="reading tensors", unit="tensor", disable=not progress):
    node = layered
    for key in path[:-1]:
      node = node.setdefault(key, {})
    # ascontiguousarray materialises the transposed view in the target dtype: one tensor in flight at a time.
    node[path[-1]] = np.ascontiguousarray(to_ours(config, _cast(reader.get(name), target, name)))
  return config.replace(param_dtype=_dtype_name(target)), layered


def _dtype_name(dtype: np.dtype) -> str:
  return {v: k for k, v in DTYPES.items()}[np.dtype(dtype)]


def hf_tensors(layered: dict[str, Any], config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, torch-layout array) for every tensor, produced one at a time."""
  for path, name, _, to_hf, _ in tensor_table(config):
    node = layered
    for key in path:
      node = node[key]
    yield name, np.ascontiguousarray(to_hf(config, np.asarray(node)))


# ---- Writing a Hugging Face directory ----

def parse_size(text: str) -> int:
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, re.IGNORECASE)
  if not match:
    raise UserError(f"--max-shard-size {text!r} is not a size like 5GB, 500MB or 2GiB")
  units = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
  return int(float(match.group(1)) * units[(match.group(2) or "B").upper()])


def _plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
  shards: list[list[str]] = [[]]
  used = 0
  for name, size in sizes:
    if shards[-1] and used + size > max_bytes:
      shards.append([])
      used = 0
    shards[-1].append(name)
    used += size
  return shards


def _write_safetensors(path: str, tensors: Iterator[tuple[str, np.ndarray]], specs: dict[str, tuple]) -> None:
  """Writes the header from `specs` (name → (dtype, shape)), then streams tensor bytes in header order."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, (dtype, shape) in specs.items():
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # 8-byte aligned data, as the reference writer does
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, array in tensors:
      f.write(array.tobytes())


def save_hf(layered: dict[str, Any], config: ModelConfig, out_dir: str, max_shard_size: str = "5GB",
            overwrite: bool = False, *, tokenizer=None, sampling: SamplingConfig | None = None,
            progress: bool = False) -> list[str]:
  """Writes an HF directory that `transformers` and the official code load: config.json, generation_config.json
  (with `sampling` as our defaults), sharded safetensors and their index, our remote code (`REMOTE_CODE`, which
  config.json's auto_map names) and, given one, the tokenizer (tokenizer.json + tokenizer_config.json). Returns the
  shard names."""
  max_bytes = parse_size(max_shard_size)
  table = tensor_table(config)
  specs = {}
  for path, name, _, _, shape in table:
    node = layered
    for key in path:
      node = node[key]
    specs[name] = (np.dtype(node.dtype), shape(config))
  sizes = [(n, int(np.prod(s, dtype=np.int64)) * d.itemsize) for n, (d, s) in specs.items()]
  shards = _plan_shards(sizes, max_bytes)
  files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  with checkpoint.atomic_output_dir(out_dir, overwrite) as tmp:
    bar = tqdm(total=len(table), desc="writing tensors", unit="tensor", disable=not progress)
    tensors = hf_tensors(layered, config)
    for file, names in zip(files, shards):
      _write_safetensors(os.path.join(tmp, file), (next(tensors) for _ in names), {n: specs[n] for n in names})
      bar.update(len(names))
    bar.close()
    weight_map = {n: f for f, names in zip(files, shards) for n in names}
    _write_json(os.path.join(tmp, "model.safetensors.index.json"),
                {"metadata": {"total_size": sum(s for _, s in sizes)}, "weight_map": weight_map})
    _write_json(os.path.join(tmp, "config.json"), to_hf_config(config))
    _write_json(os.path.join(tmp, checkpoint.GENERATION_CONFIG),
                generation_config(config, sampling or SamplingConfig()))
    for name in REMOTE_CODE:
      shutil.copyfile(os.path.join(_REMOTE_CODE_DIR, name), os.path.join(tmp, name))
    if tokenizer is not None:
      tokenizer.save(tmp)
  return files


# ---- Files beside the weights ----

REMOTE_CODE = ("configuration_llada.py", "modeling_llada.py")  # the modules config.json's auto_map names
_REMOTE_CODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_remote")
_SAMPLING_KEY = "llada_sampling"  # our defaults inside generation_config.json, apart from transformers' own keys
_SAMPLING_FIELDS = ("steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking")


def generation_config(config: ModelConfig, sampling: SamplingConfig) -> dict[str, Any]:
  """generation_config.json: the special ids transformers reads, and the sampling defaults we read back."""
  return {"_from_model_config": True, "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
          "pad_token_id": config.pad_token_id, "mask_token_id": config.mask_token_id,
          _SAMPLING_KEY: {name: getattr(sampling, name) for name in _SAMPLING_FIELDS}}


def read_sampling_defaults(directory: str) -> SamplingConfig | None:
  """The sampling defaults in the generation_config.json kept with a checkpoint (`checkpoint.companion_dirs`);
  None where there is none or it holds none."""
  candidates = (paths.path(d, checkpoint.GENERATION_CONFIG) for d in checkpoint.companion_dirs(directory))
  path = next((p for p in candidates if p.is_file()), None)
  if path is None:
    return None
  try:
    stored = json.loads(path.read_text()).get(_SAMPLING_KEY)
  except (ValueError, AttributeError) as e:
    raise UserError(f"{path} is not a JSON object ({e}); fix or delete it") from None
  if stored is None:
    return None
  unknown = sorted(set(stored) - set(_SAMPLING_FIELDS))
  if unknown:
    raise UserError(f"{path}: {_SAMPLING_KEY} has unknown key(s) {', '.join(unknown)}; it may hold "
                    f"{', '.join(_SAMPLING_FIELDS)}")
  try:
    return SamplingConfig(**stored)
  except UserError as e:
    raise UserError(f"{path}: {_SAMPLING_KEY} is not a valid sampling setting ({e})") from None


def kept_files(hf_dir: str) -> list[str]:
  """What hf-to-jax carries from an HF directory besides the weights: the tokenizer files, generation_config.json
  and any remote code (*.py), byte for byte."""
  from llada_jax.tokenizer import tokenizer_files
  extra = [os.path.join(hf_dir, name) for name in sorted(os.listdir(hf_dir))
           if name == checkpoint.GENERATION_CONFIG or name.endswith(".py")]
  return tokenizer_files(hf_dir) + [p for p in extra if os.path.isfile(p)]


def _write_json(path: str, value: Any) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=2)
    f.write("\n")


# ---- The two CLI conversions ----

def hf_to_jax(hf_dir: str, out_dir: str, dtype: str | None = None, overwrite: bool = False,
              progress: bool = False) -> tuple[ModelConfig, list[str]]:
  """An HF directory (or a model id in the local HF cache) → a params checkpoint, keeping its tokenizer,
  generation config and remote code (`kept_files`). Returns (config, the kept files' names)."""
  checkpoint.check_output_dir(out_dir, overwrite)  # before reading gigabytes
  hf_dir = paths.resolve_model(hf_dir)
  config, layered = load_hf(hf_dir, dtype, progress)
  kept = kept_files(hf_dir)
  checkpoint.save_params(out_dir, layered, config, overwrite=overwrite, extra_files=kept)
  return config, [os.path.basename(p) for p in kept]


def jax_to_hf(ckpt_dir: str, out_dir: str, max_shard_size: str = "5GB", dtype: str | None = None,
              overwrite: bool = False, tokenizer_path: str | None = None, progress: bool = False):
  """A checkpoint (params, workdir or step) → an HF directory (`save_hf`), with the tokenizer saved with the
  checkpoint (or `tokenizer_path`) and the sampling defaults of its generation_config.json. Returns (shard names,
  the tokenizer's path or None)."""
  from llada_jax.tokenizer import load_tokenizer
  parse_size(max_shard_size)  # fail on a bad size before reading gigabytes
  _target_dtype(dtype, np.dtype(np.float32))
  tokenizer_path = tokenizer_path or checkpoint.find_tokenizer(ckpt_dir)
  tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else None
  sampling = read_sampling_defaults(ckpt_dir)
  config, layered, _ = checkpoint.load_layered(ckpt_dir, dtype=dtype, as_numpy=True)
  if tokenizer is not None and tokenizer.mask_id != config.mask_token_id:
    raise UserError(f"the tokenizer {tokenizer_path} has mask id {tokenizer.mask_id}, the model "
                    f"{config.mask_token_id}: it does not belong to this model; pass the right --tokenizer")
  if dtype:
    config = config.replace(param_dtype=dtype)
  files = save_hf(layered, config, out_dir, max_shard_size, overwrite, tokenizer=tokenizer, sampling=sampling,
                  progress=progress)
  return files, tokenizer_path
