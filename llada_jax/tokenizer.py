"""Tokenizers: one interface over a sentencepiece model and a Hugging Face tokenizer.json, plus LLaDA's chat layout.

The released LLaDA checkpoints ship a byte-level BPE `tokenizer.json`; our built-in tokenizer is a small sentencepiece
BPE trained on the corpus (`train_tokenizer`). Both expose the six special tokens of LLADA_SPEC §3 by name, so the
rest of llada-jax never cares which backend it holds. The built-in one reserves them at ids 1..6, the ids that
configs/tiny.py and configs/small.py bake in.
"""

import io
import os
import random
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import sentencepiece as spm
import tokenizers

from llada_jax import paths
from llada_jax.errors import UserError

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>")
ROLES = ("system", "user", "assistant")
MODEL_TYPES = ("bpe", "unigram")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # in a directory, the first one present wins

# Sentencepiece keeps every training sentence in memory and skips longer ones; long lines are cut into chunks of at
# most _CHUNK_CHARS characters (≤ 4 bytes each in UTF-8), and a corpus with more than max_sentences of them is
# reservoir-sampled down by us with a fixed seed: sentencepiece's own sampling is not reproducible across processes.
_CHUNK_CHARS = 2048
_MAX_SENTENCES = 1_000_000
_META_SPACE = "\u2581"  # what sentencepiece writes for a space; decodes back to a space


class Tokenizer:
  """Text ⇄ ids for one backend, with LLaDA's special ids and chat layout; get one from `load_tokenizer` or
  `train_tokenizer`.

  Attributes: `vocab_size` (ids are 0..vocab_size-1), `bos_id`, `eos_id`, `pad_id` (= eos_id: LLaDA pads with EOS),
  `mask_id`, `start_header_id`, `end_header_id`, `eot_id`.
  """

  vocab_size: int
  _filename: str  # what `save` writes

  def __init__(self, serialized: bytes, source: str):
    self._serialized = serialized
    self.source = source
    found = {token: self._token_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, i in found.items() if i is None]
    if missing:
      raise UserError(f"tokenizer {source} lacks the special token(s) {', '.join(missing)} that LLaDA needs "
                      f"({', '.join(SPECIAL_TOKENS)}); add them as special tokens to the tokenizer, or leave "
                      "data.tokenizer empty to train the built-in one")
    (self.bos_id, self.eos_id, self.mask_id, self.start_header_id, self.end_header_id,
     self.eot_id) = (found[token] for token in SPECIAL_TOKENS)
    self.pad_id = self.eos_id
    self._special_ids = frozenset(found.values())

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """The ids of `text`, without EOS and without BOS unless asked (base LLaDA prompts start with BOS);
    special-token strings inside the text become their ids."""
    return ([self.bos_id] if add_bos else []) + self._encode(text)

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    """The text of a 1-D sequence of ids (list, NumPy or JAX array). Nothing stops decoding; with
    skip_special_tokens=False the special tokens appear as their strings (masks as "<|mdm_mask|>"). Ids with no token
    (the padding rows of an embedding wider than the vocabulary) decode to nothing, as in Hugging Face tokenizers."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1:
      raise ValueError(f"decode takes one sequence of ids, got an array of shape {ids.shape}")
    kept = [i for i in ids.tolist()
            if 0 <= i < self.vocab_size and not (skip_special_tokens and i in self._special_ids)]
    return self._decode(kept, skip_special_tokens)

  def encode_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """LLADA_SPEC §3: `<BOS>` then `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>` per message,
    then (add_generation_prompt) `<|start_header_id|>assistant<|end_header_id|>\\n\\n`.

    The same ids as rendering the official template to a string and encoding it: the special tokens split the string,
    so "\\n\\n{content}" is one segment. Previous assistant turns end with <|eot_id|>, as the official template writes
    them (the answer's EOS is stripped for multi-turn chat).
    """
    ids = [self.bos_id]
    for message in _checked_messages(messages):
      ids += self._header(message["role"]) + self.encode("\n\n" + message["content"]) + [self.eot_id]
    if add_generation_prompt:
      ids += self._header("assistant") + self.encode("\n\n")
    return ids

  def chat_prompt_and_answer(self, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]:
    """(prompt, answer) ids of one SFT example whose last message is the assistant reply to learn.

    The prompt is every earlier message with the generation header (`encode_chat(messages[:-1])`); the answer is the
    reply followed by one EOS and no <|eot_id|>, as in LLADA_SPEC §3–4 ("prompt + answer + EOS…"): the SFT batch pads
    it further with EOS, all of which counts as answer, and the sampler then stops on EOS. The reply is encoded on
    its own, exactly the ids the sampler has to produce after that prompt.
    """
    messages = _checked_messages(messages)
    if not messages or messages[-1]["role"] != "assistant":
      raise UserError("an SFT example must end with the assistant message to learn; drop examples whose last "
                      "message is not {'role': 'assistant', ...}")
    return self.encode_chat(messages[:-1]), self.encode(messages[-1]["content"]) + [self.eos_id]

  def save(self, directory: str) -> str:
    """Writes the tokenizer, byte for byte as loaded, into `directory` as tokenizer.model or tokenizer.json; returns
    the path. Atomic, so a reader never sees half a file."""
    path = os.path.join(paths.absolute(directory), self._filename)
    # Atomic: several processes building the same cached tokenizer see either no file or a whole one.
    paths.write_atomically(path, self._serialized)
    return path

  def _header(self, role: str) -> list[int]:
    return [self.start_header_id] + self.encode(role) + [self.end_header_id]

  def _token_id(self, token: str) -> int | None:
    raise NotImplementedError

  def _encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    raise NotImplementedError


class _SentencePieceTokenizer(Tokenizer):
  _filename = "tokenizer.model"

  def __init__(self, serialized: bytes, source: str):
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=serialized)
    except RuntimeError as e:
      raise UserError(f"{source} is not a readable sentencepiece model ({e}); pass a sentencepiece .model file, an "
                      "HF tokenizer.json, or a directory holding one") from None
    self.vocab_size = self._sp.vocab_size()
    # A literal "▁" in the text would come back as a space; with byte fallback we spell it as its UTF-8 bytes.
    meta_bytes = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _META_SPACE.encode()]
    self._meta_bytes = meta_bytes if all(self._sp.is_byte(i) for i in meta_bytes) else None
    super().__init__(serialized, source)

  def _token_id(self, token):
    i = self._sp.piece_to_id(token)
    return i if self._sp.id_to_piece(i) == token else None

  def _encode(self, text):
    if self._meta_bytes is None or _META_SPACE not in text:
      return self._sp.encode(text)
    ids = []
    for k, part in enumerate(text.split(_META_SPACE)):
      ids += (self._meta_bytes if k else []) + self._sp.encode(part)
    return ids

  def _decode(self, ids, skip_special_tokens):
    return self._sp.decode(ids)


class _HFTokenizer(Tokenizer):
  _filename = "tokenizer.json"

  def __init__(self, serialized: bytes, source: str):
    try:
      self._tok = tokenizers.Tokenizer.from_str(serialized.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
      raise UserError(f"{source} is not a readable Hugging Face tokenizer.json ({e}); pass the tokenizer.json of an "
                      "HF checkpoint, a sentencepiece .model file, or a directory holding one") from None
    # Ids may be sparse (LLaDA's specials sit at 126080..126348), so the id range, not the token count.
    self.vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    super().__init__(serialized, source)

  def _token_id(self, token):
    return self._tok.token_to_id(token)

  def _encode(self, text):
    return self._tok.encode(text, add_special_tokens=False).ids

  def _decode(self, ids, skip_special_tokens):
    return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


def tokenizer_file(directory: str) -> str | None:
  """The tokenizer file a directory holds, by TOKENIZER_FILES' order (HF's tokenizer.json, with its added tokens,
  before a sentencepiece model), or None."""
  for name in TOKENIZER_FILES:
    if paths.path(directory, name).is_file():
      return os.path.join(directory, name)
  return None


def load_tokenizer(path: str) -> Tokenizer:
  """A sentencepiece .model file, an HF tokenizer.json, or a directory holding tokenizer.json (preferred) or
  tokenizer.model."""
  path = paths.absolute(path)
  if paths.path(path).is_dir():
    found = tokenizer_file(path)
    if found is None:
      raise UserError(f"{path} holds neither {' nor '.join(TOKENIZER_FILES)}; point data.tokenizer at the tokenizer "
                      "file itself, or leave it empty to train the built-in tokenizer")
    path = found
  try:
    serialized = paths.path(path).read_bytes()
  except OSError as e:
    raise UserError(f"cannot read tokenizer {path} ({e.strerror}); pass an existing sentencepiece .model file, HF "
                    "tokenizer.json, or a directory holding one") from None
  backend = _HFTokenizer if path.endswith(".json") else _SentencePieceTokenizer
  return backend(serialized, path)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_path: str, model_type: str = "bpe", *,
                    max_sentences: int = _MAX_SENTENCES) -> Tokenizer:
  """Trains the built-in sentencepiece tokenizer, writes it atomically to `out_path` and returns it.

  `texts` yields documents, or is a list/tuple of text file paths (read as UTF-8, bad bytes replaced). Corpora of
  more than `max_sentences` lines are sampled down to that many, deterministically.

  The model keeps text verbatim — no normalisation, no dummy prefix, spaces and newlines kept, byte fallback for any
  character it has no piece for — so decode(encode(s)) == s for every string. The six special tokens are
  user-defined symbols at ids 1..6 (unk = 0). Deterministic: the same texts give the same file bytes on any machine
  (one trainer thread; BPE training is a serial loop of merges anyway, seconds for 8k pieces on 5 MB).
  """
  if model_type not in MODEL_TYPES:
    raise UserError(f"tokenizer model_type={model_type!r} is not one of {', '.join(MODEL_TYPES)}")
  if isinstance(texts, str):
    raise TypeError("train_tokenizer takes an iterable of documents or a list of file paths, not one string")
  proto = io.BytesIO()
  spm.set_min_log_level(2)  # the trainer logs hundreds of INFO lines to stderr otherwise
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sample(_sentences(texts), max_sentences)), model_writer=proto,
        vocab_size=vocab_size, model_type=model_type, byte_fallback=True,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, user_defined_symbols=list(SPECIAL_TOKENS),
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, max_sentence_length=4 * _CHUNK_CHARS,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1)
  except RuntimeError as e:
    raise UserError(f"training the tokenizer failed: {e}; if the vocabulary is too large for the corpus, lower "
                    "data.tokenizer_vocab_size or give more text") from None
  tokenizer = _SentencePieceTokenizer(proto.getvalue(), out_path)
  ids = (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id, tokenizer.start_header_id,
         tokenizer.end_header_id, tokenizer.eot_id)
  assert ids == (1, 2, 2, 3, 4, 5, 6), f"built-in special ids came out as {ids}; configs/*.py expect 1,2,2,3,4,5,6"
  paths.write_atomically(out_path, proto.getvalue())
  return tokenizer


def _sentences(texts: Iterable[str]) -> Iterator[str]:
  """The training sentences: non-empty lines (newlines themselves are left to byte fallback), long ones chunked."""
  if _are_paths(texts):
    texts = _read_lines(texts)
  for text in texts:
    for line in text.split("\n"):
      for start in range(0, len(line), _CHUNK_CHARS):
        yield line[start:start + _CHUNK_CHARS]


def _are_paths(texts) -> bool:
  """A list of one-line strings of which at least one names a file is a list of paths (so a missing one is reported,
  not trained on as text); anything else holds documents."""
  return (isinstance(texts, (list, tuple)) and all(isinstance(t, os.PathLike) or "\n" not in t for t in texts)
          and any(os.path.isfile(t) for t in texts))


def _read_lines(paths: Sequence[str]) -> Iterator[str]:
  for path in paths:
    try:
      with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        yield from f
    except OSError as e:
      raise UserError(f"cannot read tokenizer training file {path} ({e.strerror}); fix or drop the path") from None


def _sample(sentences: Iterator[str], limit: int) -> list[str]:
  """At most `limit` sentences, a uniform sample when there are more (reservoir sampling with a fixed seed)."""
  rng = random.Random(0)
  kept = []
  for n, sentence in enumerate(sentences):
    if n < limit:
      kept.append(sentence)
    else:
      j = rng.randrange(n + 1)
      if j < limit:
        kept[j] = sentence
  return kept


def _checked_messages(messages: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
  messages = list(messages)
  for n, message in enumerate(messages):
    if (not isinstance(message, Mapping) or message.get("role") not in ROLES
        or not isinstance(message.get("content"), str)):
      raise UserError(f"chat message {n} is {message!r}; each message must be {{'role': one of {', '.join(ROLES)}, "
                      "'content': a string}")
  return messages
