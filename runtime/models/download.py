"""The only huggingface_hub user: fetch a model's GGUF into the standard HF cache, verify it, remove it.

A hub model named on the command line (``hf.co/owner/repo[:QUANT]``) has no file yet: ``resolve`` lists the
repository (or, offline, the cached snapshot) and picks the quant (``refs.pick``). A multi-part GGUF is every
``-0000k-of-0000n`` part in one snapshot directory, where llama.cpp finds the parts beside the first.

Downloads go through ``hf_hub_download``: the shared cache (other tools see the same files), its progress bar,
and resume of an interrupted download from its ``.incomplete`` file. A pinned sha256 is checked after download;
on a mismatch the cached copy is deleted, so nothing that could load as valid is left behind. ``HF_HUB_OFFLINE=1``
or ``offline=True`` means cache only. Errors become our own DownloadError family, naming the repo and the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dataclasses import replace

from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.utils import logging as hf_logging
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                    OfflineModeIsEnabled, RemoteEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)

from ..errors import ChecksumMismatch, ConfigError, DownloadError, OfflineError, RemoteFileMissing, ReverbError
from . import refs
from .registry import ModelSpec

# huggingface_hub prints through a handler of its own; propagating too printed each of its warnings twice.
hf_logging.disable_propagation()


def cache_root() -> Path:
    return Path(constants.HF_HUB_CACHE).resolve()


def _where(spec: ModelSpec) -> str:
    return f"{spec.repo}/{spec.file}" + (f" (revision {spec.revision})" if spec.revision else "")


def cached_path(spec: ModelSpec) -> Path | None:
    """The cached file for a hub model, or None. Never touches the network."""
    if spec.source != "hf" or not spec.file:
        return None
    paths = []
    for part in refs.split_parts(spec.file):
        found = try_to_load_from_cache(repo_id=spec.repo, filename=part, revision=spec.revision)
        if not isinstance(found, str):
            return None
        path = Path(found)
        _inside_cache(spec, path)
        if not path.is_file():
            return None
        paths.append(path)
    return paths[0]


def resolve(spec: ModelSpec, *, offline: bool = False) -> ModelSpec:
    """A hub spec with its file picked: as it is when it names one; else the quant asked for (or the preferred
    one) among the cached snapshot's files, then, unless offline, the repository's. Raises ModelNotFound,
    OfflineError or DownloadError."""
    if spec.source != "hf" or spec.file:
        return spec
    where = f"hf.co/{spec.repo}"
    cached = _cached_files(spec)
    if cached:
        try:
            return _picked(spec, refs.pick(cached, spec.quant or None, where))
        except ReverbError:
            pass   # not in the cache: ask the hub
    if offline or constants.HF_HUB_OFFLINE:
        raise OfflineError(f"{where} is not in the local cache and downloads are off (offline mode)", model=spec.name)
    try:
        files = [f.path for f in HfApi().list_repo_tree(spec.repo, revision=spec.revision, recursive=True)
                 if hasattr(f, "size")]
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise RemoteFileMissing(f"{where}: the repository was not found or is not accessible ({type(e).__name__})",
                                model=spec.name) from None
    except RevisionNotFoundError:
        raise RemoteFileMissing(f"{where}: the revision {spec.revision} was not found", model=spec.name) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        raise DownloadError(f"{where}: listing its files, the hub answered HTTP {status}", model=spec.name) from None
    except Exception as e:   # network failures surface as the HTTP client's own exception types
        raise DownloadError(f"{where}: the hub at {constants.ENDPOINT} could not be reached ({type(e).__name__})",
                            model=spec.name) from None
    return _picked(spec, refs.pick(files, spec.quant or None, where))


def cached_models() -> list[tuple[str, str, int]]:
    """Hub GGUFs in the local cache, whoever pulled them: (hf.co/owner/repo:QUANT, file, bytes of every part).
    No network."""
    out = []
    for folder in sorted(cache_root().glob("models--*--*")):
        repo = folder.name.removeprefix("models--").replace("--", "/", 1)
        spec = ModelSpec(name=repo, source="hf", repo=repo, revision="main")
        files = _cached_files(spec)
        for f in sorted(files):
            if not f.lower().endswith(".gguf") or "mmproj" in f.lower():
                continue
            parts = refs.split_parts(f)
            if parts[0] != f or not all(p in files for p in parts):
                continue
            snapshot = _snapshot(spec)
            size = sum((snapshot / p).stat().st_size for p in parts)
            quant = refs.quant_of(f)
            out.append((f"hf.co/{repo}" + (f":{quant}" if quant else ""), f, size))
    return out


def _picked(spec: ModelSpec, file: str) -> ModelSpec:
    return replace(spec, file=file, quant=refs.quant_of(file) or spec.quant)


def _cached_files(spec: ModelSpec) -> list[str]:
    """The files of the cached snapshot of ``spec.revision``, relative to it (no network)."""
    snapshot = _snapshot(spec)
    if snapshot is None:
        return []
    return [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]


def _snapshot(spec: ModelSpec) -> Path | None:
    folder = cache_root() / f"models--{spec.repo.replace('/', '--')}"
    try:
        commit = (folder / "refs" / (spec.revision or "main")).read_text().strip()
    except OSError:
        return None
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir() or not snapshot.resolve().is_relative_to(cache_root()):
        return None
    return snapshot


def pull(spec: ModelSpec, *, offline: bool = False, progress: bool = True) -> Path:
    """Download (or find in the cache) a hub model's GGUF and verify its pinned sha256.

    Raises RemoteFileMissing, OfflineError, ChecksumMismatch or DownloadError.
    """
    if spec.source != "hf":
        raise ConfigError(f"model '{spec.name}' is not a hub model (source = {spec.source})", model=spec.name)
    if not progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    spec = resolve(spec, offline=offline)
    paths = [_download(spec, part, offline) for part in refs.split_parts(spec.file)]
    for path in paths:
        _inside_cache(spec, path)
    path = paths[0]
    if spec.sha256:
        actual = sha256_file(path)
        if actual != spec.sha256:
            remove(spec)
            raise ChecksumMismatch(f"{_where(spec)}: sha256 {actual} does not match models.toml's {spec.sha256}; "
                                   f"the download was deleted", model=spec.name)
    return path


def _download(spec: ModelSpec, filename: str, offline: bool) -> Path:
    """One file of a hub model into the cache. Raises RemoteFileMissing, OfflineError or DownloadError."""
    spec = replace(spec, file=filename)
    try:
        return Path(hf_hub_download(repo_id=spec.repo, filename=filename, revision=spec.revision,
                                    local_files_only=offline or constants.HF_HUB_OFFLINE))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):  # before EntryNotFoundError: it is one
        if offline or constants.HF_HUB_OFFLINE:
            raise OfflineError(f"{_where(spec)} is not in the local cache and downloads are off (offline mode)",
                               model=spec.name) from None
        # huggingface_hub says "not in the cache" when the hub cannot be reached at all
        raise DownloadError(f"{_where(spec)}: the hub at {constants.ENDPOINT} could not be reached and the file is "
                            f"not in the local cache", model=spec.name) from None
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise RemoteFileMissing(f"{_where(spec)}: the repository was not found or is not accessible "
                                f"({type(e).__name__})", model=spec.name) from None
    except RevisionNotFoundError:
        raise RemoteFileMissing(f"{_where(spec)}: the revision was not found", model=spec.name) from None
    except (RemoteEntryNotFoundError, EntryNotFoundError):
        raise RemoteFileMissing(f"{_where(spec)}: the file was not found in the repository",
                                model=spec.name) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        raise DownloadError(f"{_where(spec)}: the hub answered HTTP {status}; run the same command again to "
                            f"resume", model=spec.name) from None
    except Exception as e:  # network failures surface as the HTTP client's own exception types
        raise DownloadError(f"{_where(spec)}: download failed ({type(e).__name__}); run the same command again "
                            f"to resume", model=spec.name) from None


def remove(spec: ModelSpec) -> int:
    """Delete a pulled model's cached files (snapshot links and blobs, every part). Returns the bytes freed (0 if
    absent)."""
    if spec.source == "hf" and not spec.file:
        try:
            spec = resolve(spec, offline=True)
        except ReverbError:
            return 0
    size = 0
    for part in refs.split_parts(spec.file):
        found = try_to_load_from_cache(repo_id=spec.repo, filename=part, revision=spec.revision)
        if not isinstance(found, str):
            continue
        path = Path(found)
        blob = path.resolve()
        _inside_cache(spec, blob)
        if blob.is_file():
            size += blob.stat().st_size
        if path.is_symlink():
            path.unlink()
        blob.unlink(missing_ok=True)
    return size


def _inside_cache(spec: ModelSpec, path: Path) -> None:
    # The cache is ours to manage; a path that resolves outside it (a planted symlink) is refused.
    if not path.resolve().is_relative_to(cache_root()):
        raise ConfigError(f"model '{spec.name}': cached file resolves outside the HF cache; refused", model=spec.name)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
