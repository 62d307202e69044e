"""Download model files: the default face stack's (:func:`fetch_default_stack`, ``datakit models fetch``) and,
for users who accept its licence, an insightface pack (:func:`fetch_insightface_pack`, ``--pack NAME
--accept-licence``).

Each file (or pack archive) is streamed to ``<name>.part`` beside its target (resumed with an HTTP ``Range``
request when a partial file is there and the server honours it), checked against its pinned SHA-256, then renamed
into place in one step, so the models folder never holds a half-written or unverified file under its real name.
A pack archive is then unpacked into a staging folder that is renamed into place, and a pack counts as fetched
only once its marker (``datakit-pack.json``, written last) records the licence accepted and every file's hash.
Nothing here runs unless the user asks for it: builds only ever read the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from datakit.faces.base import ModelNotFoundError
from datakit.faces.model_files import (
    PACK_MARKER,
    InsightFacePack,
    ModelChecksumError,
    ModelFile,
    downloadable_files,
    fetched_pack_status,
    insightface_pack,
    resolve_models_dir,
    sha256_of,
)

BASE_URL_ENV = "DATAKIT_MODELS_BASE_URL"
TIMEOUT_S = 30.0  #: per socket operation, so an unreachable host fails instead of hanging
_BLOCK = 1 << 16


class ModelDownloadError(ModelNotFoundError):
    """A model file could not be downloaded (offline, unreachable, or the connection dropped)."""


class LicenceNotAcceptedError(ModelNotFoundError):
    """An insightface pack was asked for without accepting its licence: nothing was downloaded."""


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
    return _fetch_files(downloadable_files(), folder, base_url, progress)


def _fetch_files(models: tuple[ModelFile, ...], folder: Path, base_url: str | None, progress: bool) -> list[Path]:
    """Each of ``models`` into ``folder / model.name`` unless already there intact; the paths downloaded."""
    fetched: list[Path] = []
    for model in models:
        assert model.sha256 is not None, model.name  # never write an unverified file under its real name
        target = folder / model.name
        if target.is_file() and sha256_of(target) == model.sha256:
            _say(progress, f"{model.name}: present and intact, skipped")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        url = file_url(model, base_url)
        _say(progress, f"{model.name}: downloading {url}")
        _download(url, target, model, folder)
        fetched.append(target)
        _say(progress, f"{model.name}: ok (sha256 {model.sha256[:12]}...)")
    return fetched


def licence_notice(pack: InsightFacePack) -> str:
    """What ``datakit models fetch --pack`` prints before anything else: the pack, its licence and where it is."""
    return "\n".join(
        [
            f"insightface pack {pack.name}: {pack.what}",
            f"licence: {pack.licence}",
            *(f"  {url}" for url in pack.licence_urls),
            "Fetching it (--accept-licence) means you accept this licence: non-commercial research use only.",
            f"checksum: {pack.checksum_source}",
        ]
    )


def fetch_insightface_pack(
    pack: str | InsightFacePack,
    to: Path | None = None,
    base_url: str | None = None,
    *,
    accept_licence: bool = False,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download an insightface pack into ``<to>/<pack name>/`` and return that folder.

    Args:
        pack: a name of ``INSIGHTFACE_PACKS`` (or an entry itself).
        to: the models folder (default: ``$DATAKIT_MODELS_DIR``, else the user cache), as for the default stack.
        base_url: a mirror serving ``<name>.zip`` or ``<name>/<file>``; default ``$DATAKIT_MODELS_BASE_URL``.
        accept_licence: must be True: the packs are for non-commercial research only
            (:class:`LicenceNotAcceptedError` otherwise, before any download).
        sha256: the archive's hash, for a pack whose registry entry pins none (a pinned one must agree).
        progress: print what happens to stderr.
    """
    spec = insightface_pack(pack) if isinstance(pack, str) else pack
    if not accept_licence:
        raise LicenceNotAcceptedError(
            f"{spec.name} is licensed as '{spec.licence}' ({', '.join(spec.licence_urls)}); nothing was"
            " downloaded: pass --accept-licence if your use is non-commercial research"
        )
    folder = resolve_models_dir(to)
    pack_dir = folder / spec.name
    if fetched_pack_status(pack_dir) == "intact":
        _say(progress, f"{spec.name}: present and intact, skipped")
        return pack_dir
    if not spec.is_archive and sha256 is not None:
        raise ValueError(f"{spec.name}'s files have pinned SHA-256s; --sha256 is only for an unpinned archive")
    expected = _archive_sha256(spec, sha256) if spec.is_archive else None  # refused before touching the disk
    _refuse_a_users_folder(spec, pack_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.is_archive:
        files = _fetch_archive(dataclasses.replace(spec.downloads[0], sha256=expected), pack_dir, base_url, progress)
    else:
        _fetch_files(spec.downloads, folder, base_url, progress)
        files = {PurePosixPath(m.name).name: m.sha256 for m in spec.downloads}
    _write_marker(pack_dir, spec, files, [file_url(m, base_url) for m in spec.downloads])
    _say(progress, f"{spec.name}: ready in {pack_dir}")
    return pack_dir


def _refuse_a_users_folder(spec: InsightFacePack, pack_dir: Path) -> None:
    """Never overwrite what datakit did not install: a pack folder without our marker is the user's own copy
    (only the pinned files an interrupted fetch left there, intact, may be in it)."""
    if not pack_dir.exists() or (pack_dir / PACK_MARKER).is_file():
        return
    foreign = spec.is_archive or any(
        (pack_dir.parent / m.name).is_file() and sha256_of(pack_dir.parent / m.name) != m.sha256 for m in spec.downloads
    )
    if foreign:
        raise ModelDownloadError(
            f"{pack_dir} exists and was not fetched by datakit; move it away or pass --to another folder"
        )


def _archive_sha256(spec: InsightFacePack, given: str | None) -> str:
    """The hash the archive must have: the pinned one, else the user's ``--sha256`` (they must agree)."""
    pinned = spec.downloads[0].sha256
    given = given.strip().lower() if given else None
    if given is not None and (len(given) != 64 or any(c not in "0123456789abcdef" for c in given)):
        raise ValueError(f"--sha256 {given!r} is not a SHA-256 (64 hex digits)")
    if pinned and given and given != pinned:
        raise ModelChecksumError(f"--sha256 {given[:12]}... differs from {spec.name}'s pinned {pinned[:12]}...")
    if not (pinned or given):
        raise ModelChecksumError(f"{spec.name}: {spec.checksum_source}")
    return pinned or given


def _fetch_archive(archive: ModelFile, pack_dir: Path, base_url: str | None, progress: bool) -> dict[str, str]:
    """Download (resumable, verified) and unpack ``archive``; {file name: sha256} of what was unpacked."""
    folder = pack_dir.parent
    _fetch_files((archive,), folder, base_url, progress)
    zip_path = folder / archive.name
    files = _unpack(zip_path, pack_dir)
    zip_path.unlink()  # the unpacked files are verified against the marker from now on
    return files


def _unpack(zip_path: Path, pack_dir: Path) -> dict[str, str]:
    """The archive's ``.onnx`` files into ``pack_dir`` (flat: antelopev2.zip nests them in a folder, buffalo_l.zip
    does not), through a staging folder renamed into place so that a crash leaves no half pack."""
    staging = pack_dir.with_name(f".{pack_dir.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with zipfile.ZipFile(zip_path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir() and m.filename.endswith(".onnx")]
        names = [PurePosixPath(m.filename).name for m in members]  # base names only: no path can escape
        if not members or len(set(names)) != len(names):
            raise ModelChecksumError(f"{zip_path} holds no .onnx files, or two of the same name: not a pack")
        for member, name in zip(members, names, strict=True):
            with archive.open(member) as source, (staging / name).open("wb") as target:
                shutil.copyfileobj(source, target)
    files = {name: _sha256_file(staging / name) for name in names}
    old = pack_dir.with_name(f".{pack_dir.name}.old")
    if pack_dir.exists():  # an earlier datakit install that is no longer intact
        os.replace(pack_dir, old)
    os.replace(staging, pack_dir)
    shutil.rmtree(old, ignore_errors=True)
    return files


def _write_marker(pack_dir: Path, spec: InsightFacePack, files: dict[str, str], urls: list[str]) -> None:
    """Record the pack as fetched (written last, atomically): what it is, the licence accepted, the hashes."""
    record = {
        "pack": spec.name,
        "what": spec.what,
        "licence": spec.licence,
        "licence_urls": list(spec.licence_urls),
        "licence_accepted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "downloaded_from": urls,
        "checksum_source": spec.checksum_source,
        "files": files,
    }
    tmp = pack_dir / f"{PACK_MARKER}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, pack_dir / PACK_MARKER)


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
