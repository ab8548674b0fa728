"""The CLI as one tool: model references (refs.py), quant picking, keep_alive, help with one default per line and
groups, the old --models / REVERB_MODELS_PATH names, one clear line for a taken port, a bad host or a missing model,
and `reverb chat`'s /set, /show, /save and /load. Fast: nothing here loads a model."""

from __future__ import annotations

import socket

import pytest

from reverb.api import wire
from reverb.errors import ConfigError, InvalidRequest, ModelNotFound
from reverb.models import refs
from reverb.models import registry as registry_mod
from reverb.settings import PACKAGED_MODELS_TOML, Settings

from .conftest import reverb


def test_quant_is_picked_from_the_file_list():
    files = ["README.md", "m-Q8_0.gguf", "m-Q4_K_M.gguf", "mmproj-m-F16.gguf", "m-IQ4_XS.gguf",
             "big/m-Q6_K-00001-of-00003.gguf", "big/m-Q6_K-00002-of-00003.gguf", "big/m-Q6_K-00003-of-00003.gguf"]
    assert refs.pick(files, None, "r") == "m-Q4_K_M.gguf"            # the preferred quant
    assert refs.pick(files, "Q8_0", "r") == "m-Q8_0.gguf"
    assert refs.pick(files, "Q6_K", "r") == "big/m-Q6_K-00001-of-00003.gguf"   # a multi-part file: its first part
    with pytest.raises(ModelNotFound, match="IQ4_XS, Q4_K_M, Q6_K, Q8_0"):
        refs.pick(files, "Q2_K", "r")                               # never a projector, never another quant
    with pytest.raises(ModelNotFound, match="no GGUF"):
        refs.pick(["README.md"], None, "r")
    assert refs.split_parts("d/x-00001-of-00003.gguf") == ["d/x-00001-of-00003.gguf", "d/x-00002-of-00003.gguf",
                                                          "d/x-00003-of-00003.gguf"]
    assert refs.quant_of("Qwen2.5-7B-Instruct-q4_k_m.gguf") == "Q4_K_M"


def test_hub_references_and_names():
    assert refs.parse_hub("hf.co/owner/repo:q4_k_m") == ("owner/repo", "Q4_K_M")
    assert refs.parse_hub("huggingface.co/owner/repo") == ("owner/repo", None)
    assert refs.hub_name("https://huggingface.co/o/r:Q8_0") == "hf.co/o/r:Q8_0"
    for bad in ("hf.co/owner", "hf.co/../x", "hf.co/o/r:Q4 K", "hf.co/o/r/extra"):
        with pytest.raises(ConfigError, match="hf.co/OWNER/REPO"):
            refs.parse_hub(bad)


def test_files_named_on_the_command_line(tmp_path, model_path):
    reg = registry_mod.load(PACKAGED_MODELS_TOML)
    link = tmp_path / "x y.gguf"
    link.symlink_to(model_path)
    extended, names = refs.resolve(reg, ("smollm2-135m", str(link)))
    assert names == ["smollm2-135m", "x-y"]
    spec = extended.specs["x-y"]
    assert (spec.source, spec.price_input, spec.price_output, spec.ctx) == ("file", 0, 0, 0)
    assert registry_mod.local_path(spec) == link.resolve()
    with pytest.raises(ConfigError, match="no such GGUF file"):
        refs.resolve(reg, (str(tmp_path / "missing.gguf"),))
    (tmp_path / "s-00002-of-00002.gguf").write_bytes(b"x")
    with pytest.raises(ConfigError, match="give the first part"):
        refs.resolve(reg, (str(tmp_path / "s-00002-of-00002.gguf"),))
    with pytest.raises(ModelNotFound, match="hf.co/OWNER/REPO"):
        refs.resolve(reg, ("no-such-model",))


def keep_alive(fields: dict) -> float | None:
    """The Ask's keep_alive from a chat body with ``fields`` (the field table's row, api/wire.py)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return wire.parse(body, wire.CHAT, Settings())[0].keep_alive


def test_keep_alive_as_ollama_takes_it():
    assert keep_alive({}) is None
    assert keep_alive({"keep_alive": 30}) == 30 and keep_alive({"keep_alive": "10m"}) == 600
    assert keep_alive({"keep_alive": "1h"}) == 3600 and keep_alive({"keep_alive": "0"}) == 0
    assert keep_alive({"keep_alive": -1}) == -1 and keep_alive({"keep_alive": "-5m"}) == -1
    for bad in ("soon", True, [], "1d", 10**9):
        with pytest.raises(InvalidRequest) as e:
            keep_alive({"keep_alive": bad})
        assert e.value.param == "keep_alive"


def test_help_is_grouped_with_one_default_a_line():
    out = reverb("serve", "--help")
    assert out.returncode == 0
    for group in ("catalogue and ledger:", "network and keys:", "engine (llama.cpp):", "models on demand:",
                  "HTTP limits:", "operations:"):
        assert group in out.stdout
    text = " ".join(out.stdout.split())
    for chunk in text.split(" --")[1:]:
        assert chunk.count("(default") <= 1, chunk


def test_old_catalogue_names_still_work_with_a_note(tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text('[models.only]\nsource = "path"\nfile = "x.gguf"\n')
    out = reverb("models", "--models", str(toml))
    assert out.returncode == 0 and "only" in out.stdout and "--models is deprecated; use --catalogue" in out.stderr
    out = reverb("models", "list", env={"REVERB_MODELS_PATH": str(toml)})
    assert out.returncode == 0 and "only" in out.stdout and "REVERB_MODELS_PATH is deprecated" in out.stderr
    assert Settings.build({"REVERB_CATALOGUE": str(toml)}).catalogue_path == toml


def one_line(out) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    return lines[0]


def test_a_taken_port_a_bad_host_and_a_missing_model_are_one_line_each(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = one_line(reverb("serve", "--port", port, "--api-key", "k", "--db", str(tmp_path / "l.db")))
    assert f"port {port} on 127.0.0.1 is in use" in line and "--port 0" in line
    line = one_line(reverb("serve", "--host", "no-such-host.invalid", "--api-key", "k", "--port", "0"))
    assert "127.0.0.1" in line and "0.0.0.0" in line
    line = one_line(reverb("serve", "nope", "--api-key", "k", "--port", "0", "--db", str(tmp_path / "l.db")))
    assert "no model 'nope'" in line and "smollm2-135m" in line and ".gguf" in line


def test_chat_set_show_save_load(tmp_path, monkeypatch, capsys):
    from reverb.cli import chat
    from reverb.types import SamplingParams
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    sent = []

    class Backend:
        model = "fake"

        def stream(self, messages, params, max_tokens):
            sent.append((list(messages), params, max_tokens))
            yield "ok"

        def cancel(self):
            pass

        def close(self):
            pass

    lines = iter(["/set system be brief", "/set temperature 0.2", "/set seed 7", "/set max-tokens 9",
                  "/set temperature hot", "hello", "/show", "/save first", "/reset", "/set system",
                  "/load first", "again", "/load ../etc", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert chat.run(Backend(), SamplingParams(), 512) == 0
    messages, params, max_tokens = sent[0]
    assert messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert (params.temperature, params.seed, max_tokens) == (0.2, 7, 9)
    # loaded back after /reset and removing the system message: the conversation and its settings
    messages, params, max_tokens = sent[1]
    assert [m["content"] for m in messages] == ["be brief", "hello", "ok", "again"]
    assert (params.temperature, params.seed, max_tokens) == (0.2, 7, 9)
    out = capsys.readouterr().out
    assert "temperature: 0.2" in out and "seed: 7" in out and "not a number" in out
    assert (tmp_path / "reverb" / "chats" / "first.json").is_file()
    assert "a name of letters" in out   # /load ../etc never leaves the chats folder


def test_quantize_shows_one_progress_bar_not_llama_cpp_lines(tmp_path, model_path):
    out = reverb("quantize", str(model_path), str(tmp_path / "q8.gguf"), "--type", "Q8_0")
    assert out.returncode == 0, out.stderr
    assert "(Q8_0)" in out.stdout
    assert "quantizing to Q8_0" in out.stderr and "272/272" in out.stderr
    # nothing but the bar, redrawn in place (text mode reads its \r as a line end): no llama.cpp line
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert all(line.startswith("quantizing to Q8_0:") for line in lines), out.stderr[:2000]


def test_the_start_up_banner_names_models_slots_and_threads(tmp_path):
    from reverb import service as service_mod
    from reverb.cli.serve import banner

    from .fakes import fake_llama
    settings = Settings.build(environ={}, api_keys=("dev",), parallel=2, threads=1, db=tmp_path / "l.sqlite3")
    svc = service_mod.build(settings, backend_factory=fake_llama)
    try:
        line = banner(svc, "http://127.0.0.1:1")
    finally:
        svc.close()
    assert line.startswith("reverb: serving smollm2-135m (context ") and "[2 slots, 1 threads]" in line, line
    assert line.endswith("Ctrl-C to stop")


def test_a_bad_thread_count_is_one_line_of_error(tmp_path):
    """A bad REVERB_THREADS or --threads is one line of error, never a traceback from building the command line."""
    env = {"REVERB_THREADS": "abc"}
    listed = reverb("keys", "list", "--db", str(tmp_path / "l.sqlite3"), env=env)
    assert listed.returncode == 2 and "Traceback" not in listed.stderr and "REVERB_THREADS" in listed.stderr
    for args, extra in ((["eval", "a.gguf", "--ref", "b.gguf"], env), (["eval", "a.gguf", "--ref", "b.gguf",
                                                                         "--threads", "-2"], {})):
        out = reverb(*args, env=extra)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "must be 0 (the usable cores) or more" in out.stderr
