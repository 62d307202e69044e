"""Model resolution: missing folders name the flag/variable, corrupt files are caught by SHA256SUMS."""

from __future__ import annotations

import shutil

import pytest

from datakit.faces import ModelChecksumError, ModelNotFoundError, build_face_stack
from datakit.faces.model_files import DEFAULT_STACK_FILES, verified_model_files


def test_explicit_yunet_without_models_dir_names_flag_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # nothing fetched
    with pytest.raises(ModelNotFoundError) as error:
        build_face_stack("yunet")
    assert "--models-dir" in str(error.value) and "DATAKIT_MODELS_DIR" in str(error.value)
    with pytest.raises(ModelNotFoundError, match="DATAKIT_MODELS_DIR"):
        build_face_stack("yunet", models_dir=tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError, match="face_detection_yunet"):
        build_face_stack("yunet", models_dir=tmp_path)  # exists but empty


def test_models_dir_from_environment(models_dir, monkeypatch):
    monkeypatch.setenv("DATAKIT_MODELS_DIR", str(models_dir))
    paths = verified_model_files(models_dir, DEFAULT_STACK_FILES)
    assert set(paths) == set(DEFAULT_STACK_FILES)


def _copy_models(models_dir, target):
    for name in (*DEFAULT_STACK_FILES, "SHA256SUMS"):
        shutil.copy(models_dir / name, target / name)


def test_corrupted_file_is_detected(models_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    _copy_models(models_dir, tmp_path)
    assert set(verified_model_files(tmp_path, DEFAULT_STACK_FILES)) == set(DEFAULT_STACK_FILES)
    target = tmp_path / DEFAULT_STACK_FILES[1]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    target.write_bytes(bytes(data))
    with pytest.raises(ModelChecksumError, match="corrupt"):
        build_face_stack("yunet", models_dir=tmp_path)
    stack = build_face_stack("auto", models_dir=tmp_path)  # auto degrades to the fallback and says why
    assert stack.name == "dlib-hog+dlib68+dlib"
    assert any("corrupt" in note for note in stack.notes)


def test_pinned_hash_used_without_sha256sums(models_dir, tmp_path):
    _copy_models(models_dir, tmp_path)
    (tmp_path / "SHA256SUMS").unlink()
    assert set(verified_model_files(tmp_path, DEFAULT_STACK_FILES)) == set(DEFAULT_STACK_FILES)
    (tmp_path / DEFAULT_STACK_FILES[0]).write_bytes(b"not a model")
    with pytest.raises(ModelChecksumError):
        verified_model_files(tmp_path, DEFAULT_STACK_FILES)


def test_unknown_backend_and_missing_insightface_pack(monkeypatch):
    monkeypatch.delenv("DATAKIT_INSIGHTFACE_PACK", raising=False)
    with pytest.raises(ValueError, match="unknown face backend"):
        build_face_stack("mtcnn")
    with pytest.raises(ModelNotFoundError, match="DATAKIT_INSIGHTFACE_PACK"):
        build_face_stack("insightface")


# --- `--backend auto`: a configured or fetched insightface pack, else yunet, else dlib --------------------------


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No pack or models folder from the environment, and an empty per-user cache."""
    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    monkeypatch.delenv("DATAKIT_INSIGHTFACE_PACK", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


def test_auto_prefers_a_configured_pack(models_dir, clean_env, monkeypatch):
    import datakit.faces as faces

    monkeypatch.setattr(faces, "_insightface_installed", lambda: True)
    pack = models_dir / "insightface_sc_int8"
    choice = faces.choose_auto_backend(models_dir, pack)
    assert choice.backend == "insightface" and choice.insightface_pack == pack
    assert "--insightface-pack" in choice.reason and "insightface_sc_int8" in choice.reason
    monkeypatch.setenv("DATAKIT_INSIGHTFACE_PACK", str(pack))  # the variable configures it too
    assert faces.choose_auto_backend(models_dir).insightface_pack == pack


def test_auto_ignores_a_pack_copied_by_hand_into_the_models_folder(models_dir, clean_env, monkeypatch):
    """../shared/models holds insightface_sc_int8 without datakit's marker: the documented default stays."""
    import datakit.faces as faces

    monkeypatch.setattr(faces, "_insightface_installed", lambda: True)
    choice = faces.choose_auto_backend(models_dir)
    assert choice.backend == "yunet" and choice.notes == () and str(models_dir) in choice.reason


def test_auto_passes_over_an_unusable_pack_and_says_why(models_dir, clean_env, tmp_path, monkeypatch):
    import datakit.faces as faces

    monkeypatch.setattr(faces, "_insightface_installed", lambda: False)
    choice = faces.choose_auto_backend(models_dir, models_dir / "insightface_sc_int8")
    assert choice.backend == "yunet" and "insightface package is not installed" in choice.notes[0]
    monkeypatch.setattr(faces, "_insightface_installed", lambda: True)
    (tmp_path / "empty-pack").mkdir()
    stack = build_face_stack("auto", models_dir=tmp_path / "nowhere", insightface_pack=tmp_path / "empty-pack")
    assert stack.name == "dlib-hog+dlib68+dlib"  # no pack, no YuNet files: the fallback, with every reason
    notes = " ".join(stack.notes)
    assert "holds no *.onnx" in notes and "default stack unavailable" in notes and "profile" in notes
