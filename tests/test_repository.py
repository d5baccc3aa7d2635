"""The repository stands on its own: nothing in it reads or cites a file it does not hold.

Every text file of the checkout (tracked, or untracked and not ignored) is read; a citation of a file outside the
repository, of the private notes the project started from, of a repository path that does not exist, of a Markdown
link target that does not exist, or of a section of docs/design.md that it lacks is reported with file and line.
"""

import os
import re
import subprocess

from conftest import REPO

# Written so that this file's own text does not match them.
OUTSIDE = re.compile(r"\.\./shared|(?<![\w/])shared/(?:reference|data|hooks)|LLADA_?SPEC|(?i:\bspec §)")
REPO_PATH = re.compile(r"(?<![\w.$/-])((?:docs|llada_jax|configs|launch|tests|\.ci)/[\w./-]*[\w/])(?![\w*{])")
LINK = re.compile(r"\]\(([^)\s]+)\)")
DESIGN_SECTION = re.compile(r"docs/design\.md §\s?(\d+)")


def repository_files(root: str) -> list[str]:
  """The checkout's files as git sees them (ignored build outputs and environments left out); every file below
  `root` when it is not a git checkout."""
  try:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.splitlines()
  except (OSError, subprocess.CalledProcessError):
    listed = [os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files]
  return sorted(p for p in listed if os.path.isfile(os.path.join(root, p)))


def bad_citations(root: str) -> list[str]:
  design = os.path.join(root, "docs", "design.md")
  sections = set()
  if os.path.exists(design):
    sections = set(re.findall(r"^## (\d+)\.", open(design, encoding="utf-8").read(), re.M))
  problems = []
  for rel in repository_files(root):
    try:
      text = open(os.path.join(root, rel), encoding="utf-8").read()
    except (UnicodeDecodeError, OSError):
      continue  # binary files cite nothing
    for number, line in enumerate(text.splitlines(), 1):
      where = f"{rel}:{number}"
      problems += [f"{where}: cites {m.group(0)!r}, which is not in the repository" for m in OUTSIDE.finditer(line)]
      for m in DESIGN_SECTION.finditer(line):
        if m.group(1) not in sections:
          problems.append(f"{where}: cites docs/design.md §{m.group(1)}, which has no such section")
      # Tests name missing files on purpose (the refusals they check), so only their outside citations count.
      named = [] if rel.startswith("tests/") else [m.group(1) for m in REPO_PATH.finditer(line)]
      if rel.endswith(".md"):
        links = [m.group(1).split("#")[0] for m in LINK.finditer(line)]
        named += [os.path.normpath(os.path.join(os.path.dirname(rel), t)) for t in links
                  if t and not re.match(r"[a-z]+:", t)]
      problems += [f"{where}: names {name}, which does not exist"
                   for name in dict.fromkeys(os.path.normpath(n) for n in named)
                   if not os.path.exists(os.path.join(root, name))]
  return problems


def test_nothing_outside_the_repository_is_read_or_cited():
  problems = bad_citations(REPO)
  assert not problems, "\n".join(problems)


def test_the_walk_finds_planted_bad_citations(tmp_path):
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "design.md").write_text("# Design\n\n## 1. The network\n\n## 2. Names\n")
  (tmp_path / "llada_jax").mkdir()
  (tmp_path / "llada_jax" / "ok.py").write_text('"""As docs/design.md §2 says; see llada_jax/ok.py."""\n')
  bad = tmp_path / "llada_jax" / "bad.py"
  bad.write_text("\n".join([
      '"""The network (docs/design.md §' + '9)."""',
      'DATA = "../shar' + 'ed/data/poems.json"',
      "# the official loss (LLADA" + "_SPEC §4), the sampler (spec " + "§5)",
      "# see llada_jax/" + "gone.py and configs/" + "absent.py",
  ]))
  (tmp_path / "README.md").write_text("[design](docs/design.md), [gone](docs/" + "missing.md), [paper](https://x.org/a)\n")
  problems = bad_citations(str(tmp_path))
  assert [p.split(": ", 1)[0] for p in problems] == [
      "README.md:1", "llada_jax/bad.py:1", "llada_jax/bad.py:2", "llada_jax/bad.py:3", "llada_jax/bad.py:3",
      "llada_jax/bad.py:4", "llada_jax/bad.py:4"], "\n".join(problems)
  assert "docs/missing.md" in problems[0] and "§9" in problems[1] and "gone.py" in problems[5]
