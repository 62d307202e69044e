"""`HarmoViewPipeline` on a tiny random checkpoint and tiny encoders (CPU): sampling, sizes, the mp4 + sidecar."""

from __future__ import annotations

import json

import pytest
import torch

from harmoview.pipeline import sidecar_path
from tests.harmoview.helpers import SMALL, decode_mp4, grey


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_samplers_run_and_seed_reproduces(pipe, sampler):
    refs = [{"frontal": grey()}]
    a = pipe("a man talks", refs, sampler=sampler, seed=1, **SMALL)
    b = pipe("a man talks", refs, sampler=sampler, seed=1, **SMALL)
    c = pipe("a man talks", refs, sampler=sampler, seed=2, **SMALL)
    assert a.shape == (3, 5, 32, 48)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_bad_sizes_are_clear_errors(pipe):
    with pytest.raises(ValueError, match="frames 4"):
        pipe("x", [], **{**SMALL, "num_frames": 4})
    with pytest.raises(ValueError, match="height 20"):
        pipe("x", [], **{**SMALL, "height": 20})
    with pytest.raises(ValueError, match="unknown view"):
        pipe("x", [{"top": grey()}], **SMALL)


def test_save_writes_mp4_and_sidecar(pipe, tmp_path):
    frames = pipe("a man talks", [{"frontal": grey()}], sampler="euler", seed=3, **SMALL)
    path = pipe.save(frames, tmp_path / "out.mp4", fps=8, sidecar={"references": [{"frontal": "grey.png"}]})
    decoded = decode_mp4(path)
    assert decoded.shape == (5, 32, 48, 3)
    record = json.loads(sidecar_path(path).read_text())
    assert record["seed"] == 3 and record["sampler"] == "euler" and record["steps"] == 2
    assert record["references"] == [{"frontal": "grey.png"}] and record["model"].endswith("tiny")


def test_references_change_the_video(pipe):
    a = pipe("a man talks", [{"frontal": grey(0)}], sampler="euler", seed=1, **SMALL)
    b = pipe("a man talks", [{"frontal": grey(5)}], sampler="euler", seed=1, **SMALL)
    c = pipe("a man talks", [], sampler="euler", seed=1, **SMALL)
    assert not torch.equal(a, b) and not torch.equal(a, c)


def test_mfi_features_come_from_the_frontal_crop_only(pipe):
    """ViT features are those of each identity's frontal crop; an identity without one gets zeros."""
    refs, vit = pipe.encode_references([{"frontal": grey(0), "left": grey(1)}, {"left": grey(2)}])
    assert refs.present[0].tolist() == [[True, True, False, False, False], [False, True, False, False, False]]
    assert vit is not None and vit.shape[:2] == (1, 2)
    assert vit[0, 0].abs().sum() > 0 and torch.equal(vit[0, 1], torch.zeros_like(vit[0, 1]))
    _, alone = pipe.encode_references([{"frontal": grey(0)}])
    torch.testing.assert_close(alone[0, 0], vit[0, 0])
