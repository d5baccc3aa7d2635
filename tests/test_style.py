"""The house style (ruff.toml: 120-character lines, pycodestyle and pyflakes) holds for every Python file."""

import subprocess
import sys

from conftest import REPO


def test_ruff_finds_nothing():
  result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", REPO],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
