"""Synthetic checkpoints (convert/synthetic.py, `reverb synthetic`): random Qwen2 weights at a chosen size, written
tensor by tensor, that convert to a GGUF reverb serves; the memory-bound benchmark row's model at a small size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convert import safetensors_io, synthetic

from . import qwen2_tiny
from .conftest import reverb

SMALL = ["--preset", "tiny", "--hidden", "128", "--ffn", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2"]
ASCII = {10, *range(32, 127)}   # as bench/membound.py: byte tokens whose text tokenizes back to them


def _weights(d):
    return {k: np.asarray(v, dtype=np.float32) for k, v in safetensors_io.read_dir(d).items()}


def test_the_cli_writes_the_shape_asked_for_the_same_for_the_same_seed(tmp_path):
    out = reverb("synthetic", str(tmp_path / "a"), *SMALL, "--shards", "2")
    assert out.returncode == 0, out.stderr
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"]) == (128, 256, 2, 4, 2)
    assert len(list((tmp_path / "a").glob("*.safetensors"))) == 2
    a = _weights(tmp_path / "a")
    shape = synthetic.Shape(hidden=128, ffn=256, layers=2, heads=4, kv_heads=2)
    assert sum(v.size for v in a.values()) == synthetic.parameters(shape)
    assert a["model.layers.1.mlp.down_proj.weight"].shape == (128, 256)
    header = (tmp_path / "a" / "model-00001-of-00002.safetensors").read_bytes()[8:2000]
    assert b'"BF16"' in header   # the CLI's default, as Hugging Face checkpoints are
    assert reverb("synthetic", str(tmp_path / "b"), *SMALL, "--shards", "2").returncode == 0
    assert reverb("synthetic", str(tmp_path / "c"), *SMALL, "--shards", "2", "--seed", "1").returncode == 0
    b, c = _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])


def test_a_shape_that_cannot_be_built_is_a_clear_error(tmp_path):
    out = reverb("synthetic", str(tmp_path / "x"), *SMALL[:-4], "--heads", "3")
    assert out.returncode == 2 and "heads" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "x" / "config.json").exists()


def test_the_1b_preset_is_about_a_billion_parameters():
    n = synthetic.parameters(synthetic.PRESETS["1b"], synthetic.BYTE_MERGES)
    assert 0.9e9 < n < 1.1e9


def test_bf16_is_rounded_to_nearest_even_and_widened_when_read(tmp_path):
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, 1e-3], dtype=np.float32)
    safetensors_io.write_stream(tmp_path / "t.safetensors", [("x", "BF16", (5,))], iter([x]))
    got = safetensors_io.read(tmp_path / "t.safetensors")["x"]
    assert got.shape == (5,) and not isinstance(got, np.ndarray)   # widened when read, not at open
    y = np.asarray(got, dtype=np.float32)
    # halfway cases go to the even mantissa: 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6
    assert y[:4].tolist() == [1.0, 1.0, 1.0 + 2 ** -6, -2.5]
    assert abs(y[4] - 1e-3) < 1e-3 * 2 ** -8


def test_a_stream_whose_tensor_does_not_match_its_header_leaves_no_file(tmp_path):
    with pytest.raises(safetensors_io.SafetensorsError):
        safetensors_io.write_stream(tmp_path / "t.safetensors", [("x", "F32", (2, 3))], iter([np.zeros((3, 2))]))
    assert list(tmp_path.iterdir()) == []


def test_activations_keep_their_size_as_the_model_grows(tmp_path):
    """The weights' scale shrinks as 1/sqrt(hidden): a model 4x as wide and twice as deep gives logits of the same
    size as the tiny one (finite, and not one token at every position)."""
    prompt = list(b"<|im_start|>user\nWrite the lamp's log.<|im_end|>\n")
    spread = {}
    for shape in (synthetic.PRESETS["tiny"], synthetic.Shape(hidden=1024, ffn=1024, layers=4, heads=16, kv_heads=4)):
        d = tmp_path / str(shape.hidden)
        synthetic.write(d, shape, 0, "f32", merges=synthetic.BYTE_MERGES)
        logits = qwen2_tiny.forward(_weights(d), prompt, synthetic.config(shape, 0))[:, :256]
        assert np.isfinite(logits).all()
        assert len(set(logits.argmax(-1).tolist())) > len(prompt) // 4
        spread[shape.hidden] = logits.std()
    assert 0.5 < spread[1024] / spread[256] < 2, spread


@pytest.mark.model
def test_a_converted_synthetic_model_serves_and_its_own_answer_is_an_accepted_prediction(tmp_path, make_server):
    """The memory-bound benchmark row's path at a small size: `reverb synthetic --byte-tokens`, `reverb convert` to
    Q8_0, served; a greedy ASCII answer, then the same request with that answer as its prediction."""
    out = reverb("synthetic", str(tmp_path / "hf"), *SMALL, "--byte-tokens")
    assert out.returncode == 0, out.stderr
    gguf = tmp_path / "synthetic.q8_0.gguf"
    out = reverb("convert", str(tmp_path / "hf"), "-o", str(gguf), "--outtype", "q8_0")
    assert out.returncode == 0, out.stderr
    srv = make_server("--model", str(gguf), "--parallel", "1", "--ctx", "512", "--deterministic")
    n_vocab = len(synthetic.vocab(synthetic.BYTE_MERGES)) + len(synthetic.SPECIAL)
    with srv.client() as http:
        name = http.get("/v1/models").json()["data"][0]["id"]
        body = {"model": name, "messages": [{"role": "user", "content": "Copy the lamp's log."}], "max_tokens": 24,
                "temperature": 0, "logit_bias": {str(t): -100 for t in range(n_vocab) if t not in ASCII}}
        first = http.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        answer = first.json()["choices"][0]["message"]["content"]
        assert first.json()["usage"]["completion_tokens"] == 24 == len(answer)   # one byte a token, to the end
        assert set(answer.encode()) <= ASCII and len(set(answer)) > 1
        again = http.post("/v1/chat/completions", json={**body, "prediction": {"type": "content", "content": answer}})
        assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["content"] == answer
    details = again.json()["usage"]["completion_tokens_details"]
    assert details["rejected_prediction_tokens"] == 0 and details["accepted_prediction_tokens"] >= 12, details
