"""Multi-turn chat with the official turn handling (docs/design.md §3), streamed block by block.

Each new user turn is rendered with the chat template and appended without its BOS; after each reply the whole
canvas (prompt + answer) becomes the next prompt with every EOS removed, as the official chat script does.
"""

from typing import Iterator

import numpy as np

from llada_jax.errors import UserError
from llada_jax.sampler import SamplingConfig


class ContextFull(UserError):
  """The conversation leaves no room for another answer; the caller may start over."""


def stream_text(tokenizer, updates, prompt_length: int, block_length: int) -> Iterator[str]:
  """The decoded answer piece by piece as the sampler's blocks (`sampler.BlockUpdate`s) become final. The pieces
  join to `tokenizer.decode(answer, skip_special_tokens=True)` of the last canvas, since decoding a prefix of ids
  gives a prefix of the text; a character whose bytes straddle a block boundary is held back until it is whole."""
  shown, answer = "", []
  for update in updates:
    answer = np.asarray(update.tokens)[0, prompt_length:]
    text = tokenizer.decode(answer[:(update.block + 1) * block_length], skip_special_tokens=True).rstrip("\ufffd")
    if text.startswith(shown) and len(text) > len(shown):
      yield text[len(shown):]
      shown = text
  full = tokenizer.decode(answer, skip_special_tokens=True)
  if full.startswith(shown) and len(full) > len(shown):
    yield full[len(shown):]


class ChatSession:
  """Holds the conversation's token ids; `reply_stream(text)` streams the assistant's answer."""

  def __init__(self, model, tokenizer, sampling: SamplingConfig, *, system: str | None = None, rng=None):
    self.model, self.tokenizer, self.sampling, self.system, self.rng = model, tokenizer, sampling, system, rng
    self.ids: list[int] = []

  def next_prompt(self, user_text: str) -> list[int]:
    user = {"role": "user", "content": user_text}
    if not self.ids:
      messages = ([{"role": "system", "content": self.system}] if self.system else []) + [user]
      return self.tokenizer.encode_chat(messages, add_generation_prompt=True)
    turn = self.tokenizer.encode_chat([user], add_generation_prompt=True)
    return self.ids + (turn[1:] if turn[:1] == [self.tokenizer.bos_id] else turn)  # later turns drop BOS

  def start_over(self) -> None:
    self.ids = []

  def reply_stream(self, user_text: str) -> Iterator[str]:
    """The reply as text pieces, each as soon as its block is final; the conversation advances once the stream
    is exhausted. Raises ContextFull (before sampling) when the conversation leaves no room for the answer."""
    prompt = self.next_prompt(user_text)
    limit = self.model.config.max_sequence_length - self.sampling.gen_length
    if len(prompt) > limit:
      raise ContextFull(f"the conversation is {len(prompt)} tokens, over the {limit} that leave room for the answer "
                        "(max_sequence_length − gen_length); start over or lower --gen-length")
    updates = []

    def remember(stream):
      for update in stream:
        updates.append(update)
        yield update
    yield from stream_text(self.tokenizer, remember(self.model.generate_blocks(
        np.asarray([prompt]), sampling=self.sampling, rng=self.rng)), len(prompt), self.sampling.block_length)
    out = np.asarray(updates[-1].tokens)[0]
    self.ids = [int(t) for t in out if t != self.tokenizer.eos_id]

  def reply(self, user_text: str) -> str:
    return "".join(self.reply_stream(user_text))
