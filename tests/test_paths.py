"""The path layer: URLs pass through untouched, local paths resolve, globs and atomic writes behave."""

import os

import pytest

from llada_jax import paths


def test_urls_are_kept_and_local_paths_made_absolute(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert paths.absolute("gs://bucket/runs/8b") == "gs://bucket/runs/8b"
  assert paths.absolute("runs/x") == str(tmp_path / "runs" / "x")
  assert paths.absolute("~/data") == str(tmp_path / "home" / "data")
  assert str(paths.path("gs://bucket/runs", "8b", "checkpoints")) == "gs://bucket/runs/8b/checkpoints"


def test_local_globs_recurse_and_list_files_only(tmp_path):
  for name in ("a.txt", "sub/b.txt", "sub/deeper/c.txt", "sub/not_text.md"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(name)
  (tmp_path / "dir.txt").mkdir()
  assert paths.glob(str(tmp_path / "**" / "*.txt")) == [str(tmp_path / n) for n in
                                                         ("a.txt", "sub/b.txt", "sub/deeper/c.txt")]
  assert paths.glob(str(tmp_path / "*.txt")) == [str(tmp_path / "a.txt")]


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
  target = tmp_path / "new" / "meta.json"
  paths.write_atomically(target, "first")
  paths.write_atomically(target, b"second")
  assert target.read_text() == "second" and os.listdir(target.parent) == ["meta.json"]
  assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # shareable, like any file the user writes


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / "meta.json"
  target.write_text("old")

  def broken_replace(self, other):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(type(paths.path(tmp_path)), "replace", broken_replace)
  with pytest.raises(OSError):
    paths.write_atomically(target, "new")
  assert target.read_text() == "old" and os.listdir(tmp_path) == ["meta.json"]


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
