"""The house line length (120 characters, setup.cfg's [flake8]/[pycodestyle]) holds for every Python file."""

import glob
import os

from conftest import REPO

MAX_LINE = 120


def test_no_python_line_is_longer_than_the_house_limit():
  files = [f for pattern in ("llada_jax/**/*.py", "configs/*.py", "tests/*.py", "launch/*.py", "setup.py")
           for f in glob.glob(os.path.join(REPO, pattern), recursive=True)]
  assert len(files) > 40
  long = [f"{os.path.relpath(f, REPO)}:{n}" for f in files
          for n, line in enumerate(open(f, encoding="utf-8").read().split("\n"), 1) if len(line) > MAX_LINE]
  assert not long, f"lines over {MAX_LINE} characters: {', '.join(long)}"
