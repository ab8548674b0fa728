"""`reverb pull`, `models`, `rm` against a loopback hub: real huggingface_hub code, no mocks of it."""

from __future__ import annotations

import os

import pytest

from .conftest import reverb
from .hubserver import Hub

pytestmark = pytest.mark.model  # starts servers or loads models: the slow tier

REPO = "reverb-test/tiny-GGUF"
FILE = "tiny.Q4_1.gguf"


@pytest.fixture
def hub(tmp_path, model_path):
    hub = Hub()
    # 24 MB of real GGUF bytes: more than two of huggingface_hub's 10 MB read chunks, so a cut at half lands
    # after a chunk was written and the retry resumes with a Range request
    with open(model_path, "rb") as f:
        data = f.read(24 << 20)
    sha = hub.add(REPO, FILE, data)
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "10"}
    yield hub, data, sha, env
    hub.close()


def catalogue(tmp_path, sha: str | None = None, file: str = FILE, repo: str = REPO):
    pin = f'sha256 = "{sha}"\n' if sha else ""
    p = tmp_path / "models.toml"
    p.write_text(f'default = "tiny"\n[models.tiny]\nsource = "hf"\nrepo = "{repo}"\nfile = "{file}"\n'
                 f'revision = "main"\nquant = "Q4_1"\nctx = 512\n{pin}')
    return str(p)


def cached_files(env) -> list:
    root = os.path.join(env["HF_HOME"], "hub")
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


def test_good_download_is_verified_listed_and_removed(tmp_path, hub):
    hub, data, sha, env = hub
    toml = catalogue(tmp_path, sha)
    out = reverb("pull", "tiny", "--models", toml, env=env)
    assert out.returncode == 0, out.stderr
    assert "sha256 verified" in out.stdout
    blobs = [f for f in cached_files(env) if "/blobs/" in f]
    assert len(blobs) == 1 and open(blobs[0], "rb").read() == data
    listing = reverb("models", "--models", toml, env=env)
    assert "tiny" in listing.stdout and "yes" in listing.stdout
    # offline afterwards: served from the cache, no request reaches the hub
    n = len(hub.requests)
    assert reverb("pull", "tiny", "--offline", "--models", toml, env=env).returncode == 0
    assert len(hub.requests) == n
    rm = reverb("rm", "tiny", "--models", toml, env=env)
    assert rm.returncode == 0 and "removed" in rm.stdout
    assert not [f for f in cached_files(env) if "/blobs/" in f]
    assert " no " in reverb("models", "--models", toml, env=env).stdout


def test_checksum_mismatch_leaves_nothing_loadable(tmp_path, hub):
    hub, data, sha, env = hub
    toml = catalogue(tmp_path, "0" * 64)
    out = reverb("pull", "tiny", "--models", toml, env=env)
    assert out.returncode != 0
    assert "does not match" in out.stderr and REPO in out.stderr and "Traceback" not in out.stderr
    assert not [f for f in cached_files(env) if f.endswith(FILE) or "/blobs/" in f]


def test_cut_download_resumes_where_it_stopped(tmp_path, hub):
    hub, data, sha, env = hub
    toml = catalogue(tmp_path, sha)
    hub.cut_next = True  # the connection drops halfway through the body
    out = reverb("pull", "tiny", "--models", toml, env=env)
    assert out.returncode == 0, out.stderr
    gets = [r for r in hub.requests if r[0] == "GET" and FILE in r[1]]
    assert gets[0][2] is None and gets[1][2] is not None
    resumed_at = int(gets[1][2].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(data) // 2  # it asked only for the rest
    blob = [f for f in cached_files(env) if "/blobs/" in f]
    assert open(blob[0], "rb").read() == data


def test_download_that_gives_up_leaves_nothing_and_retries_cleanly(tmp_path, hub):
    hub, data, sha, env = hub
    toml = catalogue(tmp_path, sha)
    hub.cut_next = hub.fail_after_cut = True
    first = reverb("pull", "tiny", "--models", toml, env=env)
    assert first.returncode != 0 and "run the same command again" in first.stderr
    assert "Traceback" not in first.stderr
    assert not [f for f in cached_files(env) if "/blobs/" in f or f.endswith(FILE)]
    hub.failing = False
    assert reverb("pull", "tiny", "--models", toml, env=env).returncode == 0


def test_offline_without_cache_is_a_clear_error(tmp_path, hub):
    hub, data, sha, env = hub
    toml = catalogue(tmp_path, sha)
    for extra, e in ((["--offline"], env), ([], {**env, "HF_HUB_OFFLINE": "1"})):
        out = reverb("pull", "tiny", "--models", toml, *extra, env=e)
        assert out.returncode != 0 and "offline" in out.stderr and REPO in out.stderr
    assert not hub.requests


@pytest.mark.parametrize("repo,file", [(REPO, "missing.gguf"), ("nobody/none", FILE)])
def test_missing_repo_or_file_names_them(tmp_path, hub, repo, file):
    hub, data, sha, env = hub
    out = reverb("pull", "tiny", "--models", catalogue(tmp_path, repo=repo, file=file), env=env)
    assert out.returncode != 0
    assert repo in out.stderr and file in out.stderr and "not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_never_downloads_without_pull(tmp_path, hub):
    hub, data, sha, env = hub
    out = reverb("serve", "--models", catalogue(tmp_path, sha), "--port", "0", "--api-key", "k",
                 "--db", str(tmp_path / "l.db"), env=env)
    assert out.returncode != 0 and "reverb pull tiny" in out.stderr
    assert not hub.requests


def test_rm_refuses_names_that_are_not_in_the_catalogue(tmp_path, hub):
    hub, data, sha, env = hub
    toml = catalogue(tmp_path, sha)
    for name in ("../etc", "/abs", "nope"):
        out = reverb("rm", name, "--models", toml, env=env)
        assert out.returncode != 0 and "Traceback" not in out.stderr


def test_serve_with_pull_downloads_verifies_and_serves(tmp_path, model_path):
    hub = Hub()
    try:
        sha = hub.add(REPO, FILE, model_path.read_bytes())
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
        from .conftest import Server
        srv = Server(tmp_path / "srv", "--models", catalogue(tmp_path, sha), "--pull", env=env).start(timeout=120)
        try:
            with srv.client() as http:
                r = http.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 4,
                                                            "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200 and r.json()["model"] == "tiny"
        finally:
            srv.stop()
        assert any(m == "GET" and FILE in p for m, p, _ in hub.requests)
    finally:
        hub.close()
