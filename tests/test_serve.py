"""`llada-jax serve`: the OpenAI-compatible server on 127.0.0.1 with a tiny model, driven by the `openai` client —
completions, chat, streaming, n, stop; the tokens a request gets alone and among others; bad bodies (4xx, server
still healthy); the API key, a full queue, a client leaving mid-stream; the CLI with SIGTERM."""

import concurrent.futures
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import openai
import pytest

from conftest import REPO, tiny_hf_config, write_hf_dir
from llada_jax import bench_serve, data, engine as engine_lib, sampler, server
from llada_jax.pretrained import load_for_inference
from llada_jax.tokenizer import train_tokenizer

HF = tiny_hf_config(vocab_size=400, embedding_size=416, max_sequence_length=96, bos_token_id=1, eos_token_id=2,
                    pad_token_id=2, mask_token_id=3, eot_token_id=6)
DEFAULTS = sampler.SamplingConfig(gen_length=16, steps=16, block_length=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  root = tmp_path_factory.mktemp("serve")
  tokenizer = train_tokenizer(list(data.builtin_documents())[:2], 400, str(root / "tok"))
  path, _ = write_hf_dir(root / "hf", HF, seed=3)
  tokenizer.save(str(path))
  return str(path)


@pytest.fixture(scope="module")
def served(checkpoint):
  model, tokenizer = load_for_inference(checkpoint)
  engine = engine_lib.Engine(model.params, model.config, tokenizer, max_batch=4, max_queue=16)
  api = server.Api(engine, tokenizer, model_name="tiny", defaults=DEFAULTS, api_key=None, request_timeout=120,
                   max_sequence_length=model.config.max_sequence_length)
  port, stop = server.serve_in_background(api, engine)
  client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
  yield dict(client=client, port=port, model=model, tokenizer=tokenizer, engine=engine, api=api, checkpoint=checkpoint)
  stop()


def row_tokens(s, prompt_ids, seed, max_tokens, index=0, **fields) -> np.ndarray:
  """The tokens the sampler gives this request's row by itself (the server's canvas layout and key), up to
  max_tokens."""
  sampling = engine_lib.request_sampling(DEFAULTS, max_tokens, 96, len(prompt_ids), **fields)
  width = engine_lib.prompt_width(len(prompt_ids))
  prompt, mask = sampler.left_pad([prompt_ids], s["tokenizer"].eos_id, width)
  key = jax.random.key(seed)
  key = key if index == 0 else jax.random.fold_in(key, index)
  tokens = s["model"].generate(prompt, attention_mask=mask, sampling=sampling, rng=key).tokens
  return np.asarray(tokens)[0, width:width + max_tokens]


def alone(s, prompt_ids, seed, max_tokens, index=0, **fields) -> str:
  """The text of `row_tokens`, cut at EOS."""
  tokens = row_tokens(s, prompt_ids, seed, max_tokens, index, **fields)
  ends = np.flatnonzero(np.isin(tokens, [s["tokenizer"].eos_id, s["tokenizer"].eot_id]))
  return s["tokenizer"].decode(tokens[:ends[0]] if len(ends) else tokens, skip_special_tokens=True)


def test_a_completion_is_the_samplers_text_and_says_what_ran(served):
  s = served
  out = s["client"].completions.create(model="tiny", prompt="ROMEO:", max_tokens=10, seed=7)
  ids = s["tokenizer"].encode("ROMEO:", add_bos=s["tokenizer"].add_bos_token)
  assert out.choices[0].text == alone(s, ids, 7, 10)
  wide = s["client"].completions.create(model="tiny", prompt="ROMEO:", max_tokens=10, seed=2 ** 40 + 9)
  assert wide.choices[0].text == alone(s, ids, 2 ** 40 + 9, 10)  # a seed past 32 bits keys as jax.random.key's
  extra = out.model_extra["llada"]
  assert extra["gen_length"] == 12 and extra["block_length"] == 4  # 10 rounded up to whole blocks, the text cut at 10
  assert out.usage.completion_tokens <= 10
  assert out.usage.prompt_tokens == len(ids) and out.choices[0].finish_reason in ("length", "stop")


def test_chat_streaming_n_and_stop(served):
  s = served
  messages = [{"role": "user", "content": "Who is there?"}]
  whole = s["client"].chat.completions.create(model="tiny", messages=messages, max_tokens=16, seed=3,
                                              temperature=0.9, n=2)
  ids = s["tokenizer"].encode_chat(messages, add_generation_prompt=True)
  texts = [c.message.content for c in sorted(whole.choices, key=lambda c: c.index)]
  assert texts == [alone(s, ids, 3, 16, index=i, temperature=0.9) for i in range(2)]
  assert texts[0] != texts[1]  # each choice draws from its own key
  pieces = {0: "", 1: ""}
  for chunk in s["client"].chat.completions.create(model="tiny", messages=messages, max_tokens=16, seed=3,
                                                   temperature=0.9, n=2, stream=True):
    for choice in chunk.choices:
      pieces[choice.index] += choice.delta.content or ""
  assert [pieces[0], pieces[1]] == texts  # one chunk per block, joined: the same text
  stop = texts[0][len(texts[0]) // 2:][:2]
  stopped = s["client"].chat.completions.create(model="tiny", messages=messages, max_tokens=16, seed=3,
                                                temperature=0.9, stop=[stop])
  assert stopped.choices[0].message.content == texts[0][:texts[0].find(stop)]
  assert stopped.choices[0].finish_reason == "stop"


def test_a_request_gets_the_same_tokens_alone_or_among_others(served):
  s = served
  prompts = ["ROMEO:", "JULIET: O Romeo", "Enter", "What light", "Good night, good night", "Ay me"]
  ask = lambda i: s["client"].completions.create(model="tiny", prompt=prompts[i], max_tokens=16, seed=100 + i,
                                                 temperature=0.8, extra_body={"decoding": "threshold",
                                                                              "threshold": 0.5, "cache": "dual"})
  one_by_one = [ask(i).choices[0].text for i in range(len(prompts))]
  steps_before = s["engine"].stats["steps"]
  with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
    together = [r.choices[0].text for r in pool.map(ask, range(len(prompts)))]
  assert together == one_by_one
  # Six requests, four rows at a time: they shared steps (fewer steps than six runs alone would take).
  assert s["engine"].stats["steps"] - steps_before < 6 * 4


BAD = [({"prompt": 5}, 400, "prompt must be a string, a list of token ids, or a list of 1 to 64"),
       ({"prompt": ["x"] * 65}, 400, "a list of 1 to 64 of either"),
       ({"prompt": [1, -2]}, 400, "prompt must be a string"),
       ({"prompt": [1, 99999]}, 400, "token id 99999 is outside the vocabulary of 400"),
       ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens=0 is outside"),
       ({"prompt": "x", "max_tokens": "8"}, 400, "max_tokens must be an integer"),
       ({"prompt": "x", "temperature": -1}, 400, "temperature=-1 is outside"),
       ({"prompt": "x", "n": 99}, 400, "n=99 is outside"),
       ({"prompt": "x", "decoding": "beam"}, 400, "decoding must be one of"),
       ({"prompt": "x", "cache": "prefix"}, 400, "cache must be one of none, dual"),
       ({"prompt": "x", "threshold": 0}, 400, "threshold=0 is outside"),
       ({"prompt": "x", "max_tokens": 90}, 400, "exceed the model's context of 96 tokens"),
       ({"prompt": "x", "max_tokens": 8, "steps": 9}, 400, "steps=9 is more than the 8 tokens asked for"),
       ({"prompt": "x", "n": 5}, 400, "n=5 is more than the 4 rows this server runs at once"),
       ({"prompt": "x", "logprobs": 2}, 400, "logprobs are not served"),
       ({"prompt": "ROMEO <|mdm_mask|>"}, 400, "the prompt holds the mask token (id 3)"),
       ({"prompt": "x", "stop": [1]}, 400, "stop must be a string or a list"),
       ({"prompt": "x", "stream": "yes"}, 400, "stream must be true or false"),
       ({"prompt": ""}, 400, "the prompt is empty"),
       ({"messages": []}, 400, "messages must be a non-empty list"),
       ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages must be a non-empty list"),
       ([1, 2], 400, "the body must be a JSON object"),
       ("{not json", 400, "the body is not valid JSON")]


def _post(port, path, body, headers=None):
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  payload = body if isinstance(body, str) else json.dumps(body)
  connection.request("POST", path, payload, {"content-type": "application/json", **(headers or {})})
  response = connection.getresponse()
  return response.status, json.loads(response.read())


@pytest.mark.parametrize("body,status,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_every_bad_body_is_a_4xx_json_error_and_the_server_stays_up(served, body, status, message):
  path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
  code, reply = _post(served["port"], path, body)
  assert code == status and message in reply["error"]["message"], reply
  assert reply["error"]["type"] == "invalid_request_error"
  assert served["client"].models.list().data[0].id == "tiny"  # still healthy


def test_the_api_key_and_a_full_queue(served):
  s = served
  s["api"].api_key = "secret"
  try:
    code, reply = _post(s["port"], "/v1/completions", {"prompt": "x"})
    assert code == 401 and "Bearer" in reply["error"]["message"]
    keyed = openai.OpenAI(base_url=f"http://127.0.0.1:{s['port']}/v1", api_key="secret", max_retries=0)
    assert keyed.completions.create(model="tiny", prompt="x", max_tokens=4).choices[0].finish_reason
  finally:
    s["api"].api_key = None
  s["engine"].max_queue = 0
  try:
    with pytest.raises(openai.RateLimitError, match="--max-queue 0"):
      s["client"].completions.create(model="tiny", prompt="x", max_tokens=4)
    s["engine"].max_queue = 2
    requests = s["engine"].stats["requests"]
    with pytest.raises(openai.RateLimitError, match="3 more would exceed --max-queue 2"):
      s["client"].completions.create(model="tiny", prompt=["x", "y", "z"], max_tokens=4)
    assert s["engine"].stats["requests"] == requests  # all of a request's prompts are queued, or none
  finally:
    s["engine"].max_queue = 16


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_leaving_frees_its_rows(served, stream):
  s = served
  cancelled = s["engine"].stats["cancelled"]
  connection = http.client.HTTPConnection("127.0.0.1", s["port"], timeout=60)
  body = {"prompt": "ROMEO:", "max_tokens": 64, "stream": stream, "extra": 1, "steps": 64, "block_length": 4}
  connection.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
  if stream:
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
  else:  # gone while the answer is being made
    deadline = time.time() + 60
    while not s["engine"].running_rows and time.time() < deadline:
      time.sleep(0.005)
  connection.close()
  deadline = time.time() + 60
  while (s["engine"].stats["cancelled"] == cancelled or s["engine"].running_rows) and time.time() < deadline:
    time.sleep(0.1)
  assert s["engine"].stats["cancelled"] == cancelled + 1 and s["engine"].running_rows == 0
  metrics = http.client.HTTPConnection("127.0.0.1", s["port"])
  metrics.request("GET", "/metrics")
  text = metrics.getresponse().read().decode()
  assert "llada_running_rows 0" in text and 'llada_request_latency_seconds_bucket{le="+Inf"}' in text


def test_the_cli_serves_and_drains_on_sigterm(checkpoint):
  proc = subprocess.Popen([sys.executable, "-m", "llada_jax.cli", "serve", "--checkpoint", checkpoint, "--port", "0",
                           "--gen-length", "16", "--steps", "16", "--block-length", "4", "--max-batch", "2"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    lines = []
    while not lines or not lines[-1].startswith("serving on "):
      line = proc.stdout.readline()
      assert line, proc.stderr.read()[-3000:]
      lines.append(line.strip())
    assert any(line.startswith("compiled the block program for batch sizes 1, 2 in ") for line in lines)
    port = int(lines[-1].split(":")[2].split("/")[0])
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      running = pool.submit(client.completions.create, model="m", prompt="ROMEO:", max_tokens=64,
                            extra_body={"steps": 64})
      time.sleep(1.0)
      proc.send_signal(signal.SIGTERM)
      assert running.result(timeout=120).choices[0].text is not None  # the running request finished
    # uvicorn ends by re-raising the signal once the running requests are done, so that a supervisor sees it.
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in proc.stderr.read()
  finally:
    proc.kill()


def test_stream_usage_and_a_sharded_engine_give_the_same_tokens(served):
  """stream_options.include_usage ends a stream with the usage; an engine whose parameters are sharded over the
  local devices (--mesh fsdp=-1) samples the same tokens as the one-device engine."""
  s = served
  chunks = list(s["client"].completions.create(model="tiny", prompt="ROMEO:", max_tokens=8, seed=2, stream=True,
                                               stream_options={"include_usage": True}))
  assert chunks[-1].usage.completion_tokens >= 1 and not chunks[-1].choices
  from llada_jax.pretrained import load_pretrained
  from llada_jax.sharding import local_mesh
  mesh = local_mesh("fsdp=-1")  # every local device (8 in the tests)
  sharded = load_pretrained(s["checkpoint"], mesh=mesh)
  engine = engine_lib.Engine(sharded.params, sharded.config, s["tokenizer"], max_batch=2, mesh=mesh)
  texts = []
  done = threading.Event()
  job = engine_lib.Request(s["tokenizer"].encode("ROMEO:", add_bos=s["tokenizer"].add_bos_token),
                           engine_lib.request_sampling(DEFAULTS, 8, 96, 3), seed=2,
                           emit=lambda e: texts.append(e.get("text", "")) or (e.get("done") and done.set()))
  engine.start()
  try:
    engine.submit(job)
    assert done.wait(120)
  finally:
    engine.stop()
  assert "".join(texts) == "".join(c.choices[0].text for c in chunks[:-1] if c.choices)


def test_the_memory_slope_is_megabytes_per_minute():
  assert bench_serve._slope_per_minute([(0.0, 100.0), (30.0, 101.5), (60.0, 102.0), (90.0, 103.5)]) == pytest.approx(
      2.2)
  assert bench_serve._slope_per_minute([(0.0, 100.0), (1.0, 900.0)]) is None  # too few samples to say
  assert bench_serve._slope_per_minute([(0.0, 100.0), (10.0, 101.0), (20.0, 102.0)]) is None  # too short


def test_bench_serve_reports_each_concurrency_and_the_last_line(checkpoint):
  done = subprocess.run([sys.executable, "-m", "llada_jax.cli", "bench", "serve", "--checkpoint", checkpoint,
                         "--concurrency", "1,2", "--requests", "4", "--max-tokens", "8", "--max-batch", "2"],
                        capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ,
                                                                                    "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.strip().splitlines()
  header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["clients", "requests"])
  rows = [line.split() for line in lines[header + 1:header + 3]]
  assert [r[:2] for r in rows] == [["1", "4"], ["2", "4"]] and all(r[-3] == "0" for r in rows)  # no errors
  assert re.search(r"time to first block, one client: [\d.]+ ms served, [\d.]+ ms by a direct generate_blocks call "
                   r"\([\d.]+×, medians of 20 alternating\)", done.stdout)
  assert all(re.fullmatch(r"\d+→\d+", r[-2]) and re.fullmatch(r"[+-]\d+\.\d|—", r[-1]) for r in rows)
  assert re.fullmatch(r"serve: [\d,.]+ tokens/s at 2 concurrent \([\d.]+× one at a time\), p99 first block [\d.]+ s",
                      lines[-1])


def test_a_fuzz_of_request_bodies_never_breaks_the_server(served):
  """300 bodies drawn from the API's fields with values of every JSON type (seeded): each answer is a 200 or a 4xx
  JSON error, never a 5xx or a dropped connection, and the server stays healthy."""
  import random
  rng = random.Random(0)
  fields = ["prompt", "messages", "max_tokens", "temperature", "stop", "seed", "n", "stream", "steps", "block_length",
            "decoding", "threshold", "factor", "cache", "cfg_scale", "remasking", "stream_options", "logprobs"]
  values = [None, True, False, 0, 1, 4, -3, 2 ** 70, 0.5, -1.5, 1e300, float("nan"), "", "x", "exact", "dual",
            "threshold", [], ["a"], [1, 2], {}, {"include_usage": True}, [{"role": "user", "content": "Hi"}],
            [{"role": "user"}], "ROMEO:"]
  for i in range(300):
    body = {name: rng.choice(values) for name in rng.sample(fields, rng.randint(0, 6))}
    if rng.random() < 0.5:
      body.setdefault("prompt", "ROMEO:")
    if body.get("stream") is True or (isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 16):
      body["max_tokens"] = 4  # keep the accepted ones short
    path = "/v1/chat/completions" if "messages" in body and rng.random() < 0.7 else "/v1/completions"
    connection = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=60)
    connection.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    assert response.status == 200 or 400 <= response.status < 500, (i, body, response.status, payload[:300])
    if response.status != 200:
      assert "message" in json.loads(payload)["error"], (i, body)
  assert served["client"].models.list().data[0].id == "tiny"


def test_a_request_over_its_time_is_a_504_and_frees_its_rows(served):
  s = served
  s["api"].request_timeout = 0.0
  try:
    code, reply = _post(s["port"], "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 16})
    assert code == 504 and "--request-timeout" in reply["error"]["message"]
  finally:
    s["api"].request_timeout = 120
  deadline = time.time() + 60
  while s["engine"].running_rows and time.time() < deadline:
    time.sleep(0.1)
  assert s["engine"].running_rows == 0


def test_a_stop_string_across_a_block_boundary_is_never_sent(served):
  s = served
  tokenizer = s["tokenizer"]
  ids = tokenizer.encode("ROMEO:", add_bos=tokenizer.add_bos_token)
  for seed in range(40):  # a seed whose first two blocks of 4 tokens give text on both sides of the boundary
    tokens = row_tokens(s, ids, seed, 16, temperature=0.9)
    first, both = (tokenizer.decode(tokens[:k], skip_special_tokens=True) for k in (4, 8))
    if not np.isin(tokens[:8], [tokenizer.eos_id, tokenizer.eot_id]).any() and first and len(both) > len(first):
      stop = first[-1] + both[len(first)]
      if both.find(stop) == len(first) - 1:
        break
  else:
    pytest.fail("no seed gives text on both sides of the first block boundary")
  text = alone(s, ids, seed, 16, temperature=0.9)
  expected = text[:text.find(stop)]
  ask = dict(model="tiny", prompt="ROMEO:", max_tokens=16, seed=seed, temperature=0.9, stop=[stop])
  whole = s["client"].completions.create(**ask)
  assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "stop"
  covering = next(k for k in range(len(tokens) + 1) if len(tokenizer.decode(tokens[:k], skip_special_tokens=True))
                  >= len(expected))
  assert whole.usage.completion_tokens == covering  # counted up to the stop, not to the end of the block
  pieces = [c.choices[0].text for c in s["client"].completions.create(**ask, stream=True) if c.choices]
  assert "".join(pieces) == expected


def test_requests_that_leave_the_queue_or_break_the_loop_free_everything(served):
  s = served
  engine = engine_lib.Engine(s["model"].params, s["model"].config, s["tokenizer"], max_batch=2, max_queue=2)
  waiting = [engine_lib.Request([1, 50], DEFAULTS) for _ in range(2)]
  for request in waiting:
    engine.submit(request)
    request.cancelled = True  # their clients left before the engine started
  events = []
  engine.submit(engine_lib.Request([1, 50], DEFAULTS, emit=events.append))  # not a 429: the queue lost the two
  assert engine.stats["cancelled"] == 2 and engine.queue_depth == 1

  def broken(event):
    raise RuntimeError("the event loop is closed")

  def finished(sink: list) -> bool:
    return bool(sink) and ("done" in sink[-1] or "error" in sink[-1])

  engine.submit(engine_lib.Request([1, 60], DEFAULTS, emit=broken))
  engine.start()
  try:
    deadline = time.time() + 60
    while not finished(events) or engine.running_rows:
      assert time.time() < deadline
      time.sleep(0.05)
    # A failing callback cancels its own request only; the one beside it in the batch ends normally.
    assert "done" in events[-1] and any("text" in e for e in events) and engine.stats["cancelled"] == 3
    # A fault inside a step (a stop that is not a string stands in for a bug) ends that step's requests with an
    # error, and the engine serves the next request.
    faulty, beside, after = [], [], []
    engine.submit(engine_lib.Request([1, 50], DEFAULTS, stop=(5,), emit=faulty.append))
    engine.submit(engine_lib.Request([1, 60], DEFAULTS, emit=beside.append))
    while not (finished(faulty) and finished(beside)):
      assert time.time() < deadline
      time.sleep(0.05)
    assert "error" in faulty[-1] and engine.stats["failed"] >= 1 and engine.running_rows == 0
    engine.submit(engine_lib.Request([1, 50], DEFAULTS, emit=after.append))
    while not finished(after):
      assert time.time() < deadline
      time.sleep(0.05)
    assert "done" in after[-1] and any("text" in e for e in after)
  finally:
    engine.stop()


def test_several_prompts_in_one_request_are_each_served_as_alone(served):
  s = served
  tokenizer = s["tokenizer"]
  texts = ["ROMEO:", "Enter the Prince."]
  ids = [tokenizer.encode(t, add_bos=tokenizer.add_bos_token) for t in texts]
  out = s["client"].completions.create(model="tiny", prompt=[texts[0], ids[1]], max_tokens=8, seed=5, n=2,
                                       temperature=0.9)
  got = {c.index: c.text for c in out.choices}
  # Choice j of prompt p is index p·n + j, with the tokens a request for that prompt alone gets.
  assert got == {2 * p + j: alone(s, ids[p], 5, 8, index=j, temperature=0.9) for p in range(2) for j in range(2)}
  assert out.usage.prompt_tokens == len(ids[0]) + len(ids[1])
  streamed = {}
  for chunk in s["client"].completions.create(model="tiny", prompt=texts, max_tokens=8, seed=5, n=2,
                                              temperature=0.9, stream=True):
    for choice in chunk.choices:
      streamed[choice.index] = streamed.get(choice.index, "") + choice.text
  assert streamed == got
