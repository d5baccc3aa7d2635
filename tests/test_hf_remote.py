"""HF exports load in transformers: our remote code (llada_jax/hf_remote) gives our logits, AutoTokenizer reads the
saved tokenizer and renders its chat template as we do, both conversions keep the tokenizer and the sampling
defaults, and model ids resolve through the local Hugging Face cache."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_hf_config, write_hf_dir
from llada_jax import cli, convert, data, paths
from llada_jax.hf_config import from_hf_config
from llada_jax.errors import UserError
from llada_jax.pretrained import load_for_inference, load_pretrained
from llada_jax.sampler import SamplingConfig
from llada_jax.tokenizer import load_tokenizer, train_tokenizer

transformers = pytest.importorskip("transformers")

CHAT = [{"role": "system", "content": "Speak in verse."}, {"role": "user", "content": "Who art thou?"},
        {"role": "assistant", "content": "A player, sir."}, {"role": "user", "content": "And\nthen?"}]
TEXT = "ROMEO.\nBut soft, what light through yonder window breaks?  It is the east, 1597."
STORED = SamplingConfig(steps=16, gen_length=32, block_length=8, temperature=0.5, cfg_scale=1.5, remasking="random")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """An HF directory from the PyTorch reference with our built-in tokenizer and stored sampling defaults, taken
  through hf-to-jax and back: (source dir, llada-jax checkpoint, export, torch reference model)."""
  root = tmp_path_factory.mktemp("hf_remote")
  tokenizer = train_tokenizer(list(data.builtin_documents())[:3], 400, str(root / "tok"))
  hf_config = tiny_hf_config(vocab_size=400, embedding_size=416, n_kv_heads=2, mask_token_id=3, eos_token_id=2,
                             pad_token_id=2, bos_token_id=1, eot_token_id=6)
  src, ref = write_hf_dir(root / "src", hf_config, seed=11)
  tokenizer.save(src)
  generation = convert.generation_config(from_hf_config(hf_config), STORED)
  with open(os.path.join(src, "generation_config.json"), "w") as f:
    json.dump(generation, f)
  convert.hf_to_jax(src, str(root / "jax"))
  files, found = convert.jax_to_hf(str(root / "jax"), str(root / "out"))
  assert found == str(root / "jax" / "tokenizer.json") and files
  return src, str(root / "jax"), str(root / "out"), ref


def test_automodel_loads_the_export_and_its_logits_equal_ours(exported):
  _, _, out, ref = exported
  assert sorted(f for f in os.listdir(out) if not f.endswith(".safetensors")) == [
      "config.json", "configuration_llada.py", "generation_config.json", "model.safetensors.index.json",
      "modeling_llada.py", "tokenizer.json", "tokenizer_config.json"]
  hf = transformers.AutoModel.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
  assert type(hf).__name__ == "LLaDAModelLM" and hf.config.model_type == "llada"
  lm = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
  ours = load_pretrained(out)
  tokens = np.random.default_rng(0).integers(0, 400, (2, 13))
  mask = np.ones_like(tokens)
  mask[1, :4] = 0  # left padding
  with torch.no_grad():
    got = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_array_equal(lm(torch.tensor(tokens)).logits.numpy(), ref(torch.tensor(tokens)).numpy())
    np.testing.assert_array_equal(got, ref(torch.tensor(tokens), attention_mask=torch.tensor(mask)).numpy())
  np.testing.assert_allclose(np.asarray(ours.logits(tokens, mask)), got, rtol=2e-5, atol=2e-5)
  with pytest.raises(ValueError, match="does not take labels"):
    hf(torch.tensor(tokens), labels=torch.tensor(tokens))


def test_autotokenizer_encodes_and_renders_the_chat_template_as_we_do(exported):
  _, _, out, _ = exported
  ours = load_tokenizer(out)
  # config.json's auto_map makes AutoTokenizer read our configuration too: without trust_remote_code it would ask on
  # a terminal (as for the official checkpoints, whose model card passes it).
  hf = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
  assert hf(TEXT)["input_ids"] == ours.encode(TEXT)  # add_bos_token is false for the built-in tokenizer
  assert hf.decode(ours.encode(TEXT)) == TEXT
  assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (1, 2, 2, 3)
  ids = hf.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
  assert list(ids) == ours.encode_chat(CHAT)
  assert ours.chat_template is not None  # so ours was rendered from the file, by jinja, too
  builtin = load_tokenizer(os.path.join(out, "tokenizer.json"))
  builtin.chat_template = None  # the hand-written layout of docs/design.md §3
  assert builtin.encode_chat(CHAT) == list(ids)


def test_conversions_keep_the_tokenizer_files_and_the_sampling_defaults(exported, tmp_path):
  src, jax_dir, out, _ = exported
  for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    with open(os.path.join(src, name), "rb") as a, open(os.path.join(jax_dir, name), "rb") as b:
      assert a.read() == b.read(), name
  assert load_pretrained(jax_dir).stored_sampling == STORED
  assert load_pretrained(out).stored_sampling == STORED and load_pretrained(src).sampling == STORED
  convert.hf_to_jax(out, str(tmp_path / "again"))  # remote code travels too
  assert {"modeling_llada.py", "configuration_llada.py", "tokenizer.json"} <= set(os.listdir(tmp_path / "again"))
  model, tokenizer = load_for_inference(str(tmp_path / "again"))  # chat and generate find the tokenizer
  assert tokenizer.encode(TEXT) == load_tokenizer(src).encode(TEXT)
  prompt = tokenizer.encode("ROMEO.")
  assert model.generate(np.asarray([prompt]), temperature=0.0).tokens.shape == (1, len(prompt) + 32)  # stored


def test_generate_takes_the_stored_defaults_unless_a_flag_is_given(exported, capsys, tmp_path):
  _, jax_dir, _, _ = exported
  assert cli.main(["generate", "--checkpoint", jax_dir, "--prompt", "ROMEO.", "--show-denoising"]) == 0
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[step")]
  assert lines[0].startswith("[step    1/16]") and lines[-1].startswith("[step   16/16]")  # steps 16 stored
  assert cli.main(["generate", "--checkpoint", jax_dir, "--prompt", "ROMEO.", "--show-denoising",
                   "--gen-length", "16", "--steps", "4", "--denoising-gif", str(tmp_path / "d.gif")]) == 0
  out = capsys.readouterr().out
  assert out.rstrip().endswith(f"denoising animation: {tmp_path / 'd.gif'}")
  from PIL import Image
  assert Image.open(tmp_path / "d.gif").n_frames == 4
  lines = [line for line in out.splitlines() if line.startswith("[step")]
  # no --block-length: the picture is one block of the whole canvas, 4 steps of 4 tokens (the stored 8 is not used)
  assert len(lines) == 4 and lines[0].count("░") == 16 - 4
  assert "denoising 16 tokens as one block (block length 16 = gen length" in out


def test_bad_stored_sampling_defaults_are_one_clear_error(exported, tmp_path):
  _, jax_dir, _, _ = exported
  shutil.copytree(jax_dir, tmp_path / "ckpt")
  path = tmp_path / "ckpt" / "generation_config.json"
  path.write_text(json.dumps({"llada_sampling": {"steps": 5, "gen_length": 32, "block_length": 8}}))
  with pytest.raises(UserError, match="llada_sampling is not a valid sampling setting .*multiple of the number"):
    load_pretrained(str(tmp_path / "ckpt"))
  path.write_text(json.dumps({"llada_sampling": {"stepz": 4}}))
  with pytest.raises(UserError, match="unknown key.* stepz"):
    load_pretrained(str(tmp_path / "ckpt"))


def test_model_ids_resolve_through_the_local_hf_cache_only(exported, tmp_path, monkeypatch):
  import huggingface_hub
  _, _, out, _ = exported
  snapshot = tmp_path / "hub" / "models--GSAI-ML--LLaDA-tiny" / "snapshots" / "0123abcd"
  shutil.copytree(out, snapshot)
  (tmp_path / "hub" / "models--GSAI-ML--LLaDA-tiny" / "refs").mkdir()
  (tmp_path / "hub" / "models--GSAI-ML--LLaDA-tiny" / "refs" / "main").write_text("0123abcd")
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.delenv("LLADA_JAX_ALLOW_DOWNLOAD", raising=False)
  assert paths.resolve_model("GSAI-ML/LLaDA-tiny") == str(snapshot)
  model, tokenizer = load_for_inference("GSAI-ML/LLaDA-tiny")
  assert model.stored_sampling == STORED and tokenizer.mask_id == 3
  assert paths.resolve_model(out) == out and paths.resolve_model("./not/there") == "./not/there"
  with pytest.raises(UserError, match="GSAI-ML/LLaDA-8B-Base is neither a local directory nor in the local Hugging "
                                      "Face cache .*huggingface-cli download"):
    load_pretrained("GSAI-ML/LLaDA-8B-Base")
