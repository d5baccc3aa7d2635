"""`python -m llada_jax.cli`: what `entry` re-executes, and the tests run."""

import sys

from llada_jax.cli import entry

sys.exit(entry())
