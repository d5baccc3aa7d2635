"""Chat: streamed replies equal the unstreamed text, the official turn handling, a system message, and starting
over when the conversation outgrows the context (in the API and on the CLI)."""

import io
import re

import numpy as np
import pytest

from conftest import tiny_hf_config, write_hf_dir
from llada_jax import cli, data, load_pretrained
from llada_jax.chat import ChatSession, ContextFull
from llada_jax.sampler import SamplingConfig
from llada_jax.tokenizer import train_tokenizer

# The built-in tokenizer's special ids (1..6) in a model small enough to test with.
HF = tiny_hf_config(vocab_size=400, embedding_size=416, max_sequence_length=96, bos_token_id=1, eos_token_id=2,
                    pad_token_id=2, mask_token_id=3, eot_token_id=6)


def _sharpen(model):
  model.model.transformer.ff_out.weight.mul_(12.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("chat")
  tokenizer_path = str(root / "tok")
  tokenizer = train_tokenizer(list(data.builtin_documents())[:2], 400, tokenizer_path)
  path, _ = write_hf_dir(root / "hf", HF, seed=3, edit=_sharpen)
  return load_pretrained(path), tokenizer, path, tokenizer_path


@pytest.mark.parametrize("options", [dict(), dict(decoding="threshold", threshold=0.5, cache="dual")])
def test_streamed_reply_is_the_final_text(setup, options):
  model, tokenizer, _, _ = setup
  sampling = SamplingConfig(steps=16, gen_length=16, block_length=4, **options)
  session = ChatSession(model, tokenizer, sampling)
  prompt = session.next_prompt("Hello there")
  pieces = list(session.reply_stream("Hello there"))
  out = np.asarray(model.generate(np.asarray([prompt]), sampling=sampling).tokens)[0]
  assert "".join(pieces) == tokenizer.decode(out[len(prompt):], skip_special_tokens=True)
  assert len(pieces) > 1  # it did stream
  assert session.ids == [int(t) for t in out if t != tokenizer.eos_id]


def test_turns_and_system_message(setup):
  model, tokenizer, _, _ = setup
  session = ChatSession(model, tokenizer, SamplingConfig(steps=8, gen_length=8, block_length=4), system="Be brief.")
  first = session.next_prompt("Hi")
  assert first == tokenizer.encode_chat([{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hi"}])
  session.reply("Hi")
  history = list(session.ids)
  assert session.next_prompt("More") == history + tokenizer.encode_chat([{"role": "user", "content": "More"}])[1:]


def test_a_full_context_offers_to_start_over(setup):
  model, tokenizer, _, _ = setup
  session = ChatSession(model, tokenizer, SamplingConfig(steps=32, gen_length=32, block_length=32))
  session.reply("one two three")
  with pytest.raises(ContextFull, match="start over"):
    while True:
      session.reply("and then some more words to fill the conversation")
  session.start_over()
  assert session.reply("again") is not None and len(session.ids) <= HF["max_sequence_length"]


def test_cli_chat_starts_over_instead_of_exiting(setup, monkeypatch, capsys):
  _, _, path, tokenizer_path = setup
  monkeypatch.setenv("LLADA_JAX_NO_REEXEC", "1")
  monkeypatch.setattr("sys.stdin", io.StringIO("one two three\n" * 4 + "\n"))
  code = cli.main(["chat", "--checkpoint", str(path), "--tokenizer", tokenizer_path, "--gen-length", "32",
                   "--steps", "32", "--block-length", "8", "--decoding", "threshold", "--cache", "prefix",
                   "--system", "Be brief."])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  assert captured.out.count("llada> ") == 4
  assert "starting over" in captured.err
  # stdin is not a terminal: each user line is printed before its reply, so the output reads as a transcript
  assert re.findall(r"^(you|llada)> ", captured.out, re.M) == ["you", "llada"] * 4
  assert captured.out.count("you> one two three\n") == 4
