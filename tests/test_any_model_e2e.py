"""Any GGUF without editing models.toml: a file named on the command line (absolute, through a symlink, in parts)
and hf.co/owner/repo[:QUANT] from a loopback hub (real huggingface_hub code), with `serve`, `pull`, `show`, `run`
and `ps`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT, reverb
from .gguf_split import split
from .hubserver import Hub

pytestmark = pytest.mark.model

REPO = "reverb-test/tiny-GGUF"


@pytest.fixture
def hub(tmp_path, model_path):
    hub = Hub()
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "10", "REVERB_THREADS": "1"}
    yield hub, env
    hub.close()


def ask(srv, model: str) -> "httpx.Response":  # noqa: F821
    with srv.client() as http:
        return http.post("/v1/chat/completions", json={"model": model, "max_tokens": 4, "temperature": 0,
                                                       "messages": [{"role": "user", "content": "Say hello"}]})


def test_serve_a_file_by_absolute_path_through_a_symlink(tmp_path, model_path, make_server):
    link = tmp_path / "elsewhere" / "My Model.Q4_1.gguf"
    link.parent.mkdir()
    link.symlink_to(model_path)     # a symlink and an absolute path: refused in models.toml, fine when named here
    srv = make_server(str(link), "--parallel", "1", "--ctx", "256")
    r = ask(srv, "My-Model.Q4_1")
    assert r.status_code == 200, r.text
    assert r.headers["x-reverb-price"] == "0"          # no prices given: free
    assert ask(srv, "smollm2-135m").json()["error"]["code"] == "model_not_found"   # only what was named
    ps = reverb("ps", "--url", srv.base_url, "--api-key", srv.key)
    assert ps.returncode == 0, ps.stderr
    assert "My-Model.Q4_1" in ps.stdout and "256" in ps.stdout
    assert "reverb: serving My-Model.Q4_1" in srv.log()


def test_catalogue_paths_stay_strict_and_say_what_to_do(tmp_path, model_path):
    (tmp_path / "m.gguf").symlink_to(model_path)
    (tmp_path / "models.toml").write_text('[models.m]\nsource = "path"\nfile = "m.gguf"\n')
    out = reverb("show", "m", "--catalogue", str(tmp_path / "models.toml"))
    assert out.returncode == 2 and "symlink" in out.stderr and "reverb serve" in out.stderr
    (tmp_path / "models.toml").write_text(f'[models.m]\nsource = "path"\nfile = "{model_path}"\n')
    out = reverb("models", "list", "--catalogue", str(tmp_path / "models.toml"))
    assert out.returncode == 2 and "relative" in out.stderr and "command line" in out.stderr


def test_show_reads_the_gguf_metadata(model_path):
    out = reverb("show", str(model_path))
    assert out.returncode == 0, out.stderr
    fields = dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())
    assert fields["architecture"] == "llama" and fields["quant"] == "Q4_1" and fields["license"] == "apache-2.0"
    assert fields["parameters"].startswith("134.5M")
    assert fields["context"].startswith("8192 trained")
    assert "lines" in fields["template"]


def test_hub_quant_picked_from_the_file_list_and_multi_part_pulled(tmp_path, model_path, hub):
    hub, env = hub
    hub.add(REPO, "tiny.Q4_1.gguf", model_path.read_bytes())
    hub.add(REPO, "tiny.Q8_0.gguf", b"GGUF not really")
    hub.add(REPO, "mmproj-tiny.Q4_1.gguf", b"a projector, never picked")
    # a quant that is not there: one line that lists the ones that are
    out = reverb("pull", f"hf.co/{REPO}:Q5_K_M", env=env)
    assert out.returncode == 2 and "Q4_1" in out.stderr and "Q8_0" in out.stderr, out.stderr
    # no quant asked: the preferred one of the list; only that file is fetched
    out = reverb("pull", f"hf.co/{REPO}", env=env)
    assert out.returncode == 0, out.stderr
    assert "tiny.Q4_1.gguf" in out.stdout
    assert " INFO " not in out.stderr          # other libraries' info lines only with --verbose
    verbose = reverb("pull", f"hf.co/{REPO}", "--verbose", env=env)
    assert verbose.returncode == 0 and "INFO httpx" in verbose.stderr and "HTTP Request" in verbose.stderr
    assert not any("Q8_0" in path or "mmproj" in path for _, path, _ in hub.requests)
    # a multi-part GGUF in a folder: every part pulled, the first one named
    parts = split(model_path, tmp_path / "split" / "tiny-split.gguf", 150)
    for p in parts:
        hub.add("reverb-test/split-GGUF", f"Q4_1/{p.name}", p.read_bytes())
    out = reverb("models", "pull", "hf.co/reverb-test/split-GGUF:Q4_1", env=env)
    assert out.returncode == 0, out.stderr
    assert "2 parts" in out.stdout and "-00001-of-00002.gguf" in out.stdout
    listing = reverb("models", "list", env=env).stdout.split("pulled from the hub")[1]
    assert f"hf.co/{REPO}:Q4_1 " in listing and "hf.co/reverb-test/split-GGUF:Q4_1 " in listing
    assert "(2 parts)" in listing
    # offline from here: served from the cache, chatted with through `reverb run`
    n = len(hub.requests)
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "reverb.cli", "run", "hf.co/reverb-test/split-GGUF:Q4_1",
                          "--max-tokens", "4", "--temperature", "0"],
                         input="Say hello\n", capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**__import__("os").environ, **offline, "REVERB_CTX": "256"})
    assert run.returncode == 0, run.stderr
    assert "reverb chat: hf.co/reverb-test/split-GGUF:Q4_1" in run.stdout
    assert len(hub.requests) == n


def test_serve_pulls_a_hub_model_named_on_the_command_line(tmp_path, model_path, hub, make_server):
    hub, env = hub
    hub.add(REPO, "tiny.Q4_1.gguf", model_path.read_bytes())
    srv = make_server(f"hf.co/{REPO}:q4_1", "--parallel", "1", "--ctx", "256", env=env)
    r = ask(srv, f"hf.co/{REPO}:Q4_1")
    assert r.status_code == 200, r.text
    with srv.client() as http:
        assert http.get("/v1/models").json()["data"][0]["id"] == f"hf.co/{REPO}:Q4_1"
