"""Download the default face stack's files: ``datakit models fetch`` and :func:`fetch_default_stack`.

Each file is streamed to ``<name>.part`` beside its target (resumed with an HTTP ``Range`` request when a
partial file is there and the server honours it), checked against its pinned SHA-256, then renamed into
place in one step, so the models folder never holds a half-written or unverified file under its real name.
Nothing here runs unless the user asks for it: builds only ever read the folder.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from datakit.faces.base import ModelNotFoundError
from datakit.faces.model_files import (
    ModelChecksumError,
    ModelFile,
    downloadable_files,
    resolve_models_dir,
    sha256_of,
)

BASE_URL_ENV = "DATAKIT_MODELS_BASE_URL"
TIMEOUT_S = 30.0  #: per socket operation, so an unreachable host fails instead of hanging
_BLOCK = 1 << 16


class ModelDownloadError(ModelNotFoundError):
    """A model file could not be downloaded (offline, unreachable, or the connection dropped)."""


def file_url(model: ModelFile, base_url: str | None) -> str:
    """Where to get ``model``: ``<base_url>/<name>`` when a mirror is given, else its public URL."""
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
    if base:
        return base.rstrip("/") + "/" + model.name
    assert model.url is not None, model.name
    return model.url


def fetch_default_stack(to: Path | None = None, base_url: str | None = None, progress: bool = True) -> list[Path]:
    """Download the default stack's files into ``to`` (default: ``$DATAKIT_MODELS_DIR``, else the user cache).

    Files already there with the pinned SHA-256 are skipped. Returns the paths downloaded in this call.
    Raises :class:`ModelDownloadError` when a file cannot be fetched and :class:`ModelChecksumError` when a
    downloaded file's hash is wrong (the partial file is deleted).
    """
    folder = resolve_models_dir(to)
    folder.mkdir(parents=True, exist_ok=True)
    fetched: list[Path] = []
    for model in downloadable_files():
        target = folder / model.name
        if target.is_file() and sha256_of(target) == model.sha256:
            _say(progress, f"{model.name}: present and intact, skipped")
            continue
        url = file_url(model, base_url)
        _say(progress, f"{model.name}: downloading {url}")
        _download(url, target, model, folder)
        fetched.append(target)
        _say(progress, f"{model.name}: ok (sha256 {model.sha256[:12]}...)")
    return fetched


def _download(url: str, target: Path, model: ModelFile, folder: Path) -> None:
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            if offset and response.status != 206:  # server ignored the Range: start over
                offset = 0
            with part.open("ab" if offset else "wb") as handle:
                for block in iter(lambda: response.read(_BLOCK), b""):
                    handle.write(block)
                expected_size = response.headers.get("Content-Length")
                if expected_size is not None and handle.tell() - offset < int(expected_size):
                    raise ConnectionError(f"connection closed after {handle.tell()} bytes")
    except urllib.error.HTTPError as error:
        if error.code == 416:  # Range past the end: the .part is complete or stale; verify below
            pass
        else:
            raise _download_error(url, folder, f"HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise _download_error(url, folder, f"{reason}; run the command again to resume") from error
    actual = _sha256_file(part)
    if actual != model.sha256:
        part.unlink()
        raise ModelChecksumError(
            f"{model.name} from {url} has sha256 {actual[:12]}..., expected {model.sha256[:12]}...;"
            " the download was deleted (a corrupt or different file: check the URL or mirror)"
        )
    os.replace(part, target)  # atomic on one filesystem: the real name only ever holds a verified file


def _download_error(url: str, folder: Path, reason: str) -> ModelDownloadError:
    return ModelDownloadError(
        f"could not download {url}: {reason}. Offline? Download the files by hand (`datakit models` lists"
        f" their URLs and SHA-256) into {folder}, or point --models-dir / DATAKIT_MODELS_DIR at a folder holding them"
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
