"""Tokenizers: one interface over a Hugging Face tokenizer.json and a sentencepiece model, plus LLaDA's chat layout.

The released LLaDA checkpoints ship a byte-level BPE `tokenizer.json`; our built-in tokenizer is a small byte-level
BPE of the same kind trained on the corpus (`train_tokenizer`), so `transformers.AutoTokenizer` loads what we save.
Both expose the six special tokens of docs/design.md §3 by name, so the rest of llada-jax never cares which backend it
holds. The built-in one reserves them at ids 1..6, the ids that configs/tiny.py and configs/small.py bake in.

A tokenizer's own settings come from the `tokenizer_config.json` beside it, as in transformers: `chat_template`
(rendered with jinja2 in a sandbox; a `chat_template.jinja` file takes precedence) and `add_bos_token`. Without a
template the built-in LLaDA layout applies, which is also the template we save.
"""

import functools
import json
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import sentencepiece as spm
import tokenizers

from llada_jax import paths
from llada_jax.errors import UserError

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>")
ROLES = ("system", "user", "assistant")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # the vocabulary; in a directory the first one present wins
SETTINGS_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers ≥ 4.50 saves the template here instead of in the settings
COMPANION_FILES = (SETTINGS_FILE, "special_tokens_map.json", CHAT_TEMPLATE_FILE)  # travel with the vocabulary file

# docs/design.md §3 as a chat template (Llama-3 layout, BOS first). Whitespace is explicit because transformers renders
# with trim_blocks/lstrip_blocks: only the two newlines after each header are text.
LLADA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
_UNK = "<unk>"  # id 0 of the built-in vocabulary: byte-level BPE never produces it, it keeps the specials at 1..6
_META_SPACE = "\u2581"  # what sentencepiece writes for a space; decodes back to a space


class Tokenizer:
  """Text ⇄ ids for one backend, with LLaDA's special ids and chat layout; get one from `load_tokenizer` or
  `train_tokenizer`.

  Attributes: `vocab_size` (ids are 0..vocab_size-1), `bos_id`, `eos_id`, `pad_id` (= eos_id: LLaDA pads with EOS),
  `mask_id`, `start_header_id`, `end_header_id`, `eot_id`; `add_bos_token` (whether plain prompts start with BOS, per
  the settings) and `chat_template` (the settings' jinja template, or None for the built-in layout).
  """

  vocab_size: int
  _filename: str  # what `save` writes

  def __init__(self, serialized: bytes, source: str, settings: Mapping[str, Any] | None = None):
    self._serialized = serialized
    self.source = source
    self.settings = dict(settings or {})
    self.add_bos_token = bool(self.settings.get("add_bos_token", False))
    self.chat_template = _default_template(self.settings.get("chat_template"), source)
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

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text, without BOS: one call into the backend for many documents (the data pipeline)."""
    return self._encode_batch(list(texts))

  def __reduce__(self):
    # Grain's worker processes receive the pipeline pickled: a tokenizer travels as its file and settings.
    return type(self), (self._serialized, self.source, self.settings)

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
    """docs/design.md §3: `<BOS>` then `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>` per
    message, then (add_generation_prompt) `<|start_header_id|>assistant<|end_header_id|>\\n\\n`.

    The same ids as rendering the official template to a string and encoding it: the special tokens split the string,
    so "\\n\\n{content}" is one segment. Previous assistant turns end with <|eot_id|>, as the official template writes
    them (the answer's EOS is stripped for multi-turn chat).
    """
    messages = _checked_messages(messages)
    if self.chat_template is not None:
      return self.encode(_render(self.chat_template, messages, add_generation_prompt))
    ids = [self.bos_id]
    for message in messages:
      ids += self._header(message["role"]) + self.encode("\n\n" + message["content"]) + [self.eot_id]
    if add_generation_prompt:
      ids += self._header("assistant") + self.encode("\n\n")
    return ids

  def chat_prompt_and_answer(self, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]:
    """(prompt, answer) ids of one SFT example whose last message is the assistant reply to learn.

    The prompt is every earlier message with the generation header (`encode_chat(messages[:-1])`); the answer is the
    reply followed by one EOS and no <|eot_id|>, as in docs/design.md §3–4 ("prompt + answer + EOS"): the SFT batch pads
    it further with EOS, all of which counts as answer, and the sampler then stops on EOS. The reply is encoded on
    its own, exactly the ids the sampler has to produce after that prompt.
    """
    messages = _checked_messages(messages)
    if not messages or messages[-1]["role"] != "assistant":
      raise UserError("an SFT example must end with the assistant message to learn; drop examples whose last "
                      "message is not {'role': 'assistant', ...}")
    return self.encode_chat(messages[:-1]), self.encode(messages[-1]["content"]) + [self.eos_id]

  def save(self, directory: str) -> str:
    """Writes the tokenizer into `directory`: tokenizer.json or tokenizer.model byte for byte as loaded, and
    tokenizer_config.json (the loaded settings, completed with the special tokens, `add_bos_token` and the chat
    template, which transformers' AutoTokenizer reads). Returns the vocabulary file's path. Each file is written
    atomically, so a reader never sees half of one."""
    directory = paths.absolute(directory)
    path = os.path.join(directory, self._filename)
    # Atomic: several processes building the same cached tokenizer see either no file or a whole one.
    paths.write_atomically(path, self._serialized)
    paths.write_atomically(os.path.join(directory, SETTINGS_FILE),
                           json.dumps(self.hf_settings(), indent=2, ensure_ascii=False) + "\n")
    return path

  def hf_settings(self) -> dict[str, Any]:
    """tokenizer_config.json as transformers reads it: the loaded settings, with what they lack filled in."""
    settings = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                "mask_token": "<|mdm_mask|>", "add_bos_token": self.add_bos_token, "add_eos_token": False,
                "clean_up_tokenization_spaces": False, "model_max_length": 4096,
                **({"tokenizer_class": "PreTrainedTokenizerFast"} if self._filename == "tokenizer.json" else {}),
                **self.settings}
    settings["chat_template"] = self.chat_template or LLADA_CHAT_TEMPLATE
    return settings

  def _header(self, role: str) -> list[int]:
    return [self.start_header_id] + self.encode(role) + [self.end_header_id]

  def _token_id(self, token: str) -> int | None:
    raise NotImplementedError

  def _encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [self._encode(text) for text in texts]

  def _encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    raise NotImplementedError


class _SentencePieceTokenizer(Tokenizer):
  _filename = "tokenizer.model"

  def __init__(self, serialized: bytes, source: str, settings: Mapping[str, Any] | None = None):
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=serialized)
    except RuntimeError as e:
      raise UserError(f"{source} is not a readable sentencepiece model ({e}); pass a sentencepiece .model file, an "
                      "HF tokenizer.json, or a directory holding one") from None
    self.vocab_size = self._sp.vocab_size()
    # A literal "▁" in the text would come back as a space; with byte fallback we spell it as its UTF-8 bytes.
    meta_bytes = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _META_SPACE.encode()]
    self._meta_bytes = meta_bytes if all(self._sp.is_byte(i) for i in meta_bytes) else None
    super().__init__(serialized, source, settings)

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

  def __init__(self, serialized: bytes, source: str, settings: Mapping[str, Any] | None = None):
    try:
      self._tok = tokenizers.Tokenizer.from_str(serialized.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
      raise UserError(f"{source} is not a readable Hugging Face tokenizer.json ({e}); pass the tokenizer.json of an "
                      "HF checkpoint, a sentencepiece .model file, or a directory holding one") from None
    # Ids may be sparse (LLaDA's specials sit at 126080..126348), so the id range, not the token count.
    self.vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    super().__init__(serialized, source, settings)

  def _token_id(self, token):
    return self._tok.token_to_id(token)

  def _encode(self, text):
    return self._tok.encode(text, add_special_tokens=False).ids

  def _encode_batch(self, texts):
    return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

  def _decode(self, ids, skip_special_tokens):
    return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


def tokenizer_file(directory: str) -> str | None:
  """The tokenizer file a directory holds, by TOKENIZER_FILES' order (HF's tokenizer.json, with its added tokens,
  before a sentencepiece model), or None."""
  for name in TOKENIZER_FILES:
    if paths.path(directory, name).is_file():
      return os.path.join(directory, name)
  return None


def tokenizer_files(directory: str) -> list[str]:
  """Every tokenizer file a directory holds (vocabularies and their companions), for copying a tokenizer whole."""
  return [os.path.join(directory, name) for name in (*TOKENIZER_FILES, *COMPANION_FILES)
          if paths.path(directory, name).is_file()]


def read_settings(directory: str) -> dict[str, Any]:
  """tokenizer_config.json of a directory ({} when absent), with chat_template.jinja's text as its template."""
  settings = {}
  settings_path = paths.path(directory, SETTINGS_FILE)
  if settings_path.is_file():
    try:
      settings = json.loads(settings_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
      raise UserError(f"{settings_path} is not valid JSON ({e}); fix it or delete it to use the tokenizer's "
                      "defaults") from None
    if not isinstance(settings, dict):
      raise UserError(f"{settings_path} holds {type(settings).__name__}, not a JSON object; fix it or delete it")
  template_path = paths.path(directory, CHAT_TEMPLATE_FILE)
  if template_path.is_file():
    settings["chat_template"] = template_path.read_text()
  return settings


def load_tokenizer(path: str) -> Tokenizer:
  """A sentencepiece .model file, an HF tokenizer.json, or a directory holding tokenizer.json (preferred) or
  tokenizer.model, or a model id in the local HF cache; with the settings of the tokenizer_config.json beside the
  file, if any."""
  path = paths.absolute(paths.resolve_model(path))
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
  return backend(serialized, path, read_settings(os.path.dirname(path)))


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str) -> Tokenizer:
  """Trains the built-in tokenizer, writes it into the directory `out_dir` (tokenizer.json and tokenizer_config.json,
  each atomically) and returns it.

  `texts` yields documents, or is a list/tuple of text file paths (read as UTF-8, bad bytes replaced).

  Byte-level, like LLaDA's own tokenizer: every string is spelt with the 256 byte symbols plus learnt merges, so
  decode(encode(s)) == s for every string and nothing is ever unknown. GPT-2's pre-tokenisation splits words from
  spaces, digits and punctuation. `<unk>` and the six special tokens are ids 0..6. Deterministic: the same texts give
  the same file bytes in any process (seconds for 8k pieces on 5 MB).
  """
  if isinstance(texts, str):
    raise TypeError("train_tokenizer takes an iterable of documents or a list of file paths, not one string")
  byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  # BPE, not unigram: tokenizers' unigram trainer gives different files in different processes.
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[_UNK, *SPECIAL_TOKENS],
                                           show_progress=False, initial_alphabet=byte_level.alphabet())
  tok.pre_tokenizer = byte_level
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.train_from_iterator(_read_documents(texts) if _are_paths(texts) else texts, trainer=trainer)
  if tok.get_vocab_size() != vocab_size:
    raise UserError(f"training the tokenizer gave {tok.get_vocab_size()} ids, not the {vocab_size} asked for: the "
                    "corpus is too small for that vocabulary; lower data.tokenizer_vocab_size or give more text")
  out_dir = paths.absolute(out_dir)
  tokenizer = _HFTokenizer(tok.to_str().encode("utf-8"), os.path.join(out_dir, _HFTokenizer._filename))
  ids = (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id, tokenizer.start_header_id,
         tokenizer.end_header_id, tokenizer.eot_id)
  assert ids == (1, 2, 2, 3, 4, 5, 6), f"built-in special ids came out as {ids}; configs/*.py expect 1,2,2,3,4,5,6"
  tokenizer.save(out_dir)
  return tokenizer


def _are_paths(texts) -> bool:
  """A list of one-line strings of which at least one names a file is a list of paths (so a missing one is reported,
  not trained on as text); anything else holds documents."""
  return (isinstance(texts, (list, tuple)) and all(isinstance(t, os.PathLike) or "\n" not in t for t in texts)
          and any(os.path.isfile(t) for t in texts))


def _read_documents(paths: Sequence[str]) -> Iterator[str]:
  for path in paths:
    try:
      with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        yield f.read()
    except OSError as e:
      raise UserError(f"cannot read tokenizer training file {path} ({e.strerror}); fix or drop the path") from None


def _default_template(template, source: str) -> str | None:
  """The template text of a settings' chat_template: a string, or transformers' list of named templates."""
  if template is None or isinstance(template, str):
    return template
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if isinstance(named.get("default"), str):
      return named["default"]
  raise UserError(f"the chat_template in {source}'s settings is neither a string nor a list holding a 'default' "
                  "template; fix tokenizer_config.json or remove its chat_template to use LLaDA's layout")


def _render(template: str, messages: list, add_generation_prompt: bool) -> str:
  from jinja2 import TemplateError
  try:
    return _compiled_template(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                               bos_token="<|startoftext|>", eos_token="<|endoftext|>")
  except TemplateError as e:
    raise UserError(f"the tokenizer's chat_template failed on this conversation ({e}); fix tokenizer_config.json's "
                    "chat_template or remove it to use LLaDA's layout") from None


@functools.lru_cache(maxsize=8)
def _compiled_template(template: str):
  """The template compiled as transformers does (sandboxed: a template cannot reach Python objects or files)."""
  from jinja2 import TemplateError
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise UserError(f"the chat template refused the conversation: {message}")

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
  env.globals["raise_exception"] = raise_exception
  try:
    return env.from_string(template)
  except TemplateError as e:
    raise UserError(f"the tokenizer's chat_template does not compile ({e}); fix tokenizer_config.json") from None


def _checked_messages(messages: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
  messages = list(messages)
  for n, message in enumerate(messages):
    if (not isinstance(message, Mapping) or message.get("role") not in ROLES
        or not isinstance(message.get("content"), str)):
      raise UserError(f"chat message {n} is {message!r}; each message must be {{'role': one of {', '.join(ROLES)}, "
                      "'content': a string}")
  return messages
