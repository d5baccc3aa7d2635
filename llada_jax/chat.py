"""Multi-turn chat with the official turn handling (LLADA_SPEC §3).

Each new user turn is rendered with the chat template and appended without its BOS; after each reply the whole
canvas (prompt + answer) becomes the next prompt with every EOS removed, as the official chat script does.
"""

import numpy as np

from llada_jax.errors import UserError


class ChatSession:
  """Holds the conversation's token ids; `reply(text)` samples the assistant's answer."""

  def __init__(self, model, tokenizer, **generate_options):
    self.model, self.tokenizer, self.options = model, tokenizer, generate_options
    self.ids: list[int] = []

  def next_prompt(self, user_text: str) -> list[int]:
    turn = self.tokenizer.encode_chat([{"role": "user", "content": user_text}], add_generation_prompt=True)
    return turn if not self.ids else self.ids + turn[1:]  # later turns drop their BOS

  def reply(self, user_text: str) -> str:
    prompt = self.next_prompt(user_text)
    limit = self.model.config.max_sequence_length - self.options.get("gen_length", 128)
    if len(prompt) > limit:
      raise UserError(f"the conversation is {len(prompt)} tokens, over the {limit} that leave room for the answer; "
                      "start a new chat or lower --gen-length")
    out = np.asarray(self.model.generate(np.asarray([prompt]), **self.options).tokens)[0]
    self.ids = [int(t) for t in out if t != self.tokenizer.eos_id]
    return self.tokenizer.decode(out[len(prompt):], skip_special_tokens=True)
