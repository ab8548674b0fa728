"""Settings: declared once (here), built once (defaults, then REVERB_* environment variables, then CLI flags),
passed down.

Each field carries its CLI help in its metadata; ``cli/flags.py`` generates the flags from these fields, so a
setting, its flag, its environment variable and its default can never drift apart. No module reads
``os.environ`` at import time; ``Settings.build`` is the one place that reads it.
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import ConfigError

PACKAGED_MODELS_TOML = Path(__file__).resolve().parent / "models.toml"   # the catalogue shipped in the wheel


def default_data_dir(environ: os._Environ | dict | None = None) -> Path:
    """Where the ledger lives by default: $XDG_DATA_HOME/reverb, else ~/.local/share/reverb."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "reverb"


def _opt(default, help: str, cli: str | None = "serve", **extra):  # noqa: A002 - argparse's own word
    """A setting with its CLI help. ``cli``: which commands take it as a flag ("serve", "common" for every
    command that opens the catalogue or the ledger, None for none). ``extra``: flag, choices, metavar."""
    return field(default=default, metadata={"help": help, "cli": cli, **extra})


@dataclass(frozen=True)
class Settings:
    models_path: Path | None = _opt(None, "the model catalogue, a models.toml (default: ./models.toml if there is "
                                    "one, else the catalogue shipped with reverb)", "common", flag="--catalogue",
                                    old_flag="--models", metavar="PATH")
    db: str | None = _opt(None, "the ledger: a SQLite file (default: $XDG_DATA_HOME/reverb/ledger.sqlite3, or "
                          "~/.local/share/reverb/ledger.sqlite3), or postgresql://user@host:port/dbname for several "
                          "servers on one ledger", "common", metavar="PATH|URL")
    models: tuple[str, ...] = _opt((), "model to serve: a catalogue name, a .gguf file or hf.co/OWNER/REPO[:QUANT] "
                                   "(repeatable; default: the catalogue's default)", flag="--model", metavar="NAME")
    host: str = _opt("127.0.0.1", "bind address")
    port: int = _opt(8000, "port (0 picks a free one)")
    api_keys: tuple[str, ...] = _opt((), "accept this key, with unlimited credit (repeatable; also REVERB_API_KEY, "
                                     "comma-separated)", flag="--api-key", metavar="KEY")
    log_bodies: bool = _opt(False, "store request bodies in the ledger")
    # engine
    threads: int = _opt(0, "llama.cpp threads for decoding (0: the cores this process may use, fewer while other "
                        "work takes some of them; N: always N)")
    threads_batch: int = _opt(0, "llama.cpp threads for prompt prefill (0: same as --threads)")
    ctx: int = _opt(0, "context tokens per slot (0: the catalogue entry's ctx; for a model named on the command line, "
                    "the file's, at most 8192)")
    parallel: int = _opt(4, "slots decoded together in one batch")
    batch: int = _opt(2048, "llama.cpp logical batch: most tokens in one decode step")
    ubatch: int = _opt(512, "llama.cpp physical batch: most tokens in one compute pass")
    prefill_chunk: int = _opt(512, "prompt tokens per slot per step, so a long prompt stalls the running streams for "
                              "at most one chunk")
    flash_attn: bool = _opt(True, "flash attention")
    deterministic: bool = _opt(False, "a seeded request gives the same tokens alone, under load and with a cached "
                               "prefix (fixed kernel paths; costs a little speed, see docs/performance.md)")
    prompt_cache_mb: float = _opt(1024.0, "host memory for prompt prefixes beyond the slots, so the next turn of a "
                                  "chat is not recomputed after its slot served others (0: off)", metavar="MB")
    share_prompt_cache: bool = _opt(False, "let a cached prompt prefix serve any API key (single-tenant servers "
                                    "only: a shared cache lets one key time another key's prompts)")
    max_queue: int = _opt(64, "requests that may wait for a slot beyond the free ones before 503")
    queue_timeout: float = _opt(60.0, "seconds a request may wait for a slot before 503")
    pull: bool = _opt(False, "download missing hub models before serving")
    probe_models: bool = _opt(True, "trial-load each model in a child process first, so a file that crashes "
                              "llama.cpp cannot take the server down")
    offline: bool = _opt(False, "never touch the network (also HF_HUB_OFFLINE=1)")
    slots_per_key: int = _opt(0, "slots one API key's running requests may hold (a request of n choices holds n; "
                              "0: one less than --parallel, so one key never holds every slot; at least 1). Keys "
                              "given with --api-key are the operator's and not capped")
    queue_per_key: int = _opt(32, "jobs one API key may have waiting for a slot (one per prompt of "
                              "/v1/completions) before 503 (not for keys given with --api-key)")
    embedding_queue: int = _opt(4, "embeddings requests running or waiting per model before 503")
    draft_max: int = _opt(16, "most draft tokens verified per stream in one decode step: a request's prediction, "
                          "the tokens a grammar forces, or --speculate's guesses (0: none; docs/predicted-outputs.md)")
    fast_forward: bool = _opt(True, "decode the tokens a JSON schema or tool grammar forces in one batch, verified "
                              "like a draft (same answer, fewer steps)")
    speculate: str = _opt("off", "draft tokens without a prediction: 'ngram' guesses from the request's own prompt "
                          "and output, verified like a prediction (same answer)", choices=("off", "ngram"))
    # models on demand (loader.py)
    on_demand: bool = _opt(False, "serve every local model of the catalogue: load one on its first request, unload "
                           "it after --keep-alive idle (off: the models given at start are loaded and kept)")
    keep_alive: float = _opt(300.0, "with --on-demand, seconds a model stays loaded after its last request (negative: "
                             "until the server stops; a request's keep_alive overrides)", metavar="SECONDS")
    max_loaded_models: int = _opt(3, "with --on-demand, most local models loaded at once (0: no limit); the least "
                                  "recently used idle one is unloaded to make room")
    models_memory: float = _opt(0.0, "with --on-demand, memory for loaded models in MB, counted as file size plus "
                                "KV cache (0: no limit)", metavar="MB")
    load_timeout: float = _opt(300.0, "seconds a request waits for its model to load before 503",
                               metavar="SECONDS")
    prepare_workers: int = _opt(2, "threads per model that render and tokenize prompts and compile grammars (more "
                                "requests wait for one)")
    prepare_timeout: float = _opt(30.0, "seconds a request's preparation may take, waiting for a thread included, "
                                  "before 503")
    grammar_cpu_ms: int = _opt(10_000, "CPU time a JSON schema or tool grammar may use while writing one answer (then "
                               "the answer ends with grammar_too_costly)", metavar="MS")
    split_reasoning: bool = _opt(True, "send a thinking model's thought apart from its answer (chat: "
                                 "reasoning_content); off: the thought stays in the answer's text, markers and all "
                                 "(docs/reasoning.md)")
    # HTTP limits
    max_body_bytes: int = _opt(1 << 20, "largest request body in bytes (413 beyond)")
    max_messages: int = _opt(256, "most messages in one request")
    max_message_chars: int = _opt(200_000, "longest message, in characters")
    max_tokens_cap: int = _opt(8192, "largest max_tokens a request may ask for")
    max_json_depth: int = _opt(32, "deepest JSON nesting accepted in a body")
    allowed_hosts: tuple[str, ...] = _opt((), "also answer to this Host name besides localhost and the bind "
                                          "address (repeatable; '*' turns the check off)", flag="--allowed-host",
                                          metavar="NAME")
    cors_origins: tuple[str, ...] = _opt((), "send CORS headers for this origin (repeatable; '*' for any, never "
                                         "with credentials)", flag="--cors-origin", metavar="ORIGIN")
    stream_write_timeout: float = _opt(30.0, "seconds a stream may wait on a client that does not read before it "
                                       "is aborted")
    body_timeout: float = _opt(30.0, "seconds for a whole request body to arrive (408 beyond)")
    max_connections: int = _opt(256, "open connections; past it the oldest idle connection is closed, and "
                                "requests beyond this many in progress get 503")
    header_timeout: float = _opt(10.0, "seconds a connection has to send a complete request line and headers")
    keep_alive_timeout: float = _opt(5.0, "seconds an idle keep-alive connection stays open")
    drain_timeout: float = _opt(30.0, "on SIGTERM/SIGINT, seconds running requests may take to finish before "
                                "they are cut")
    db_busy_timeout: float = _opt(10.0, "seconds a ledger write waits for a lock before the request fails closed")
    db_max_mb: float = _opt(0.0, "cap on a SQLite ledger's size in MB (0: none); refusals stop being recorded at "
                            "90%% of it, and past it requests fail closed")
    lease_seconds: float = _opt(30.0, "this server's lease on the ledger, renewed every third of it; once a "
                                "server's lease has expired, any server of the ledger settles its holds")
    max_embedding_inputs: int = _opt(256, "most inputs in one /v1/embeddings request")
    max_embedding_tokens: int = _opt(16384, "most tokens, all inputs together, in one /v1/embeddings request")
    responses_ttl: float = _opt(30.0, "days a stored response (POST /v1/responses, store: true) is kept for GET and "
                                "previous_response_id (0: none is stored)")
    responses_max_bytes: int = _opt(4 << 20, "largest stored response, its conversation included, in bytes (a "
                                    "larger one is answered but not stored, and says so)")
    # operations
    ready_file: Path | None = _opt(None, "write the base URL here once the server accepts requests (removed on "
                                   "exit)", metavar="PATH")
    metrics_public: bool = _opt(False, "serve /metrics without a key to clients on a loopback address (a local "
                                "scraper); otherwise it needs an operator key (admin, or given with --api-key)")
    log_format: str = _opt("console", "access log format", choices=("console", "json"))
    exit_with_parent: bool = _opt(False, "drain and exit (as on SIGTERM) when the process that started this server "
                                  "dies, so a test run killed by CI leaves no server behind")
    test_control: str = _opt("", "serve the test-only control routes under /_reverb/ (faults, request journal) to "
                             "callers sending this secret as X-Reverb-Control; empty: the routes do not exist. For "
                             "servers started by a test suite only (prefer the environment variable)",
                             metavar="SECRET")
    ui: bool = _opt(True, "serve the web page at /ui: chat for any key, spend and activity for admin keys (its "
                    "files are public, its data needs a key)")

    @property
    def catalogue_path(self) -> Path:
        """models.toml: --models, else one in the working directory, else the one shipped with reverb."""
        if self.models_path is not None:
            return self.models_path
        local = Path("models.toml")
        return local if local.is_file() else PACKAGED_MODELS_TOML

    @property
    def db_target(self) -> str:
        """The ledger: --db as given (a path or a URL), else the default SQLite file."""
        return str(self.db) if self.db is not None else str(default_data_dir() / "ledger.sqlite3")

    @property
    def key_slots(self) -> int:
        """Slots one key may hold: --slots-per-key, or one less than --parallel (at least 1)."""
        return min(self.parallel, self.slots_per_key or max(1, self.parallel - 1))

    @classmethod
    def build(cls, environ: os._Environ | dict | None = None, **overrides) -> "Settings":
        """Defaults, then REVERB_* environment variables, then explicit overrides (CLI flags; None = not given).

        Raises ConfigError for an environment value of the wrong type or a value out of range.
        """
        env = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            old = OLD_ENV_NAMES.get(f.name)
            if raw is None and old and env.get(old) is not None:
                raw = env[old]
                import sys
                print(f"reverb: note: {old} is deprecated; use {env_name(f.name)}", file=sys.stderr)
            if raw is not None:
                values[f.name] = _parse_env(f.name, raw)
        # REVERB_API_KEY (singular) is the documented name for one key.
        if env.get("REVERB_API_KEY"):
            values["api_keys"] = tuple(k for k in env["REVERB_API_KEY"].split(",") if k)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raises ConfigError for values no server could run with."""
        checks = {
            "parallel": self.parallel >= 1, "batch": self.batch >= 2, "ubatch": self.ubatch >= 2,
            "max_queue": self.max_queue >= 0,
            "prefill_chunk": self.prefill_chunk >= 2, "threads": self.threads >= 0,
            "threads_batch": self.threads_batch >= 0, "ctx": self.ctx >= 0,
            "port": 0 <= self.port <= 65535, "log_format": self.log_format in ("console", "json"),
            "queue_timeout": self.queue_timeout > 0, "prepare_workers": self.prepare_workers >= 1,
            "prepare_timeout": self.prepare_timeout > 0, "grammar_cpu_ms": self.grammar_cpu_ms > 0,
            "lease_seconds": 0 < self.lease_seconds <= 86400,
            "db_max_mb": self.db_max_mb >= 0, "prompt_cache_mb": self.prompt_cache_mb >= 0,
            "slots_per_key": self.slots_per_key >= 0, "queue_per_key": self.queue_per_key >= 1,
            "embedding_queue": self.embedding_queue >= 1, "max_embedding_inputs": self.max_embedding_inputs >= 1,
            "max_embedding_tokens": self.max_embedding_tokens >= 1,
            "max_loaded_models": self.max_loaded_models >= 0, "models_memory": self.models_memory >= 0,
            "load_timeout": self.load_timeout > 0, "draft_max": 0 <= self.draft_max <= 256,
            "speculate": self.speculate in ("off", "ngram"),
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"setting {name}={getattr(self, name)!r} is out of range", param=name)
        if self.deterministic:  # prompt rows from 256 on run in passes of at least 64 rows (backends/llama/shapes.py)
            for name, least in (("ubatch", 64), ("prefill_chunk", 64), ("batch", self.parallel + 64)):
                if getattr(self, name) < least:
                    raise ConfigError(f"with deterministic on, setting {name} must be at least {least}", param=name)

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)


ENV_NAMES = {"models_path": "REVERB_CATALOGUE"}     # where the plain rule (REVERB_ + the field's name) reads badly
OLD_ENV_NAMES = {"models_path": "REVERB_MODELS_PATH"}   # still read, with a deprecation note


def env_name(name: str) -> str:
    return ENV_NAMES.get(name) or "REVERB_" + name.upper()


def field_type(name: str) -> type:
    """The plain type of a setting: bool, int, float, str, Path or tuple (Optional stripped)."""
    hint = typing.get_type_hints(Settings)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple
    return args[0] if args and origin is not None else hint


def _parse_env(name: str, raw: str) -> object:
    kind = field_type(name)
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is tuple:
            return tuple(p for p in raw.split(",") if p)
        return kind(raw)
    except ValueError:
        raise ConfigError(f"environment variable {env_name(name)}={raw!r} has the wrong type", param=name) from None
