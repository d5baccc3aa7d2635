"""`data.source=stream`: raw Parquet, JSONL (plain, gzip, zstd) and ArrayRecord corpora read per host inside Grain —
every format's documents, units that cover a file once, hosts that read only their share, mixtures by weight,
exact resume (with workers too), refused resumes, bad data, and flat memory as the corpus grows."""

import gzip
import json
import os
import re
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llada_jax.config import DataConfig
from llada_jax.data import builtin_documents, pipeline, streaming
from llada_jax.errors import UserError
from llada_jax.tokenizer import train_tokenizer

DOCS = [d for d in builtin_documents()[:120]]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return train_tokenizer(list(builtin_documents()[:150]), 8192, str(tmp_path_factory.mktemp("tok")))


def write_jsonl(path, docs, field="text", opener=open):
  with opener(path, "wt", encoding="utf-8") as f:
    for doc in docs:
      f.write(json.dumps({field: doc, "id": 1}) + "\n")
  return str(path)


def write_parquet(path, docs, field="text", row_group_size=16):
  pq.write_table(pa.table({field: docs, "id": list(range(len(docs)))}), str(path), row_group_size=row_group_size)
  return str(path)


def write_zstd(path, docs):
  import zstandard
  data = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
  path.write_bytes(zstandard.ZstdCompressor().compress(data))
  return str(path)


def write_array_record(path, docs):
  from array_record.python.array_record_module import ArrayRecordWriter
  writer = ArrayRecordWriter(str(path), "group_size:1")
  for doc in docs:
    writer.write(doc.encode("utf-8"))
  writer.close()
  return str(path)


def documents_of(path, fmt, shard_bytes=1 << 20, field="text"):
  units = streaming.units_of((path,), fmt, field, shard_bytes)
  return units, [text for unit in units for text in streaming.unit_texts(unit, 1 << 24, "error")]


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "jsonl.gz", "jsonl.zst", "array_record"])
def test_every_format_gives_its_documents_in_order(tmp_path, kind):
  docs = DOCS[:40]
  path = {"parquet": lambda p: write_parquet(p, docs), "jsonl": lambda p: write_jsonl(p, docs),
          "jsonl.gz": lambda p: write_jsonl(p, docs, opener=gzip.open), "jsonl.zst": lambda p: write_zstd(p, docs),
          "array_record": lambda p: write_array_record(p, docs)}[kind](tmp_path / f"c.{kind}")
  units, read = documents_of(path, streaming._format_of(path))
  assert read == docs
  assert len(units) == {"parquet": 3, "jsonl": 1, "jsonl.gz": 1, "jsonl.zst": 1, "array_record": 1}[kind]


@pytest.mark.parametrize("shard_bytes", [37, 1000, 50_000, 1 << 30])
def test_jsonl_byte_ranges_give_every_line_once(tmp_path, shard_bytes):
  path = write_jsonl(tmp_path / "c.jsonl", DOCS[:50])
  units, read = documents_of(path, "jsonl", shard_bytes)
  assert read == DOCS[:50] and len(units) == -(-os.path.getsize(path) // shard_bytes)


class _Counting:
  """A file that records which byte ranges were read."""

  def __init__(self, f, ranges):
    self._f, self._ranges = f, ranges

  def read(self, *args):
    start = self._f.tell()
    data = self._f.read(*args)
    self._ranges.append((start, start + len(data)))
    return data

  def readline(self, *args):
    start = self._f.tell()
    data = self._f.readline(*args)
    self._ranges.append((start, start + len(data)))
    return data

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()


def _distinct(ranges) -> int:
  total, end = 0, 0
  for start, stop in sorted(ranges):
    total += max(0, stop - max(start, end))
    end = max(end, stop)
  return total


def test_two_hosts_read_disjoint_shares_of_the_corpus(tmp_path, tokenizer, monkeypatch):
  files = [write_jsonl(tmp_path / f"c{i}.jsonl", DOCS[i::8]) for i in range(8)]
  files += [write_parquet(tmp_path / f"p{i}.parquet", DOCS[i::4]) for i in range(2)]
  total = sum(os.path.getsize(f) for f in files)
  cfg = DataConfig(source="stream", streams=({"paths": str(tmp_path / "c*.jsonl")},
                                             {"paths": str(tmp_path / "p*.parquet")}), seq_len=128, global_batch=4,
                   tokenizer="unused", val_fraction=0, shard_bytes=20_000, shuffle_window=16)
  shares, real = [], streaming.open_binary
  for host in range(2):
    read: dict[str, list] = {}
    monkeypatch.setattr(streaming, "open_binary", lambda p: _Counting(real(p), read.setdefault(p, [])))
    it = pipeline.make_train_iterator(cfg, tokenizer, seed=0, process_index=host, process_count=2)
    for _ in range(30):  # well into a second epoch of this host's share
      next(it)
    shares.append({path: _distinct(r) for path, r in read.items()})
  fractions = [sum(share.values()) / total for share in shares]
  assert all(f <= 0.55 for f in fractions), fractions
  units = [set(streaming.host_units(streaming.units_of(tuple(files[:8]), "jsonl", "text", 20_000), 0, h, 2, "s"))
           for h in range(2)]
  assert not units[0] & units[1] and len(units[0] | units[1]) == len(streaming.units_of(tuple(files[:8]), "jsonl",
                                                                                        "text", 20_000))


def _mixture(tmp_path, **changes):
  a = [" ".join(["alpha"] * 40) + f" {i}" for i in range(200)]
  b = [" ".join(["omega"] * 40) + f" {i}" for i in range(200)]
  for i in range(2):
    write_parquet(tmp_path / f"a{i}.parquet", a[i::2], field="content")
    write_jsonl(tmp_path / f"b{i}.jsonl", b[i::2])
  values = dict(source="stream", seq_len=64, global_batch=4, tokenizer="unused", val_fraction=0, shuffle_window=8,
                streams=({"name": "a", "paths": str(tmp_path / "a*.parquet"), "field": "content", "weight": 3.0},
                         {"name": "b", "paths": str(tmp_path / "b*.jsonl"), "weight": 1.0}))
  return DataConfig(**{**values, **changes})


def test_a_mixture_follows_its_weights(tmp_path, tokenizer):
  cfg = _mixture(tmp_path)
  alpha = set(tokenizer.encode(" alpha alpha"))
  it = pipeline.make_train_iterator(cfg, tokenizer, seed=0)
  rows = np.concatenate([next(it)["tokens"] for _ in range(100)])
  from_a = np.mean([bool(alpha & set(row.tolist())) for row in rows])
  assert 0.70 <= from_a <= 0.80, from_a  # 3:1 over 400 windows


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_resumed_iterator_gives_exactly_the_next_batches(tmp_path, tokenizer, workers):
  cfg = _mixture(tmp_path, num_workers=workers)
  it = pipeline.make_train_iterator(cfg, tokenizer, seed=3)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # as the checkpoint stores it
  expected = [next(it)["tokens"] for _ in range(6)]
  resumed = pipeline.make_train_iterator(cfg, tokenizer, seed=3)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["tokens"], want)


def test_resuming_with_other_data_settings_is_refused_in_one_line(tmp_path, tokenizer):
  it = pipeline.make_train_iterator(_mixture(tmp_path), tokenizer, seed=0)
  next(it)
  state = it.get_state()
  changed = pipeline.make_train_iterator(_mixture(tmp_path, shuffle_window=4), tokenizer, seed=0)
  with pytest.raises(UserError, match=r"other data settings \(changed: shuffle_window\); resume with the settings"):
    changed.set_state(state)


def _corrupt_parquet(path):
  data = path.read_bytes()
  third = len(data) // 3
  path.write_bytes(data[:third] + bytes(range(256)) * 8 + data[third + 2048:])


@pytest.mark.parametrize("case,message", [
    ("truncated parquet", r"cannot read .*bad\.parquet as parquet \("),
    ("cut parquet footer", r"cannot read .*bad\.parquet as parquet \("),
    ("missing column", r"bad\.parquet has no column 'text' \(its columns: body, id\)"),
    ("invalid UTF-8", r"bad\.jsonl byte 0: invalid UTF-8 \(set data\.bad_data=skip"),
    ("invalid JSON", r"bad\.jsonl byte 0: not valid JSON"),
    ("overlong document", r"bad\.jsonl byte 0: a line over data\.max_document_bytes=1,000 bytes"),
])
def test_bad_data_is_one_line_naming_the_file(tmp_path, tokenizer, case, message):
  parquet = case in ("truncated parquet", "cut parquet footer", "missing column")
  good = None if parquet else write_jsonl(tmp_path / "good.jsonl", DOCS[:20])
  if case == "truncated parquet":
    _corrupt_parquet(tmp_path / os.path.basename(write_parquet(tmp_path / "bad.parquet", DOCS[:60])))
  elif case == "cut parquet footer":
    path = write_parquet(tmp_path / "bad.parquet", DOCS[:60])
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) - 100)
  elif case == "missing column":
    write_parquet(tmp_path / "bad.parquet", DOCS[:20], field="body")
  elif case == "invalid UTF-8":
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
  elif case == "invalid JSON":
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "unterminated\n')
  else:
    write_jsonl(tmp_path / "bad.jsonl", ["x" * 5000])
  pattern = str(tmp_path / ("bad.parquet" if parquet else "*.jsonl"))
  cfg = DataConfig(source="stream", paths=pattern, seq_len=64, global_batch=2, tokenizer="unused", val_fraction=0,
                   max_document_bytes=1000 if case == "overlong document" else 1 << 24, cycle_length=1)
  with pytest.raises(UserError, match=message) as error:
    it = pipeline.make_train_iterator(cfg, tokenizer, seed=0)
    for _ in range(40):
      next(it)
  assert "\n" not in str(error.value)
  if good:  # with bad_data=skip the bad line goes, training continues, and the iterator counts it
    it = pipeline.make_train_iterator(cfg.replace(bad_data="skip", shuffle_window=1), tokenizer, seed=0)
    for _ in range(40):
      assert next(it)["tokens"].shape == (2, 64)
    assert streaming.skipped_documents(it.get_state()) >= 1


def test_empty_files_and_shards_are_passed_over(tmp_path, tokenizer):
  (tmp_path / "empty.jsonl").write_bytes(b"")
  write_parquet(tmp_path / "none.parquet", [])
  write_jsonl(tmp_path / "blank.jsonl", ["", "   "])
  write_jsonl(tmp_path / "good.jsonl", DOCS[:20])
  cfg = DataConfig(source="stream", paths=f"{tmp_path}/*.jsonl,{tmp_path}/none.parquet", seq_len=64, global_batch=2,
                   tokenizer="unused", val_fraction=0, streams=())
  cfg = cfg.replace(streams=({"paths": f"{tmp_path}/*.jsonl"}, {"paths": f"{tmp_path}/none.parquet"}))
  with pytest.raises(UserError, match=r"stream stream1 has 0 units"):
    pipeline.make_train_iterator(cfg, tokenizer, seed=0)
  it = pipeline.make_train_iterator(cfg.replace(streams=({"paths": f"{tmp_path}/*.jsonl"},)), tokenizer, seed=0)
  assert all(next(it)["tokens"].shape == (2, 64) for _ in range(10))
  blank_only = cfg.replace(streams=({"paths": f"{tmp_path}/blank.jsonl"},))
  with pytest.raises(UserError, match=r"stream stream0: none of its 1 units on this process holds a document"):
    next(pipeline.make_train_iterator(blank_only, tokenizer, seed=0))


def test_validation_comes_from_named_files_or_held_out_files(tmp_path, tokenizer):
  files = [write_jsonl(tmp_path / f"c{i}.jsonl", DOCS[i::5]) for i in range(5)]
  cfg = DataConfig(source="stream", paths=f"{tmp_path}/c*.jsonl", seq_len=64, global_batch=2, tokenizer="unused",
                   val_fraction=0.2)
  split = streaming.split_files(streaming.streams_of(cfg)[0], cfg)
  assert len(split["val"]) == 1 and sorted(split["train"] + split["val"]) == sorted(files)
  first = [next(pipeline.make_eval_iterator(cfg, tokenizer))["tokens"] for _ in range(2)]
  np.testing.assert_array_equal(first[0], first[1])  # the same batches at every evaluation
  named = cfg.replace(val_paths=files[0], val_fraction=0.0)
  assert streaming.val_units(named)[0].path == files[0]
  with pytest.raises(UserError, match="holds out no validation files: name them in data.val_paths"):
    pipeline.make_eval_iterator(cfg.replace(val_fraction=0.0), tokenizer)


def test_memory_stays_flat_as_the_corpus_grows_tenfold(tmp_path, tokenizer):
  def peak(files: int) -> int:
    directory = tmp_path / str(files)
    directory.mkdir()
    for i in range(files):
      write_jsonl(directory / f"c{i}.jsonl", DOCS[(i * 7) % 100:(i * 7) % 100 + 20])
    cfg = DataConfig(source="stream", paths=f"{directory}/*.jsonl", seq_len=128, global_batch=4, tokenizer="unused",
                     val_fraction=0, prefetch=0)
    tracemalloc.start()
    it = pipeline.make_train_iterator(cfg, tokenizer, seed=0)
    for _ in range(30):
      next(it)
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return top
  small, large = peak(8), peak(80)
  assert large < 1.5 * small, (small, large)


def test_stream_config_errors_are_one_line(tmp_path, tokenizer):
  with pytest.raises(UserError, match="data.source=stream needs data.paths"):
    DataConfig(source="stream")
  with pytest.raises(UserError, match=r"data.streams\[0\] must be a dict with paths .*unknown keys colum"):
    streaming.streams_of(DataConfig(source="stream", streams=({"paths": "x", "colum": "t"},)))
  write_jsonl(tmp_path / "c.txt", DOCS[:2])
  with pytest.raises(UserError, match="cannot tell the format of .*c.txt from its name"):
    streaming.streams_of(DataConfig(source="stream", paths=str(tmp_path / "c.txt")))
  from llada_jax.data import make_tokenizer
  with pytest.raises(UserError, match="data.source=stream needs data.tokenizer"):
    make_tokenizer(DataConfig(source="stream", paths=str(tmp_path / "c.txt")))


def _stream_run_cfg(tmp_path, tokenizer_dir, *overrides):
  from test_train import tiny_cfg
  for i in range(3):
    write_parquet(tmp_path / f"web{i}.parquet", DOCS[i::4])
  write_jsonl(tmp_path / "code.jsonl", DOCS[3::4])
  streams = (f"({{'paths': '{tmp_path}/web*.parquet', 'weight': 3}}, {{'paths': '{tmp_path}/code.jsonl'}})")
  return tiny_cfg("data.source=stream", f"data.streams={streams}", f"data.tokenizer={tokenizer_dir}",
                  "data.val_fraction=0", "data.shard_bytes=100000", *overrides)


@pytest.fixture(scope="module")
def tokenizer_dir(tokenizer, tmp_path_factory):
  directory = tmp_path_factory.mktemp("tok_dir")
  tokenizer.save(str(directory))
  return str(directory)


def test_training_from_a_mixture_resumes_exactly_after_a_kill(tmp_path, tokenizer_dir):
  from llada_jax import train
  full = train.run(_stream_run_cfg(tmp_path, tokenizer_dir), str(tmp_path / "full"), progress=False)

  def kill_after_checkpoint(step, _):
    if step == 4:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    train.run(_stream_run_cfg(tmp_path, tokenizer_dir), str(tmp_path / "killed"), progress=False,
              callback=kill_after_checkpoint)
  resumed = train.run(_stream_run_cfg(tmp_path, tokenizer_dir), str(tmp_path / "killed"), resume=True,
                      progress=False)
  assert resumed.start_step == 3 and [s for s, _ in resumed.losses] == [4, 5, 6]
  np.testing.assert_array_equal([v for _, v in resumed.losses], [v for s, v in full.losses if s > 3])
  with pytest.raises(UserError, match=r"changed: shuffle_window"):
    train.run(_stream_run_cfg(tmp_path, tokenizer_dir, "data.shuffle_window=7"), str(tmp_path / "killed"),
              resume=True, progress=False)


@pytest.mark.slow  # two processes, three runs: about a minute on 2 cores
def test_two_processes_stream_their_shares_and_resume_exactly_after_kill_9(tmp_path, tokenizer_dir):
  import subprocess
  import time
  from conftest import REPO
  from llada_jax import checkpoint
  from test_train import SMALL_MODEL, scalars
  _stream_run_cfg(tmp_path, tokenizer_dir)  # writes the corpus
  streams = f"({{'paths': '{tmp_path}/web*.parquet', 'weight': 3}}, {{'paths': '{tmp_path}/code.jsonl'}})"
  flags = ["--config", "configs/tiny.py", *[f"--config.{o}" for o in SMALL_MODEL], "--config.data.seq_len=32",
           "--config.data.global_batch=8", "--config.data.source=stream", f"--config.data.streams={streams}",
           f"--config.data.tokenizer={tokenizer_dir}", "--config.data.val_fraction=0", "--config.data.num_workers=1",
           "--config.data.shard_bytes=100000", "--config.train.steps=14", "--config.train.eval_every=0",
           "--config.train.checkpoint_every=3", "--config.train.sample_after=false",
           "--config.train.async_checkpoint=false", "--config.train.log_every=1"]
  env = {**os.environ, "PORT": str(22000 + os.getpid() % 20000)}

  def launch(workdir, *extra):
    return subprocess.Popen(["bash", "launch/cpu_multiprocess.sh", str(workdir), *flags, *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

  full = launch(tmp_path / "full")
  assert full.wait(timeout=600) == 0, full.stdout.read()[-3000:]
  killed = launch(tmp_path / "killed")
  deadline = time.time() + 600
  while 6 not in checkpoint.committed_steps(str(tmp_path / "killed")) and time.time() < deadline:
    assert killed.poll() is None, killed.stdout.read()[-3000:]
    time.sleep(0.2)
  os.killpg(killed.pid, 9)  # the launcher and both training processes, mid-run
  killed.wait()
  assert max(checkpoint.committed_steps(str(tmp_path / "killed"))) < 14
  resumed = launch(tmp_path / "killed", "--resume")
  assert resumed.wait(timeout=600) == 0, resumed.stdout.read()[-3000:]
  want = dict(scalars(str(tmp_path / "full" / "tensorboard"), "train/loss"))
  got = dict(scalars(str(tmp_path / "killed" / "tensorboard"), "train/loss"))
  assert sorted(want) == list(range(1, 15)) and all(got[s] == want[s] for s in range(1, 15)), (want, got)


def test_bench_data_reports_each_worker_count_against_the_tokenizer_and_the_host(tmp_path, tokenizer_dir):
  import subprocess
  import sys
  from conftest import REPO
  for i in range(2):
    write_parquet(tmp_path / f"web{i}.parquet", DOCS[i::2])
  done = subprocess.run([sys.executable, "-m", "llada_jax.cli", "bench", "data", "--config", "configs/tiny.py",
                         "--config.data.source=stream", f"--config.data.paths={tmp_path}/web*.parquet",
                         f"--config.data.tokenizer={tokenizer_dir}", "--config.data.val_fraction=0",
                         "--workers", "0,1", "--seconds", "2", "--host", "h100:8"],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.strip().splitlines()
  header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["workers", "tokens/s"])
  rows = [line.split() for line in lines[header + 1:header + 3]]
  assert [r[0] for r in rows] == ["0", "1"] and all(float(r[1].replace(",", "")) > 0 for r in rows)
  assert "one host of 8 × h100 at 40% MFU trains on" in done.stdout
  assert re.fullmatch(r"data: [\d,]+ tokens/s per host with [01] workers \([\d.]+× the tokenizer alone\)", lines[-1])


def test_bench_data_needs_a_stream():
  from llada_jax import bench_data
  from llada_jax.config import Experiment, base_config
  with pytest.raises(UserError, match="bench data measures data.source=stream"):
    bench_data.bench_data(Experiment.from_config(base_config()), "c.py", None, [0], 1.0, "v5e:4")
  with pytest.raises(UserError, match="--host v5x:4: expected CHIP:N"):
    bench_data.host_consumption(Experiment.from_config(base_config()), "v5x:4")
