"""What a training run reports, apart from the loop that drives it: tensorboard scalars, the progress bar,
throughput and MFU, the `Summary`, and the one screen printed at the end."""

import contextlib
import dataclasses
import math
import os
import time
from typing import Callable

import jax

from llada_jax import flops, paths
from llada_jax.config import Experiment


@dataclasses.dataclass
class Summary:
  experiment: Experiment | None = None  # what was trained
  steps: int = 0
  start_step: int = 0
  seconds: float = 0.0
  tokens: int = 0
  tokens_per_sec: float = 0.0
  mfu: float = 0.0
  loss: float = float("nan")
  losses: list = dataclasses.field(default_factory=list)  # (step, train loss) at every logged step
  val_losses: list = dataclasses.field(default_factory=list)  # (step, loss)
  skipped: int = 0
  withheld: list = dataclasses.field(default_factory=list)  # checkpoint steps not saved after non-finite steps
  checkpoint_dir: str = ""
  best_step: int | None = None  # the kept checkpoint with the best validation bound
  tensorboard_dir: str = ""
  loss_plot: str = ""  # loss.png in the workdir
  data_stats: dict = dataclasses.field(default_factory=dict)
  sample: str = ""
  sample_settings: str = ""  # SamplingConfig.describe() of the sample


class ScalarWriter:
  """Tensorboard scalars written in the caller's thread: tensorboardX's SummaryWriter queues events for a writer
  thread, so what a flush promises is not yet on disk and a kill right after it loses logged steps."""

  def __init__(self, logdir: str):
    from tensorboardX import summary
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2
    paths.path(logdir).mkdir(parents=True, exist_ok=True)
    self._events = EventsWriter(os.path.join(logdir, "events"))
    self._event, self._scalar = event_pb2.Event, summary.scalar

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    self._events.write_event(self._event(summary=self._scalar(tag, value), step=step, wall_time=time.time()))

  def flush(self) -> None:
    self._events.flush()

  def close(self) -> None:
    self._events.close()


class Reporter:
  """Collects the run's `Summary` and shows it as it goes: scalars to tensorboard (process 0 only), the progress
  bar, tokens/s and MFU over the steps between two logged steps (the first, which compiles, is not timed), and
  `callback(step, metrics)` at every logged step."""

  def __init__(self, exp: Experiment, start_step: int, tensorboard_dir: str | None, show: bool,
               callback: Callable[[int, dict], None] | None = None):
    from tqdm import tqdm
    self.tokens_per_step = exp.tokens_per_step
    self.flops_per_step = flops.train_flops_per_step(exp)
    self.peak = (exp.train.peak_tflops * 1e12 or flops.peak_flops(jax.devices()[0])) * jax.device_count()
    self.summary = Summary(experiment=exp, start_step=start_step)
    self.writer = ScalarWriter(tensorboard_dir) if tensorboard_dir else None
    self.bar = tqdm(total=exp.train.steps, initial=start_step, disable=not show, unit="step", dynamic_ncols=True)
    self.callback = callback
    self._window_start: float | None = None
    self._window_steps = 0

  def step_done(self) -> None:
    self._window_steps += 1
    self.bar.update(1)

  def train_metrics(self, step: int, metrics: dict) -> None:
    """The metrics of a logged step, fetched to the host."""
    loss = float(metrics["loss"])
    self.summary.loss = loss
    self.summary.losses.append((step, loss))
    self.summary.skipped = int(metrics["skipped"])
    if self.callback:
      self.callback(step, metrics)
    now = time.time()
    if self._window_start is None:
      self._window_start, self._window_steps = now, 0
    elif self._window_steps:
      rate = self._window_steps * self.tokens_per_step / (now - self._window_start)
      self.summary.tokens_per_sec = rate
      self.summary.mfu = rate / self.tokens_per_step * self.flops_per_step / self.peak
      self._window_start, self._window_steps = now, 0
    if self.writer:
      for key in ("loss", "grad_norm", "update_norm", "param_norm", "lr"):
        self.writer.add_scalar(f"train/{key}", float(metrics[key]), step)
      self.writer.add_scalar("train/nll_bound", loss, step)
      self.writer.add_scalar("train/skipped", int(metrics["skipped"]), step)
      if self.summary.tokens_per_sec:
        self.writer.add_scalar("perf/tokens_per_sec", self.summary.tokens_per_sec, step)
        self.writer.add_scalar("perf/mfu", self.summary.mfu, step)
      self.writer.flush()
    self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{float(metrics['lr']):.2e}",
                         tok_s=f"{self.summary.tokens_per_sec:,.0f}")

  def validation(self, step: int, value: float) -> None:
    self.summary.val_losses.append((step, value))
    if self.writer:
      self.writer.add_scalar("val/loss", value, step)
      self.writer.add_scalar("val/ppl_bound", math.exp(min(value, 50.0)), step)
    self.bar.set_postfix(loss=f"{self.summary.loss:.3f}", val=f"{value:.3f}")

  def last_validation(self, step: int) -> float | None:
    """The bound already measured at `step`, if any (a step both evaluated and checkpointed is measured once)."""
    if self.summary.val_losses and self.summary.val_losses[-1][0] == step:
      return self.summary.val_losses[-1][1]
    return None

  def close_bar(self) -> None:
    self.bar.close()

  def finish(self, end_step: int, seconds: float) -> Summary:
    """The summary of the steps run in `seconds`; the progress bar and the event file are closed."""
    self.bar.close()
    self.summary.steps = end_step - self.summary.start_step
    self.summary.seconds = seconds
    self.summary.tokens = self.summary.steps * self.tokens_per_step
    self.close()
    return self.summary

  def close(self) -> None:
    if self.writer:  # events logged since the last flush survive any exit but a kill
      with contextlib.suppress(OSError):
        self.writer.close()
      self.writer = None


def bits_per_byte(nats_per_token: float, data_stats: dict) -> float:
  """A validation bound in nats per token as bits per UTF-8 byte of the validation text (tokens include each
  document's EOS, as the bound does)."""
  return nats_per_token * data_stats["val_tokens"] / (data_stats["val_bytes"] * math.log(2))


def format_summary(summary: Summary) -> str:
  """The one screen printed at the end of `llada-jax train`."""
  exp = summary.experiment
  model_config = exp.model
  minutes, seconds = divmod(int(summary.seconds), 60)
  lines = [
      "─── llada-jax train: summary " + "─" * 40,
      f"model        {model_config.num_params():,} parameters ({model_config.num_params(False):,} without "
      f"embeddings): d {model_config.d_model} × {model_config.n_layers} layers, vocab {model_config.vocab_size}",
      f"objective    {exp.train.objective}, data {exp.data.source}, batch {exp.data.global_batch} × "
      f"{exp.data.seq_len} tokens",
      f"steps        {summary.start_step} → {summary.start_step + summary.steps} in {minutes}m{seconds:02d}s, "
      f"{summary.tokens:,} tokens, {summary.tokens_per_sec:,.0f} tokens/s, MFU {summary.mfu:.1%}",
      f"train loss   {summary.loss:.4f} (last logged step)",
  ]
  if summary.val_losses:
    (s0, v0), (s1, v1) = summary.val_losses[0], summary.val_losses[-1]
    lines.append(f"val loss     {v0:.4f} at step {s0} → {v1:.4f} at step {s1} (an upper bound on NLL, nats/token; "
                 f"perplexity ≤ {math.exp(min(v1, 50.0)):,.1f})")
    if summary.data_stats.get("val_bytes"):
      b0, b1 = (bits_per_byte(v, summary.data_stats) for v in (v0, v1))
      lines.append(f"val bits/B   {b0:.3f} → {b1:.3f} (the same bound per byte of text: comparable across "
                   "tokenizers)")
  if summary.data_stats:
    lines.append("data         " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in summary.data_stats.items()))
  lines += [
      f"non-finite   {summary.skipped} step(s) skipped" + (
          f"; checkpoints withheld at step(s) {', '.join(map(str, summary.withheld))}" if summary.withheld else ""),
      f"checkpoint   {summary.checkpoint_dir}" + (
          f" (best validation bound: step {summary.best_step}, kept)"
          if summary.best_step is not None and not summary.checkpoint_dir.endswith(f"/{summary.best_step}") else ""),
      f"tensorboard  tensorboard --logdir {summary.tensorboard_dir}  (the viewer: pip install tensorboard, or the "
      "llada-jax[tensorboard] extra)",
  ]
  if summary.loss_plot:
    lines.append(f"loss curves  {summary.loss_plot}")
  if summary.sample:
    lines.append(f"sample       ({summary.sample_settings}) {summary.sample!r}")
  return "\n".join(lines)
