"""Convert, quantize and evaluate, on the real tiny model and on a random Qwen2 checkpoint.

Thresholds are set from measurement on the reference machine (values in comments) with margin for other CPUs'
SIMD paths.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from reverb.backends.llama import evaluate
from reverb.cli.models import EVAL_TEXT
from reverb.backends.llama.engine import Engine, EngineConfig
from reverb.types import SamplingParams

from . import qwen2_tiny
from .conftest import ROOT, Server, engine_threads, reverb

pytestmark = [pytest.mark.model, pytest.mark.slow]  # starts servers or loads models: the slow tier

PROMPT = "<|im_start|>user\nWrite a story about a dragon.<|im_end|>\n<|im_start|>assistant\n"


def greedy(path, n: int = 32, prompt: str = PROMPT) -> tuple[list[int], np.ndarray]:
    e = Engine(path, EngineConfig(n_ctx=512, n_seq=1, n_threads=engine_threads(), n_threads_batch=engine_threads()))
    toks = e.tokenize(prompt, special=True)
    e.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
    first = e.logits(len(toks) - 1)
    s = e.sampler(SamplingParams(temperature=0), 0)
    out, t = [], s.sample(len(toks) - 1)
    for k in range(n):
        out.append(t)
        e.decode([(t, len(toks) + k, 0, True)])
        t = s.sample(0)
    s.close()
    e.close()
    return out, first


def eval_json(model, ref, *text: str) -> dict:
    # `reverb eval` takes its thread count from REVERB_THREADS like the servers (the suite's share of the cores)
    out = subprocess.run([sys.executable, "-m", "reverb.cli", "eval", str(model), "--ref", str(ref), "--json",
                          "--threads", str(engine_threads()), *text], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory, model_path):
    d = tmp_path_factory.mktemp("roundtrip")
    assert reverb("export-hf", str(model_path), "-o", str(d / "hf")).returncode == 0
    out = reverb("convert", str(d / "hf"), "-o", str(d / "f32.gguf"), "--outtype", "f32")
    assert out.returncode == 0, out.stderr
    assert "pre-tokenizer smollm" in out.stdout
    # llama.cpp's own dequantization of the original: the F32 reference our round trip must equal
    assert reverb("quantize", str(model_path), str(d / "orig_f32.gguf"), "--type", "F32").returncode == 0
    # The first half of the shipped text (one 512-token window, 314 tokens): the report's arithmetic is a model
    # pass per token over both models, so half the text is half the cost (the shipped text is the default:
    # test_eval_reads_the_shipped_text_by_default, on the tiny Qwen2).
    words = EVAL_TEXT.read_text(encoding="utf-8").split(" ")
    (d / "half.txt").write_text(" ".join(words[:len(words) // 2]), encoding="utf-8")
    return d


def test_hf_directory_has_the_expected_files(round_trip):
    hf = round_trip / "hf"
    assert {p.name for p in hf.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                              "tokenizer_config.json"}
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert "<|im_start|>" in json.loads((hf / "tokenizer_config.json").read_text())["chat_template"]


def test_converted_f32_equals_the_original_and_keeps_its_tokenizer(round_trip, model_path):
    ours, ours_logits = greedy(round_trip / "f32.gguf")
    ref, ref_logits = greedy(round_trip / "orig_f32.gguf")
    assert ours == ref  # same greedy tokens
    assert np.abs(ours_logits - ref_logits).max() <= 1e-4  # measured: 0.0
    orig = Engine(model_path, EngineConfig(n_ctx=256, n_seq=1, n_threads=1, n_threads_batch=1))
    conv = Engine(round_trip / "f32.gguf", EngineConfig(n_ctx=256, n_seq=1, n_threads=1, n_threads_batch=1))
    text = "Grüße, 日本語 and <|im_end|> 12345 tokens!"
    assert conv.tokenize(text, special=True) == orig.tokenize(text, special=True)
    assert conv.chat_template() == orig.chat_template()
    orig.close()
    conv.close()


def test_converted_f32_against_the_q4_1_original(round_trip, model_path):
    # Q4_1 matmuls quantize activations to 8 bits, F32 ones do not: close, not identical.
    r = eval_json(round_trip / "f32.gguf", model_path, "--text", str(round_trip / "half.txt"))
    assert 250 < r["tokens"] < 400   # --text: the given file's tokens (314), not the shipped text's (627)
    assert r["top1_agreement"] >= 0.93 and r["kl_mean"] <= 0.006  # measured on half.txt: 0.949, 0.0029


# measured on half.txt (on the whole text: .951, .0041 and .837, .056)
@pytest.mark.parametrize("qtype,min_top1,max_kl", [("Q8_0", 0.92, 0.01),     # measured 0.943, 0.0043
                                                   ("Q4_K_M", 0.78, 0.10)])  # measured 0.838, 0.058
def test_quantized_quality_report(round_trip, qtype, min_top1, max_kl):
    out = round_trip / f"{qtype}.gguf"
    q = reverb("quantize", str(round_trip / "f32.gguf"), str(out), "--type", qtype)
    assert q.returncode == 0, q.stderr
    r = eval_json(out, round_trip / "f32.gguf", "--text", str(round_trip / "half.txt"))
    assert 250 < r["tokens"] < 400
    assert r["top1_agreement"] >= min_top1 and r["kl_mean"] <= max_kl, r
    assert r["ppl_model"] >= r["ppl_ref"] * 0.98


def test_converted_model_serves(round_trip, tmp_path):
    toml = round_trip / "models.toml"   # beside the converted file: no 540 MB copy
    toml.write_text('default = "mine"\n[models.mine]\nsource = "path"\nfile = "f32.gguf"\nctx = 512\n')
    srv = Server(tmp_path / "srv", "--models", str(toml)).start()
    try:
        with srv.client() as http:
            r = http.post("/v1/chat/completions", json={"model": "mine", "max_tokens": 8, "temperature": 0,
                                                        "messages": [{"role": "user", "content": "Hi"}]})
    finally:
        srv.stop()
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen2")
    weights = qwen2_tiny.write(d / "hf")
    out = reverb("convert", str(d / "hf"), "-o", str(d / "f32.gguf"), "--outtype", "f32")
    assert out.returncode == 0, out.stderr
    assert "Qwen2ForCausalLM" in out.stdout and "pre-tokenizer qwen2" in out.stdout
    return d, weights


def test_qwen2_logits_match_a_numpy_forward_pass(qwen2):
    d, weights = qwen2
    e = Engine(d / "f32.gguf", EngineConfig(n_ctx=256, n_seq=1, n_threads=engine_threads(),
                                            n_threads_batch=engine_threads(), n_ubatch=512,
                                            all_logits=True))
    toks = e.tokenize("the theory of the thin ether, then the rest", special=False)
    assert 257 in toks  # a merge from tokenizer.json was applied
    e.decode([(t, i, 0, True) for i, t in enumerate(toks)])
    ours = np.stack([e.logits(i) for i in range(len(toks))])
    assert "<|im_start|>" in e.chat_template()
    e.close()
    ref = qwen2_tiny.forward(weights, toks)
    assert np.abs(ours - ref).max() <= 0.1  # measured 0.016 on logits up to ~18 (f16 KV cache)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()  # the same greedy choice at every position


@pytest.mark.parametrize("qtype,min_top1,max_kl", [("Q8_0", 0.93, 0.01),    # measured 0.958, 0.0041
                                                   ("Q4_K_M", 0.60, 0.5)])  # measured 0.700, 0.35
def test_qwen2_quantized_quality(qwen2, qtype, min_top1, max_kl):
    d, _ = qwen2
    assert reverb("quantize", str(d / "f32.gguf"), str(d / f"{qtype}.gguf"), "--type", qtype).returncode == 0
    # the suite's share of the cores: on this tiny model two llama.cpp threads mostly wait for each other (~1.5 s of
    # CPU a report more than one thread, with the same figures)
    r = evaluate.compare(d / f"{qtype}.gguf", d / "f32.gguf", EVAL_TEXT.read_text(), 512, engine_threads())
    assert r["top1_agreement"] >= min_top1 and r["kl_mean"] <= max_kl, r


def test_eval_reads_the_shipped_text_by_default(qwen2):
    """`reverb eval` without --text scores the text shipped with reverb: its report is the in-process one over
    EVAL_TEXT, token for token (a model against itself: no divergence, full agreement)."""
    d, _ = qwen2
    cli = eval_json(d / "f32.gguf", d / "f32.gguf")
    ours = evaluate.compare(d / "f32.gguf", d / "f32.gguf", EVAL_TEXT.read_text(), 512, engine_threads())
    assert cli["tokens"] == ours["tokens"] > 500
    assert cli == pytest.approx(ours, rel=1e-6, abs=1e-9)
    assert cli["top1_agreement"] == 1.0 and cli["kl_mean"] == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("outtype,min_top1", [("f16", 0.99), ("bf16", 0.97), ("q8_0", 0.93)])  # 0.9996 .987 .958
def test_qwen2_outtypes(qwen2, outtype, min_top1):
    d, _ = qwen2
    out = reverb("convert", str(d / "hf"), "-o", str(d / f"{outtype}.gguf"), "--outtype", outtype)
    assert out.returncode == 0, out.stderr
    r = evaluate.compare(d / f"{outtype}.gguf", d / "f32.gguf", EVAL_TEXT.read_text(), 512, engine_threads())
    assert r["top1_agreement"] >= min_top1, r


def test_convert_errors_are_clear_and_leave_nothing(qwen2, tmp_path):
    d, _ = qwen2
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bad / f).write_text((d / "hf" / f).read_text())
    (bad / "config.json").write_text(json.dumps({"architectures": ["GPTNeoXForCausalLM"]}))
    out = reverb("convert", str(bad), "-o", str(tmp_path / "x.gguf"))
    assert out.returncode == 2 and "not supported" in out.stderr and "Traceback" not in out.stderr
    cfg = json.loads((d / "hf" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(cfg))
    out = reverb("convert", str(bad), "-o", str(tmp_path / "x.gguf"))  # no weights
    assert out.returncode == 2 and "safetensors" in out.stderr
    assert not list(tmp_path.glob("x.gguf*"))


def test_export_of_a_file_that_is_not_gguf_is_a_clear_error(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all")
    out = reverb("export-hf", str(tmp_path / "x.gguf"), "-o", str(tmp_path / "hf"))
    assert out.returncode == 2 and "Traceback" not in out.stderr and "reverb: error:" in out.stderr
