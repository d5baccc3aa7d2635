"""The data module: corpus reading, exact packing, SFT rows, Grain determinism/resume/sharding, ArrayRecord shards."""

import json

import numpy as np
import pytest

from llada_jax import data
from llada_jax.data import packing
from llada_jax.config import DataConfig
from llada_jax.errors import UserError


class FakeTokenizer:
  """UTF-8 bytes shifted past the built-in tokenizer's special ids (1..6): packing and chat rows can be checked
  exactly by hand."""
  vocab_size, bos_id, eos_id, pad_id, mask_id, start_header_id, end_header_id, eot_id = 266, 1, 2, 2, 3, 4, 5, 6

  def encode(self, text):
    return [b + 10 for b in text.encode()]

  def decode(self, ids):
    return bytes(i - 10 for i in ids if i >= 10).decode()

  def encode_chat(self, messages, add_generation_prompt=True):
    ids = [self.bos_id]
    for m in messages:
      ids += [self.start_header_id] + self.encode(m["role"]) + [self.end_header_id] + self.encode(m["content"])
      ids += [self.eot_id]
    return ids + ([self.start_header_id] + self.encode("assistant") + [self.end_header_id]) * add_generation_prompt

  def chat_prompt_and_answer(self, messages):
    return self.encode_chat(messages[:-1]), self.encode(messages[-1]["content"]) + [self.eos_id]


def data_cfg(tmp_path=None, **changes):
  values = dict(seq_len=8, global_batch=4, val_fraction=0.0, prefetch=0)
  if tmp_path is not None:
    values["cache_dir"] = str(tmp_path / "cache")
  return DataConfig(**{**values, **changes})


def write_texts(tmp_path, texts):
  paths = []
  for i, text in enumerate(texts):
    paths.append(tmp_path / f"doc{i:03d}.txt")
    paths[-1].write_text(text)
  return ",".join(map(str, paths))


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  return str(path)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def rows_of(batches):
  return [tuple(row) for batch in batches for row in batch["tokens"]]


def windows_of(cfg, tokenizer, split="train"):
  return [tuple(row) for row in packing.packed_windows(data.corpus_of(cfg), tokenizer)[0][split]]


def numbered_corpus(tmp_path, n_docs=40):
  """Documents of 7 bytes + EOS = exactly one 8-token window each, all different."""
  return data_cfg(tmp_path, source="text", paths=write_texts(tmp_path, [f"doc {i:03d}" for i in range(n_docs)]))


# ---- The built-in corpus ----

def test_strip_markdown_keeps_text_speakers_and_lines():
  snippet = ("## SCENE II. A camp near Forres.\n\n_Alarum within. Enter DUNCAN,\nmeeting a bleeding Sergeant_\n\n"
             "**DUNCAN**  \nWhat bloody man is that? He can report,  \nAs seemeth by his plight.\n\n"
             "_\\[Aside]_  \n'Tis *strange*.\\--Nay, DUKE & c &amp; more\n\n\n\n**ALL**  \nAnon.")
  assert data.strip_markdown(snippet) == (
      "SCENE II. A camp near Forres.\n\nAlarum within. Enter DUNCAN,\nmeeting a bleeding Sergeant\n\n"
      "DUNCAN\nWhat bloody man is that? He can report,\nAs seemeth by his plight.\n\n"
      "[Aside]\n'Tis strange.--Nay, DUKE & c & more\n\nALL\nAnon.")


def test_split_scenes_starts_a_document_at_each_run_of_headers():
  play = ("# Macbeth\n\n## ACT I\n\n### SCENE I. A desert place.\n\n**First Witch**  \nWhen shall we three meet?\n\n"
          "### SCENE II. A camp.\n\n**DUNCAN**  \nWhat bloody man?\n\n"
          "## ACT II\n\n### SCENE I. Court.\n\nBANQUO\nHow goes the night?\n")
  assert data.split_scenes(play) == [
      "Macbeth\n\nACT I\n\nSCENE I. A desert place.\n\nFirst Witch\nWhen shall we three meet?",
      "SCENE II. A camp.\n\nDUNCAN\nWhat bloody man?",
      "ACT II\n\nSCENE I. Court.\n\nBANQUO\nHow goes the night?"]


def test_builtin_corpus_is_plain_scenes_with_a_stable_disjoint_val_split():
  docs = data.builtin_documents()
  assert 700 < len(docs) < 900 and 4_500_000 < sum(map(len, docs)) < 5_500_000
  assert not any(c in doc for doc in docs for c in "*_#\\")
  assert any("First Witch\nWhen shall we three meet again\nIn thunder, lightning, or in rain?" in d for d in docs)
  corpus = data.corpus_of(data_cfg(val_fraction=0.01))
  splits = data.split_documents(corpus)
  assert splits == data.split_documents(corpus)  # stable
  assert 0 < len(splits["val"]) < 30 and len(splits["train"]) + len(splits["val"]) == len(docs)
  assert not set(splits["train"]) & set(splits["val"])
  wider = data.split_documents(data.corpus_of(data_cfg(val_fraction=0.05)))["val"]
  assert set(splits["val"]) < set(wider)  # raising val_fraction only moves documents into validation
  # SHA-256 based, so these never change across processes, machines or Python versions.
  assert [data.is_validation(k, 0.5) for k in ("hello", "world", "LLaDA", "diffusion")] == [True, True, False, True]


# ---- Pre-training windows ----

def test_windows_are_documents_joined_by_eos_cut_exactly(tmp_path):
  texts = ["abc", "", "defghij", "klmnopqrstu", "v"]  # the empty file is skipped
  cfg = data_cfg(tmp_path, source="text", paths=write_texts(tmp_path, texts), seq_len=5)
  tok = FakeTokenizer()
  stream = sum(([b + 10 for b in t.encode()] + [tok.eos_id] for t in texts if t), [])
  windows, stats = packing.packed_windows(data.corpus_of(cfg), tok)
  assert len(stream) == 26
  np.testing.assert_array_equal(windows["train"], np.asarray(stream[:25]).reshape(5, 5))
  assert windows["train"].dtype == np.int32 and len(windows["val"]) == 0
  assert stats == {"train_documents": 4, "train_tokens": 26, "train_bytes": 22, "train_windows": 5,
                   "val_documents": 0, "val_tokens": 0, "val_bytes": 0, "val_windows": 0}


def test_window_packer_carries_the_remainder_across_documents():
  packer = data.WindowPacker(eos_id=0, seq_len=3)
  assert packer.add([5]).shape == (0, 3)
  np.testing.assert_array_equal(packer.add([6, 7, 8, 9]), [[5, 0, 6], [7, 8, 9]])
  np.testing.assert_array_equal(packer.add([1, 2]), [[0, 1, 2]])


def test_grain_concat_then_split_cuts_the_same_windows():
  """Grain's own packer gives exactly our windows (plus a padded partial last one, which ours never emits)."""
  import grain
  rng = np.random.default_rng(0)
  docs = [rng.integers(10, 100, n).astype(np.int32) for n in rng.integers(0, 20, 200)]
  packer = data.WindowPacker(eos_id=2, seq_len=8)
  ours = np.concatenate([packer.add(d) for d in docs])
  stream = grain.MapDataset.source([{"tokens": np.append(d, 2).astype(np.int32)} for d in docs]).to_iter_dataset()
  packed = list(grain.experimental.ConcatThenSplitIterDataset(stream, length_struct={"tokens": 8}))
  full = np.stack([p["tokens"] for p in packed if (p["tokens_segment_ids"] > 0).all()])
  assert len(packed) == len(ours) + 1 and len(ours) > 250
  np.testing.assert_array_equal(full, ours)


def test_train_batches_are_deterministic_per_seed_and_reshuffled_each_epoch(tmp_path):
  cfg, tok = numbered_corpus(tmp_path), FakeTokenizer()
  first = take(data.make_train_iterator(cfg, tok, seed=0), 20)  # 2 epochs of 40 windows
  assert set(first[0]) == {"tokens"} and first[0]["tokens"].shape == (4, 8) and first[0]["tokens"].dtype == np.int32
  again = take(data.make_train_iterator(cfg, tok, seed=0), 20)
  other = take(data.make_train_iterator(cfg, tok, seed=1), 20)
  assert rows_of(first) == rows_of(again) and rows_of(first) != rows_of(other)
  epoch1, epoch2 = rows_of(first)[:40], rows_of(first)[40:]
  assert set(epoch1) == set(epoch2) == set(windows_of(cfg, tok)) and epoch1 != epoch2


def test_resumed_iterator_continues_with_the_same_batches(tmp_path):
  cfg, tok = numbered_corpus(tmp_path), FakeTokenizer()
  iterator = data.make_train_iterator(cfg, tok, seed=7)
  take(iterator, 13)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 5)
  fresh = data.make_train_iterator(cfg, tok, seed=7)
  fresh.set_state(state)
  for want, got in zip(expected, take(fresh, 5)):
    np.testing.assert_array_equal(want["tokens"], got["tokens"])


def test_processes_read_disjoint_windows_that_cover_an_epoch(tmp_path):
  cfg, tok = numbered_corpus(tmp_path), FakeTokenizer()
  seen = []
  for process in range(2):
    batches = take(data.make_train_iterator(cfg, tok, seed=3, process_index=process, process_count=2), 10)
    assert batches[0]["tokens"].shape == (2, 8)
    seen.append(rows_of(batches))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(windows_of(cfg, tok))


def test_worker_processes_give_the_same_batches(tmp_path):
  cfg, tok = numbered_corpus(tmp_path), FakeTokenizer()
  expected = take(data.make_train_iterator(cfg, tok, seed=5), 6)
  cfg = cfg.replace(num_workers=2, prefetch=2)
  iterator = data.make_train_iterator(cfg, tok, seed=5)
  try:
    for want, got in zip(expected, take(iterator, 6)):
      np.testing.assert_array_equal(want["tokens"], got["tokens"])
    json.dumps(iterator.get_state())
  finally:
    iterator.close()


def test_eval_is_one_finite_deterministic_pass_wrapping_the_last_batch(tmp_path):
  texts = [f"doc {i:03d}" for i in range(400)]
  cfg = data_cfg(tmp_path, source="text", paths=write_texts(tmp_path, texts), val_fraction=0.05, global_batch=3)
  tok = FakeTokenizer()
  val = windows_of(cfg, tok, "val")
  batches = list(data.make_eval_iterator(cfg, tok))
  assert len(batches) == -(-len(val) // 3) and 0 < len(val) % 3  # the split is not a multiple of the batch here
  rows = rows_of(batches)
  assert sorted(rows[:len(val)]) == sorted(val) and rows[len(val):] == rows[:len(rows) - len(val)]  # wraps around
  assert not set(val) & set(windows_of(cfg, tok))
  assert rows == rows_of(data.make_eval_iterator(cfg, tok))


# ---- ArrayRecord shards ----

def test_prepared_array_record_shards_give_the_in_memory_batches(tmp_path):
  from llada_jax.tokenizer import train_tokenizer
  texts = [f"Scene {i}.\nThe quick brown fox {i * 7} jumps over the lazy dog.\n" * (1 + i % 3) for i in range(60)]
  tokenizer_path = str(tmp_path / "tok")
  train_tokenizer(texts, 400, tokenizer_path)
  cfg = data_cfg(tmp_path, source="text", paths=write_texts(tmp_path, texts), seq_len=16, val_fraction=0.1,
                 tokenizer=tokenizer_path)
  tok = data.make_tokenizer(cfg)
  done = []
  manifest = data.prepare_data(cfg, str(tmp_path / "prepared"), records_per_shard=10, progress=done.append)
  assert sum(done) == 60
  _, stats = packing.packed_windows(data.corpus_of(cfg), tok)
  train = manifest["splits"]["train"]
  assert len(train["files"]) >= 3 and sum(train["records"]) == train["windows"] == stats["train_windows"]
  assert manifest["splits"]["val"]["windows"] == stats["val_windows"] > 0 and manifest["seq_len"] == 16

  prepared = data_cfg(tmp_path, source="array_record", paths=str(tmp_path / "prepared"), seq_len=16)
  loaded = data.make_tokenizer(prepared)  # the copy stored with the data
  assert data.tokenizer_info(loaded) == data.tokenizer_info(tok)
  for want, got in zip(take(data.make_train_iterator(cfg, tok, seed=2), 12),
                       take(data.make_train_iterator(prepared, loaded, seed=2), 12)):
    np.testing.assert_array_equal(want["tokens"], got["tokens"])
  evals = [b["tokens"] for b in data.make_eval_iterator(prepared, loaded)]
  np.testing.assert_array_equal(np.concatenate(evals), np.concatenate(
      [b["tokens"] for b in data.make_eval_iterator(cfg, tok)]))
  assert data.data_stats(prepared, loaded) == stats
  assert data.sample_prompt(prepared) == data.sample_prompt(cfg)

  with pytest.raises(UserError, match="seq_len=32"):
    data.make_train_iterator(data_cfg(source="array_record", paths=str(tmp_path / "prepared"), seq_len=32), loaded,
                             seed=0)
  with pytest.raises(UserError, match="different tokenizer"):
    data.make_train_iterator(prepared, FakeTokenizer(), seed=0)
  with pytest.raises(UserError, match="exists and is not empty; choose a new directory or pass --overwrite"):
    data.prepare_data(cfg, str(tmp_path / "prepared"))


# ---- SFT ----

def chat(question, answer):
  return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_sft_rows_have_the_prompt_length_and_eos_padding(tmp_path):
  path = write_jsonl(tmp_path / "chat.jsonl", [chat("hi", "yo"), chat("2+2?", "four")])
  cfg = data_cfg(tmp_path, source="chat_jsonl", paths=path, seq_len=40, global_batch=2)
  tok = FakeTokenizer()
  rows, stats = packing.sft_rows(data.corpus_of(cfg), tok)
  by_prompt = {}
  for i in range(len(rows["train"])):
    row = rows["train"][i]
    by_prompt[int(row["prompt_length"])] = row["tokens"]
  for example in (chat("hi", "yo"), chat("2+2?", "four")):
    prompt, answer = tok.chat_prompt_and_answer(example["messages"])
    tokens = by_prompt[len(prompt)]
    assert tokens.dtype == np.int32 and len(tokens) == 40
    assert list(tokens) == prompt + answer + [tok.eos_id] * (40 - len(prompt) - len(answer))
  assert stats["train_rows"] == 2 and stats["train_truncated"] == stats["train_dropped"] == 0
  batch = next(data.make_train_iterator(cfg, tok, seed=0, objective="sft"))
  assert batch["tokens"].shape == (2, 40) and batch["prompt_length"].dtype == np.int32
  assert sorted(batch["prompt_length"]) == sorted(by_prompt)


def test_overlong_rows_are_truncated_or_dropped_and_counted(tmp_path):
  tok = FakeTokenizer()
  short, long_answer, long_prompt = chat("q", "a"), chat("q", "a" * 50), chat("q" * 50, "a")
  path = write_jsonl(tmp_path / "chat.jsonl", [short, long_answer, long_prompt, short])
  prompt_len = len(tok.chat_prompt_and_answer(short["messages"])[0])
  for overlong, rows, truncated, dropped in (("truncate", 3, 1, 1), ("drop", 2, 0, 2)):
    cfg = data_cfg(tmp_path, source="chat_jsonl", paths=path, seq_len=30, overlong=overlong, global_batch=1)
    examples, stats = packing.sft_rows(data.corpus_of(cfg), tok)
    assert (stats["train_conversations"], stats["train_rows"], stats["train_truncated"], stats["train_dropped"]) == (
        4, rows, truncated, dropped)
    assert data.data_stats(cfg, tok) == stats
    if overlong == "truncate":  # the prompt kept whole, the answer cut at seq_len (so no EOS)
      prompt, answer = tok.chat_prompt_and_answer(long_answer["messages"])
      rows = [examples["train"][i] for i in range(3)]
      cut = [r for r in rows if tok.eos_id not in r["tokens"]]
      assert len(cut) == 1 and list(cut[0]["tokens"]) == (prompt + answer)[:30]
      assert int(cut[0]["prompt_length"]) == len(prompt) == prompt_len < 30


def test_chatterbot_gives_question_answer_pairs(tmp_path):
  pairs = data.chatterbot_pairs()
  assert len(pairs) == 2306
  assert ("What is AI?", "Artificial Intelligence is the branch of engineering and science devoted to constructing "
          "machines that think.") in pairs
  cfg = data_cfg(tmp_path, source="chatterbot", seq_len=128, global_batch=8, val_fraction=0.02)
  stats = data.data_stats(cfg, FakeTokenizer())
  assert stats["train_conversations"] + stats["val_conversations"] == 2306 and stats["val_rows"] > 0
  batch = next(data.make_train_iterator(cfg, FakeTokenizer(), seed=0, objective="sft"))
  assert batch["tokens"].shape == (8, 128) and (batch["prompt_length"] > 0).all()
  assert data.sample_prompt(cfg) in {question for question, _ in pairs}


# ---- The built-in tokenizer ----

def test_builtin_tokenizer_is_trained_once_and_cached_by_corpus_and_size(tmp_path, monkeypatch):
  from llada_jax import tokenizer as tokenizer_lib
  calls, real_train = [], tokenizer_lib.train_tokenizer

  def counting_train(texts, vocab_size, out_path, **kwargs):
    calls.append(out_path)
    return real_train(texts, vocab_size, out_path, **kwargs)

  monkeypatch.setattr(tokenizer_lib, "train_tokenizer", counting_train)
  texts = [f"line {i} of some text\n" * 20 for i in range(20)]
  cfg = data_cfg(tmp_path, source="text", paths=write_texts(tmp_path, texts), tokenizer_vocab_size=270)
  first = data.make_tokenizer(cfg)
  assert data.tokenizer_info(data.make_tokenizer(cfg)) == data.tokenizer_info(first) and len(calls) == 1
  assert calls[0].startswith(str(tmp_path / "cache"))
  cfg = cfg.replace(tokenizer_vocab_size=280)
  assert data.make_tokenizer(cfg).vocab_size == 280 and len(calls) == 2
  monkeypatch.setenv("LLADA_JAX_CACHE", str(tmp_path / "env"))
  assert data.cache_dir(data_cfg(cache_dir="")) == str(tmp_path / "env")
  assert data.cache_dir(data_cfg(cache_dir=str(tmp_path / "cfg"))) == str(tmp_path / "cfg")


# ---- Mistakes a user can make ----

def test_user_mistakes_raise_user_errors_naming_the_fix(tmp_path):
  tok = FakeTokenizer()

  def make(**changes):
    return data.make_train_iterator(data_cfg(tmp_path, **changes), tok, seed=0)

  with pytest.raises(UserError, match="does not exist"):
    make(source="text", paths=str(tmp_path / "missing.txt"))
  with pytest.raises(UserError, match="matches no files"):
    make(source="text", paths=str(tmp_path / "*.nothing"))
  with pytest.raises(UserError, match="needs data.paths"):
    make(source="jsonl")
  with pytest.raises(UserError, match="fewer than one window"):
    make(source="text", paths=write_texts(tmp_path, ["abc"]))
  bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"body": "no text field"}])
  with pytest.raises(UserError, match=r"bad.jsonl:2: no string field 'text'.*data.jsonl_field"):
    make(source="jsonl", paths=bad)
  (tmp_path / "broken.jsonl").write_text("{not json\n")
  with pytest.raises(UserError, match=r"broken.jsonl:1 is not valid JSON"):
    make(source="jsonl", paths=str(tmp_path / "broken.jsonl"))
  chats = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}])
  with pytest.raises(UserError, match=r'chat.jsonl:1: a chat_jsonl line must be \{"messages": \[\{"role"'):
    data.make_train_iterator(data_cfg(tmp_path, source="chat_jsonl", paths=chats), tok, seed=0, objective="sft")
  with pytest.raises(UserError, match="train.objective=sft reads data.source chat_jsonl or chatterbot"):
    data.make_train_iterator(data_cfg(), tok, seed=0, objective="sft")
  with pytest.raises(UserError, match="multiple of the 3 processes"):
    data.make_train_iterator(data_cfg(), tok, seed=0, process_count=3)
  with pytest.raises(UserError, match="data.source='csv' is not one of"):
    make(source="csv")
  with pytest.raises(UserError, match="data.paths is set but data.source=builtin"):
    make(paths="corpus.txt")
  one_file = data_cfg(tmp_path, source="text", paths=write_texts(tmp_path, ["a whole book " * 10]), val_fraction=0.01)
  with pytest.raises(UserError, match="held out none of the 1 documents.*train.eval_every=0"):
    data.make_eval_iterator(one_file, tok)
