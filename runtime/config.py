"""Settings: defined once, built once (from CLI flags and REVERB_* environment variables), passed down.

No module reads ``os.environ`` at import time; ``Settings.build`` is the one place that reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .errors import ConfigError

PROJECT_MODELS_TOML = Path(__file__).resolve().parent.parent / "models.toml"


def default_data_dir(environ: os._Environ | dict | None = None) -> Path:
    """Where the ledger lives by default: $XDG_DATA_HOME/reverb, else ~/.local/share/reverb."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "reverb"


@dataclass(frozen=True)
class Settings:
    models_path: Path = PROJECT_MODELS_TOML
    models: tuple[str, ...] = ()      # models to load; empty: the catalogue's default
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    db: Path | None = None            # None: default_data_dir()/ledger.sqlite3
    log_bodies: bool = False
    # engine
    threads: int = 0                  # 0: number of CPU cores
    threads_batch: int = 0            # 0: same as threads
    ctx: int = 0                      # context per slot; 0: the model's own (models.toml) value
    parallel: int = 4                 # slots decoded together in one batch
    batch: int = 512                  # llama.cpp logical batch: tokens per decode step
    ubatch: int = 32                  # llama.cpp physical batch; < 64 keeps results batch-invariant (engine.py)
    prefill_chunk: int = 128          # prompt tokens per slot per step, so long prompts never stall streams
    flash_attn: bool = True
    max_queue: int = 64               # requests waiting for a slot before 503
    queue_timeout: float = 60.0       # seconds a request may wait for a slot before 503
    pull: bool = False                # serve may download missing models only when told to
    probe_models: bool = True         # trial-load each model in a child process first (runtime/probe.py)
    offline: bool = False
    # HTTP limits
    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_message_chars: int = 200_000
    max_tokens_cap: int = 8192
    max_json_depth: int = 32
    allowed_hosts: tuple[str, ...] = ()   # extra Host names accepted besides localhost and the bind address
    cors_origins: tuple[str, ...] = ()
    stream_write_timeout: float = 30.0
    body_timeout: float = 30.0        # seconds for a whole request body to arrive (slowloris)
    max_connections: int = 256        # open connections before uvicorn answers 503
    db_busy_timeout: float = 10.0     # seconds a ledger write waits for a lock before failing closed
    db_max_mb: float = 0              # cap on the ledger's size (0: none); past it requests fail closed
    # operations
    ready_file: Path | None = None
    metrics_public: bool = False
    log_format: str = "console"       # console | json

    @property
    def db_path(self) -> Path:
        return self.db if self.db is not None else default_data_dir() / "ledger.sqlite3"

    @property
    def n_threads(self) -> int:
        return self.threads or max(1, os.cpu_count() or 1)

    @property
    def n_threads_batch(self) -> int:
        return self.threads_batch or self.n_threads

    @classmethod
    def build(cls, environ: os._Environ | dict | None = None, **overrides) -> "Settings":
        """Defaults, then REVERB_* environment variables, then explicit overrides (CLI flags).

        Raises ConfigError for an environment value of the wrong type.
        """
        env = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = env.get("REVERB_" + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse_env(f.name, raw, f.default)
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
            "prefill_chunk": self.prefill_chunk >= 2, "threads": self.threads >= 0, "ctx": self.ctx >= 0,
            "port": 0 <= self.port <= 65535, "log_format": self.log_format in ("console", "json"),
            "queue_timeout": self.queue_timeout > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"setting {name}={getattr(self, name)!r} is out of range", param=name)

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)


def _parse_env(name: str, raw: str, default) -> object:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(p for p in raw.split(",") if p)
        if name in ("models_path", "db", "ready_file"):
            return Path(raw)
        return raw
    except ValueError:
        raise ConfigError(f"environment variable REVERB_{name.upper()}={raw!r} has the wrong type",
                          param=name) from None

