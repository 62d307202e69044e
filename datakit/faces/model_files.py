"""Where the face models live and whether they are intact.

Two sources: the default stack's ONNX files in a models directory (``--models-dir`` /
``DATAKIT_MODELS_DIR``, else the per-user cache folder that ``datakit models fetch`` fills), checked against
the ``SHA256SUMS`` file there (or, when a file is not listed, the hash pinned below), and dlib's ``.dat``
files that ship inside the ``face-recognition-models`` wheel. ``FACE_STACKS`` says where every file comes from.

A third source, only on request: insightface packs (``INSIGHTFACE_PACKS``) that ``datakit models fetch --pack NAME
--accept-licence`` puts in ``<models folder>/<NAME>/`` with a :data:`PACK_MARKER` recording what was verified.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from datakit.faces.base import ModelNotFoundError

MODELS_DIR_ENV = "DATAKIT_MODELS_DIR"
INSIGHTFACE_PACK_ENV = "DATAKIT_INSIGHTFACE_PACK"
MODELS_DIR_HINT = (
    f"run `datakit models fetch`, or pass --models-dir or set {MODELS_DIR_ENV} to the folder holding the model files"
)

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
FSANET_FILES = ("fsanet-1x1-iter-688590.onnx", "fsanet-var-iter-688590.onnx")
DEFAULT_STACK_FILES = (YUNET_FILE, *FSANET_FILES)

#: Published hashes of the default stack's files, used when the folder has no SHA256SUMS entry for one.
PINNED_SHA256 = {
    YUNET_FILE: "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    FSANET_FILES[0]: "d85e90cb4b9d3a87e81bbfdcfcd130cbe0e175407042e439a570aa396c44eda6",
    FSANET_FILES[1]: "2877b1db98e3dc66468e90df8db4a21059facd1c3f107af91c6d4fe6476a03e1",
}


YUNET_URL = "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/" + YUNET_FILE
# opencv_zoo keeps its models in Git LFS: github.com/<repo>/raw/... redirects to the content (its LFS oid is
# the pinned hash). FSA-Net's files are plain git blobs, pinned here to the repository's last commit.
FSANET_URL = (
    "https://github.com/omasaht/headpose-fsanet-pytorch/raw/002549c981b607f722e0810d999afcde7e5aaa66/pretrained/"
)


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One file of a face stack: where it comes from and how to check it."""

    name: str  #: file name (relative path) inside the models folder or the package
    what: str  #: what the file is, in a few words
    licence: str
    url: str | None = None  #: public download URL; None = shipped in a package or supplied by the user
    sha256: str | None = None  #: pinned hash; None = not pinned (package files, user packs)
    source: str = "download"  #: "download" (``datakit models fetch``), "package" or "user"
    size_bytes: int | None = None  #: published size, where known (said in the listing; the hash is the check)


@dataclass(frozen=True, slots=True)
class FaceStackFiles:
    """The files a face backend needs."""

    backend: str  #: the ``--backend`` name
    summary: str
    files: tuple[ModelFile, ...]


_DLIB_LICENCE = "public domain / CC0 (dlib-models, in the face-recognition-models wheel)"
_DLIB_FILES = (
    ModelFile(
        "shape_predictor_5_face_landmarks.dat", "dlib 5-point landmarks (alignment)", _DLIB_LICENCE, source="package"
    ),
    ModelFile(
        "dlib_face_recognition_resnet_model_v1.dat", "dlib ResNet 128-d embedding", _DLIB_LICENCE, source="package"
    ),
)

#: Every face stack and its files; the ``yunet`` stack's downloadable files are what ``datakit models fetch`` gets.
FACE_STACKS: tuple[FaceStackFiles, ...] = (
    FaceStackFiles(
        "yunet",
        "default: YuNet detector + FSA-Net head pose + dlib ResNet embedding",
        (
            ModelFile(YUNET_FILE, "YuNet face detector", "MIT (opencv_zoo)", YUNET_URL, PINNED_SHA256[YUNET_FILE]),
            *(
                ModelFile(
                    name, "FSA-Net head pose", "MIT (code); trained on 300W-LP", FSANET_URL + name, PINNED_SHA256[name]
                )
                for name in FSANET_FILES
            ),
            *_DLIB_FILES,
        ),
    ),
    FaceStackFiles(
        "dlib",
        "pip-only fallback: dlib HOG detector + 68-landmark pose + dlib ResNet (no profile faces)",
        (
            ModelFile(
                "shape_predictor_68_face_landmarks.dat",
                "dlib 68-point landmarks (pose)",
                _DLIB_LICENCE + "; trained on iBUG 300-W, whose terms exclude commercial use",
                source="package",
            ),
            *_DLIB_FILES,
        ),
    ),
    FaceStackFiles(
        "insightface",
        f"a local insightface pack (--insightface-pack / {INSIGHTFACE_PACK_ENV}), e.g. buffalo_l",
        (
            ModelFile(
                "<pack>/*.onnx",
                "SCRFD detector + ArcFace recognition (+ 1k3d68 pose); `datakit models fetch --pack NAME` gets one",
                "insightface models: non-commercial research only",
                source="user",
            ),
        ),
    ),
)


def downloadable_files() -> tuple[ModelFile, ...]:
    """The default stack's files that ``datakit models fetch`` downloads (each with a URL and a pinned hash)."""
    return tuple(f for stack in FACE_STACKS for f in stack.files if f.source == "download")


#: The licence of every public insightface model pack, in the insightface project's own words: its README
#: ("The training data containing the annotation (and the models trained with these data) are available for
#: non-commercial research purposes only") and python-package/README.md ("The pretrained models we provided
#: with this library are available for non-commercial research purposes only, including both auto-downloading
#: models and manual-downloading models"; the library's code itself is MIT).
INSIGHTFACE_LICENCE = "insightface pretrained models: non-commercial research purposes only (the code is MIT)"
INSIGHTFACE_LICENCE_URLS = (
    "https://github.com/deepinsight/insightface#license",
    "https://github.com/deepinsight/insightface/tree/master/python-package#license",
)
#: written last into a fetched pack's folder: the pack, its licence as accepted, and each file's verified hash
PACK_MARKER = "datakit-pack.json"
_INSIGHTFACE_RELEASE = "https://github.com/deepinsight/insightface/releases/download/v0.7/"
_UNPINNED = (
    "insightface publishes no checksum for this archive (its own downloader, insightface/utils/storage.py, checks"
    " none) and it cannot be downloaded from the machines this project is built on, so no SHA-256 is pinned"
    " here: pass --sha256 with the hash of a copy you trust"
)


@dataclass(frozen=True, slots=True)
class InsightFacePack:
    """An insightface model pack that ``datakit models fetch --pack`` can download, licence accepted.

    ``downloads`` is either the pack's files (``<name>/<file>.onnx``, each with a pinned hash) or one zip
    archive (``<name>.zip``) that is verified, then unpacked into ``<name>/``.
    """

    name: str
    what: str
    downloads: tuple[ModelFile, ...]
    checksum_source: str  #: where the pinned SHA-256 comes from, or why there is none
    licence: str = INSIGHTFACE_LICENCE
    licence_urls: tuple[str, ...] = INSIGHTFACE_LICENCE_URLS

    @property
    def is_archive(self) -> bool:
        """True when the pack comes as one zip archive."""
        return len(self.downloads) == 1 and self.downloads[0].name.endswith(".zip")


def _release_zip(name: str, what: str, unpacked: str) -> InsightFacePack:
    """A pack published as ``<name>.zip`` on insightface's v0.7 release, with no checksum to pin."""
    archive = ModelFile(
        f"{name}.zip", f"zip archive, {unpacked} unpacked", INSIGHTFACE_LICENCE, f"{_INSIGHTFACE_RELEASE}{name}.zip"
    )
    return InsightFacePack(name, what, (archive,), _UNPINNED)


_SC_INT8_SOURCE = (
    "checked here: the files of ../shared/models/insightface_sc_int8 (SHA256SUMS), read byte for byte from the"
    " pinned git commits of the URLs; onnxruntime dynamic int8 quantisation of buffalo_sc's w600k_mbf.onnx"
)

#: insightface packs ``datakit models fetch --pack`` knows, in the order ``--backend auto`` prefers fetched ones.
#: buffalo_l / antelopev2: the field's standard packs (insightface python-package README, "Model Zoo": SCRFD-10GF
#: + ResNet50@WebFace600K, 326MB; SCRFD-10GF + ResNet100@Glint360K, 407MB). insightface_sc_int8: the
#: MobileFaceNet pack this project measures and calibrates on (same licence: the weights are insightface's).
INSIGHTFACE_PACKS: tuple[InsightFacePack, ...] = (
    _release_zip("buffalo_l", "SCRFD-10GF + ArcFace ResNet50@WebFace600K + 2d106/3d68 landmarks + gender/age", "326MB"),
    _release_zip("antelopev2", "SCRFD-10GF + ArcFace ResNet100@Glint360K + 2d106/3d68 landmarks + gender/age", "407MB"),
    InsightFacePack(
        "insightface_sc_int8",
        "SCRFD-500MF + MobileFaceNet@WebFace600K (buffalo_sc's models, recognition int8-quantised)",
        (
            ModelFile(
                "insightface_sc_int8/det_500m.onnx",
                "SCRFD-500MF detector (buffalo_sc's det_500m.onnx)",
                INSIGHTFACE_LICENCE,
                "https://github.com/yukkki7/FaceAnalysisApp/raw/d4126572f7642f97f903cfab7ab73f67e99622db/models/scrfd_500m.onnx",
                "5e4447f50245bbd7966bd6c0fa52938c61474a04ec7def48753668a9d8b4ea3a",
                size_bytes=2524817,
            ),
            ModelFile(
                "insightface_sc_int8/w600k_mbf.onnx",
                "MobileFaceNet ArcFace recognition, 512-d, int8",
                INSIGHTFACE_LICENCE,
                "https://github.com/nidheerakesh/offlineid/raw/923f7256e19e997741e15ce369a325642f502dc7/models/mobilefacenet_int8.onnx",
                "7caa7fb0ad6c37b33e6c59f6411084b487aaabd596bba645d2cce391a5871120",
                size_bytes=3514509,
            ),
        ),
        _SC_INT8_SOURCE,
    ),
)


def insightface_pack(name: str) -> InsightFacePack:
    """The registry entry of pack ``name``; ``ValueError`` naming the known packs otherwise."""
    for pack in INSIGHTFACE_PACKS:
        if pack.name == name:
            return pack
    raise ValueError(f"unknown insightface pack {name!r}; known: {', '.join(p.name for p in INSIGHTFACE_PACKS)}")


def fetched_pack_status(pack_dir: Path) -> str:
    """``intact`` when ``pack_dir`` holds a pack ``datakit models fetch`` installed and every file still has its
    recorded SHA-256; else ``absent``, ``incomplete`` (no marker: nothing verified) or ``corrupt (...)``."""
    if not pack_dir.is_dir():
        return "absent"
    marker = pack_dir / PACK_MARKER
    if not marker.is_file():
        return "incomplete (not fetched by datakit, or interrupted)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"corrupt ({PACK_MARKER} unreadable)"
    for name, expected in files.items():
        path = pack_dir / name
        if not path.is_file() or sha256_of(path) != expected:
            return f"corrupt ({name} missing or sha256 differs)"
    return "intact" if files else f"corrupt ({PACK_MARKER} lists no files)"


def find_fetched_pack(models_dir: Path) -> Path | None:
    """The first pack of :data:`INSIGHTFACE_PACKS` fetched intact into ``models_dir``, or None.

    Only folders with a :data:`PACK_MARKER` count: a pack copied by hand (like ../shared/models' own
    insightface_sc_int8) is used when named by ``--insightface-pack``, never picked up behind the user's back.
    """
    for pack in INSIGHTFACE_PACKS:
        if fetched_pack_status(models_dir / pack.name) == "intact":
            return models_dir / pack.name
    return None


class ModelChecksumError(ModelNotFoundError):
    """A model file is present but its SHA-256 differs from the expected one (corrupt or wrong file)."""


# (resolved path, size, mtime_ns) -> sha256 hex, so each file is hashed once per process.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def default_models_dir() -> Path:
    """The per-user models folder: ``$XDG_CACHE_HOME/harmoview/models``, else ``~/.cache/harmoview/models``."""
    cache = os.environ.get("XDG_CACHE_HOME") or None
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "harmoview" / "models"


def resolve_models_dir(models_dir: str | Path | None) -> Path:
    """The models directory: the argument, else ``$DATAKIT_MODELS_DIR``, else :func:`default_models_dir`.

    The default folder may not exist (nothing has been fetched); callers then fall back or raise as usual.
    """
    chosen = models_dir if models_dir is not None else os.environ.get(MODELS_DIR_ENV) or None
    return Path(chosen).expanduser() if chosen is not None else default_models_dir()


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def read_sha256sums(models_dir: Path) -> dict[str, str]:
    """``SHA256SUMS`` of a folder as {relative path: hex digest}; empty when there is none."""
    sums_path = models_dir / "SHA256SUMS"
    if not sums_path.is_file():
        return {}
    sums: dict[str, str] = {}
    for line in sums_path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def verified_model_files(models_dir: Path | None, names: tuple[str, ...]) -> dict[str, Path]:
    """Paths of ``names`` inside ``models_dir``, each checked against its expected SHA-256.

    Raises :class:`ModelNotFoundError` when the folder or a file is missing and
    :class:`ModelChecksumError` when a file's hash differs from ``SHA256SUMS`` (or the pinned hash).
    """
    if models_dir is None:
        raise ModelNotFoundError(f"no models directory given for {', '.join(names)}: {MODELS_DIR_HINT}")
    if not models_dir.is_dir():
        raise ModelNotFoundError(f"models directory {models_dir} does not exist: {MODELS_DIR_HINT}")
    sums = read_sha256sums(models_dir)
    paths: dict[str, Path] = {}
    for name in names:
        path = models_dir / name
        if not path.is_file():
            raise ModelNotFoundError(f"{name} not found in {models_dir}: {MODELS_DIR_HINT}")
        expected = sums.get(name) or PINNED_SHA256.get(name)
        if expected is None:
            raise ModelChecksumError(f"no SHA256SUMS entry for {name} in {models_dir}; cannot verify it")
        actual = sha256_of(path)
        if actual != expected:
            raise ModelChecksumError(
                f"{path} is corrupt or a different file: sha256 {actual[:12]}... != {expected[:12]}..."
                f" ({MODELS_DIR_HINT}, with intact files)"
            )
        paths[name] = path
    return paths


def model_status(model: ModelFile, models_dir: Path) -> str:
    """``present`` / ``absent`` / ``corrupt`` for a downloadable file in ``models_dir``; where others come from."""
    if model.source == "user":
        return "user-supplied (--insightface-pack)"
    if model.source == "package":
        try:
            dlib_model_path(model.name)
        except ModelNotFoundError:
            return "absent: pip install face-recognition-models"
        return "in package"
    path = models_dir / model.name
    if not path.is_file():
        return "absent"
    return "present" if sha256_of(path) == model.sha256 else "corrupt (sha256 differs)"


def dlib_model_path(filename: str) -> Path:
    """A ``.dat`` file of the ``face-recognition-models`` package.

    Located without importing the package: its ``__init__`` imports ``pkg_resources``, which recent
    setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("dlib models missing: pip install face-recognition-models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise ModelNotFoundError(f"{path} missing: reinstall face-recognition-models")
    return path
