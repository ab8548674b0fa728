"""Model references given on the command line: a catalogue name, a GGUF file, or ``hf.co/owner/repo[:QUANT]``.

Pure: reads the local file system, never the network. A reference that is not a catalogue name becomes an ad-hoc
``ModelSpec`` that lives only for this run: its prices are zero unless given, its context and chat template come
from the file. The operator named the file on the command line, so an absolute path or a symlink is taken as it is
(the catalogue's own ``source = "path"`` rules stay strict: a models.toml is data that others may have written).

Quant picking for hub repositories is here too (a pure function of a file list): the file asked for by its quant
tag, or the first of ``PREFERRED`` present; multi-part GGUFs (``name-00001-of-00003.gguf``) count as one file.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path, PurePosixPath

from ..errors import ConfigError, ModelNotFound
from .registry import NAME_RE, REPO_RE, ModelSpec, Registry, parse_money

HUB_PREFIXES = ("hf.co/", "huggingface.co/", "https://huggingface.co/", "https://hf.co/")
QUANT_RE = re.compile(r"(?<![A-Za-z0-9])(I?Q[1-8](?:_[0-9A-Z]+)*|BF16|F16|F32|MXFP4(?:_MOE)?|TQ[12]_0)"
                      r"(?![A-Za-z0-9])", re.IGNORECASE)
SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# What a hub repository without a quant asked for serves: a good size/quality trade-off first, as Ollama does.
PREFERRED = ("Q4_K_M", "Q4_K_S", "Q4_K", "Q5_K_M", "Q4_0", "Q4_1", "IQ4_XS", "Q5_K_S", "Q6_K", "Q8_0", "Q3_K_M", "BF16",
             "F16", "F32")
DEFAULT_CTX_CAP = 8192   # an ad-hoc model's context: the file's, at most this (each slot holds a KV cache)


def is_hub(ref: str) -> bool:
    return ref.lower().startswith(HUB_PREFIXES)


def is_file(ref: str) -> bool:
    return "/" in ref or "\\" in ref or ref.lower().endswith(".gguf") or ref.startswith("~")


def parse_hub(ref: str) -> tuple[str, str | None]:
    """``hf.co/owner/repo[:QUANT]`` -> (repo, quant or None). Raises ConfigError saying what the form is."""
    rest = ref
    for prefix in HUB_PREFIXES:
        if rest.lower().startswith(prefix):
            rest = rest[len(prefix):]
            break
    repo, _, quant = rest.partition(":")
    if not REPO_RE.match(repo) or ".." in repo or (quant and not re.fullmatch(r"[A-Za-z0-9_]{1,32}", quant)):
        raise ConfigError(f"{ref!r} is not a hub model reference; write hf.co/OWNER/REPO or hf.co/OWNER/REPO:QUANT "
                          "(e.g. hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M)")
    return repo, (quant.upper() or None)


def hub_name(ref: str) -> str:
    """The name clients use for a hub model: what the operator typed, with the prefix written as ``hf.co/``."""
    repo, quant = parse_hub(ref)
    return f"hf.co/{repo}" + (f":{quant}" if quant else "")


def file_name(path: Path) -> str:
    """The name clients use for a GGUF file: its stem (without a ``-0000k-of-0000n`` part), as a catalogue name."""
    name = path.name
    m = SPLIT_RE.match(name)
    stem = m.group("stem") if m else re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64] or "model"
    return cleaned if NAME_RE.match(cleaned) else "model"


def quant_of(filename: str) -> str:
    """The quant tag in a GGUF file name ("Qwen2.5-7B-Instruct-Q4_K_M.gguf" -> "Q4_K_M"), or ""."""
    found = QUANT_RE.findall(PurePosixPath(filename).name) or QUANT_RE.findall(filename)
    return found[-1].upper() if found else ""


def split_parts(filename: str) -> list[str]:
    """Every part of a multi-part GGUF named by its first part (the name itself for a single file)."""
    path = PurePosixPath(filename)
    m = SPLIT_RE.match(path.name)
    if not m:
        return [filename]
    count = int(m.group("count"))
    width = len(m.group("no"))
    return [str(path.with_name(f"{m.group('stem')}-{i:0{width}d}-of-{m.group('count')}.gguf"))
            for i in range(1, count + 1)]


def pick(files: list[str], quant: str | None, where: str) -> str:
    """The GGUF to serve among a repository's ``files``: the first part of a multi-part file, never a projector
    (``mmproj``). Raises ModelNotFound listing the quants there are."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower())
    candidates = []
    for f in ggufs:
        m = SPLIT_RE.match(PurePosixPath(f).name)
        if m and int(m.group("no")) != 1:
            continue
        candidates.append(f)
    if not candidates:
        raise ModelNotFound(f"{where} holds no GGUF file")
    by_quant: dict[str, str] = {}
    for f in candidates:
        by_quant.setdefault(quant_of(f), f)
    if quant:
        if quant in by_quant:
            return by_quant[quant]
        there = ", ".join(sorted(q for q in by_quant if q)) or "none named"
        raise ModelNotFound(f"{where} has no {quant} file; its quants: {there}")
    for q in PREFERRED:
        if q in by_quant:
            return by_quant[q]
    return candidates[0]


def spec_for_file(path: Path, name: str | None = None, ctx: int = 0, prices: tuple[str, str] = ("0", "0")) -> ModelSpec:
    """An ad-hoc spec for a GGUF file named on the command line. ``ctx`` 0: the file's (see ``DEFAULT_CTX_CAP``).
    Raises ConfigError when the file is not there."""
    path = path.expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such GGUF file; give the path of a .gguf file, a model name from the "
                          "catalogue (`reverb models list`) or hf.co/OWNER/REPO[:QUANT]")
    first = SPLIT_RE.match(path.name)
    if first and int(first.group("no")) != 1:
        raise ConfigError(f"{path}: part {int(first.group('no'))} of a multi-part GGUF; give the first part "
                          f"({split_parts(path.name)[0]})")
    for part in split_parts(str(path)):
        if not Path(part).is_file():
            raise ConfigError(f"{path}: part {Path(part).name} of this multi-part GGUF is missing; put every part "
                              "in the same directory")
    return ModelSpec(name=name or file_name(path), source="file", file=str(path.resolve()), ctx=ctx,
                     quant=quant_of(path.name), price_input=parse_money(prices[0]),
                     price_output=parse_money(prices[1]), description=f"GGUF file {path}",
                     base_dir=path.resolve().parent)


def spec_for_hub(ref: str, ctx: int = 0, prices: tuple[str, str] = ("0", "0")) -> ModelSpec:
    """An ad-hoc spec for ``hf.co/owner/repo[:QUANT]``; ``file`` is empty until the quant is picked
    (``download.resolve``), ``quant`` holds the one asked for."""
    repo, quant = parse_hub(ref)
    return ModelSpec(name=hub_name(ref), source="hf", repo=repo, revision="main", quant=quant or "", ctx=ctx,
                     price_input=parse_money(prices[0]), price_output=parse_money(prices[1]),
                     description=f"hub model {repo}" + (f" ({quant})" if quant else ""))


def resolve(reg: Registry, refs: tuple[str, ...]) -> tuple[Registry, list[str]]:
    """The catalogue with every non-catalogue reference of ``refs`` added, and the names to serve in order.

    A catalogue name wins over a file of the same name in the working directory. Raises ConfigError or
    ModelNotFound with what to do instead.
    """
    specs = dict(reg.specs)
    names: list[str] = []
    for ref in refs:
        if ref in specs:
            names.append(ref)
            continue
        if is_hub(ref):
            spec = spec_for_hub(ref)
        elif is_file(ref):
            spec = spec_for_file(Path(ref))
        else:
            known = ", ".join(reg.specs)
            raise ModelNotFound(f"no model {ref!r} in the catalogue {reg.path} (it has: {known}); give a "
                                "catalogue name, the path of a .gguf file or hf.co/OWNER/REPO[:QUANT]",
                                param="model", model=ref)
        if spec.name in specs and specs[spec.name] != spec:
            if spec.source != "file":
                raise ConfigError(f"{ref!r} would be served as {spec.name!r}, a name the catalogue already uses")
            spec = replace(spec, name=_free_name(spec.name, specs))
        specs[spec.name] = spec
        names.append(spec.name)
    return replace(reg, specs=specs), names


def _free_name(name: str, taken) -> str:
    for i in range(2, 1000):
        candidate = f"{name[:60]}-{i}"
        if candidate not in taken:
            return candidate
    raise ConfigError(f"too many models named {name!r}")
