"""models.toml -> ModelSpec. Pure: reads the catalogue file and the local file system, never the network.

Format (see docs/models.md): a top-level ``default`` name and one ``[models.NAME]`` table per model with
``source = "package" | "hf" | "path" | "openai"`` and the fields that source needs (``openai``: an
OpenAI-compatible upstream, checked in ``models/upstream.py``). Every mistake is reported with the
file, the model and the field, because a typo in a price or a path should never surface as a 500 later.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import ConfigError, ModelNotFound, quote
from ..money import cost, format_money, parse_money  # noqa: F401  (re-exported: cli/keys.py and tests use them)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str                      # package | hf | path | openai; file: a GGUF named on the command line
    file: str = ""                   # file name inside the package / repo, the relative path, or (file) absolute
    package: str | None = None
    repo: str | None = None
    revision: str | None = None
    sha256: str | None = None
    ctx: int = 2048
    quant: str = ""
    price_input: int = 0             # micro-units per 1M prompt tokens
    price_output: int = 0            # micro-units per 1M completion tokens
    chat_template: str | None = None
    description: str = ""
    base_dir: Path = Path(".")       # directory of models.toml, for source = "path"
    # source = "openai": an OpenAI-compatible upstream (vLLM, llama-server, Ollama's /v1, a hosted API)
    base_url: str | None = None      # e.g. http://gpu-box:8000/v1 (no credentials, query or fragment)
    upstream_model: str | None = None   # the upstream's own model name (the table's `model` field)
    api_key_env: str | None = None   # the environment variable holding the upstream key (never the key itself)
    timeout: float = 120.0           # seconds to connect, and between bytes of the answer (the first included)
    fallbacks: tuple[str, ...] = ()  # catalogue names tried in order when this one fails before its first byte
    headers: tuple[tuple[str, str], ...] = ()   # extra request headers for the upstream
    provider: str = ""               # shown in /v1/models and `reverb models`; default: base_url's host
    deadline: float = 600.0          # seconds one upstream request may take in all (keep-alives do not extend it)

    @property
    def upstream(self) -> bool:
        return self.source == "openai"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Price in micro-units, rounded up so that a request is never free by rounding."""
        return cost(prompt_tokens, completion_tokens, self.price_input, self.price_output)


LOCAL, UPSTREAM = ("package", "hf", "path"), ("openai",)
SOURCES = LOCAL + UPSTREAM
# field -> (type check, sources that require it, sources that allow it)
_FIELDS: dict[str, tuple[type | tuple[type, ...], tuple[str, ...], tuple[str, ...]]] = {
    "source": (str, SOURCES, SOURCES),
    "file": (str, LOCAL, LOCAL),
    "package": (str, ("package",), ("package",)),
    "repo": (str, ("hf",), ("hf",)),
    "revision": (str, (), ("hf",)),
    "sha256": (str, (), LOCAL),
    "ctx": (int, (), SOURCES),
    "quant": (str, (), LOCAL),
    "price_input": ((int, float, str), (), SOURCES),
    "price_output": ((int, float, str), (), SOURCES),
    "chat_template": (str, (), LOCAL),
    "description": (str, (), SOURCES),
    "base_url": (str, UPSTREAM, UPSTREAM),
    "model": (str, UPSTREAM, UPSTREAM),
    "api_key_env": (str, (), UPSTREAM),
    "timeout": ((int, float), (), UPSTREAM),
    "fallbacks": (list, (), UPSTREAM),
    "headers": (dict, (), UPSTREAM),
    "provider": (str, (), UPSTREAM),
    "deadline": ((int, float), (), UPSTREAM),
}


@dataclass(frozen=True)
class Registry:
    path: Path
    default: str
    specs: dict[str, ModelSpec]

    def resolve(self, name: str | None) -> ModelSpec:
        """The spec for ``name`` (the default when None). Raises ModelNotFound; never falls back."""
        key = self.default if name is None else name
        spec = self.specs.get(key) if isinstance(key, str) else None
        if spec is None:
            raise ModelNotFound(f"The model '{quote(key)}' does not exist", param="model", model=str(key))
        return spec


def load(path: Path | str) -> Registry:
    """Parse and validate a models.toml. Raises ConfigError naming the file, the model and the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    unknown_top = set(data) - {"default", "models"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown top-level key '{sorted(unknown_top)[0]}'")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"{path}: needs at least one [models.NAME] table")
    specs = {name: _spec(path, name, table) for name, table in models.items()}
    for spec in specs.values():
        for other in spec.fallbacks:
            if other not in specs or other == spec.name:
                raise ConfigError(f"{path}: model '{spec.name}': field 'fallbacks' names '{other}', which is not "
                                  "another model of this catalogue", model=spec.name, param="fallbacks")
    default = data.get("default", next(iter(specs)))
    if not isinstance(default, str) or default not in specs:
        raise ConfigError(f"{path}: default = {default!r} is not one of the models")
    return Registry(path=path, default=default, specs=specs)


def _spec(path: Path, name: str, table: object) -> ModelSpec:
    where = f"{path}: model '{name}'"
    if not NAME_RE.match(name):
        raise ConfigError(f"{where}: name must be letters, digits, '.', '_' or '-'", model=name)
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table", model=name)
    for key, value in table.items():
        if key == "api_key":
            raise ConfigError(f"{where}: an upstream key is never written in models.toml; name the environment "
                              "variable that holds it with api_key_env", model=name, param=key)
        if key not in _FIELDS:
            raise ConfigError(f"{where}: unknown field '{key}'", model=name, param=key)
        kind = _FIELDS[key][0]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{where}: field '{key}' has the wrong type ({type(value).__name__})",
                              model=name, param=key)
    source = table.get("source")
    if source is None:
        raise ConfigError(f"{where}: missing field 'source'", model=name, param="source")
    if source not in SOURCES:
        raise ConfigError(f"{where}: field 'source' must be package, hf, path or openai", model=name,
                          param="source")
    for key, (_, required_for, allowed_for) in _FIELDS.items():
        if source in required_for and key not in table:
            raise ConfigError(f"{where}: missing field '{key}'", model=name, param=key)
        if source not in allowed_for and key in table:
            raise ConfigError(f"{where}: field '{key}' does not apply to source = \"{source}\"", model=name,
                              param=key)
    if source in UPSTREAM:
        from .upstream import upstream_fields  # the checks of source = "openai" entries
        return ModelSpec(name=name, source=source, ctx=_ctx(where, name, table),
                         price_input=_price(where, name, "price_input", table.get("price_input", 0)),
                         price_output=_price(where, name, "price_output", table.get("price_output", 0)),
                         description=table.get("description", ""), base_dir=path.resolve().parent,
                         **upstream_fields(where, name, table))
    _check_relative(where, name, table["file"])
    if "repo" in table and (not REPO_RE.match(table["repo"]) or ".." in table["repo"]):
        raise ConfigError(f"{where}: field 'repo' must look like owner/name", model=name, param="repo")
    sha = table.get("sha256")
    if sha is not None and not SHA256_RE.match(sha):
        raise ConfigError(f"{where}: field 'sha256' must be 64 lowercase hex digits", model=name, param="sha256")
    return ModelSpec(
        name=name, source=source, file=table["file"], package=table.get("package"), repo=table.get("repo"),
        revision=table.get("revision"), sha256=sha, ctx=_ctx(where, name, table), quant=table.get("quant", ""),
        price_input=_price(where, name, "price_input", table.get("price_input", 0)),
        price_output=_price(where, name, "price_output", table.get("price_output", 0)),
        chat_template=table.get("chat_template"), description=table.get("description", ""),
        base_dir=path.resolve().parent,
    )


def _ctx(where: str, name: str, table: dict) -> int:
    ctx = table.get("ctx", 2048)
    if not 16 <= ctx <= 1 << 20:
        raise ConfigError(f"{where}: field 'ctx' must be between 16 and 1048576", model=name, param="ctx")
    return ctx


def _check_relative(where: str, name: str, file: str) -> None:
    p = PurePosixPath(file)
    if not file or p.is_absolute() or "\\" in file or ".." in p.parts or file.startswith("~"):
        raise ConfigError(f"{where}: field 'file' must be a path relative to models.toml, without '..' (to serve a "
                          f"file elsewhere, name it on the command line: reverb serve /path/to/model.gguf)",
                          model=name, param="file")


def _price(where: str, name: str, key: str, value) -> int:
    try:
        return parse_money(value)
    except ValueError as e:
        raise ConfigError(f"{where}: field '{key}' {e}", model=name, param=key) from None


def local_path(spec: ModelSpec) -> Path | None:
    """Where the GGUF is on this machine for package and path sources, without any network.

    Hub models are located by ``download.cached_path``. Returns None when the file is not there. A path that
    would leave the models directory, or a symlink, raises ConfigError.
    """
    if spec.source == "file":   # named by the operator on the command line: taken as it is (refs.py)
        candidate = Path(spec.file)
    elif spec.source == "package":
        found = importlib.util.find_spec(spec.package) if spec.package else None
        if found is None or not found.submodule_search_locations:
            return None
        candidate = Path(list(found.submodule_search_locations)[0]) / spec.file
    elif spec.source == "path":
        candidate = spec.base_dir / spec.file
        if candidate.is_symlink():
            raise ConfigError(f"model '{spec.name}': {spec.file} is a symlink, refused in models.toml (name the "
                              f"file on the command line instead: reverb serve {candidate})", model=spec.name)
        if not candidate.resolve().is_relative_to(spec.base_dir):
            raise ConfigError(f"model '{spec.name}': {spec.file} leaves the models directory (name the file on the "
                              f"command line instead: reverb serve PATH)", model=spec.name)
    else:
        return None
    return candidate if candidate.is_file() else None
