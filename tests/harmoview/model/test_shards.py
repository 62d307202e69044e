"""Streaming a sharded diffusers checkpoint: one file and one tensor at a time, stored dtype until copied in."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator
from itertools import groupby

import pytest
import torch
from diffusers import WanTransformer3DModel

from harmoview import build_model
from harmoview.model.shards import CheckpointSource, TensorRef, checkpoint_files
from harmoview.model.weights import diffusers_config, read_state_dict, to_layout


class CountingSource:
    """Instrument around a real `CheckpointSource`: counts the tensors it handed out that are still alive."""

    def __init__(self, source: CheckpointSource) -> None:
        self.source, self.alive, self.peak, self.files = source, 0, 0, []

    def shapes(self) -> dict:
        return self.source.shapes()

    def items(self) -> Iterator[TensorRef]:
        for ref in self.source.items():
            self.files.append(ref.file)
            yield TensorRef(ref.key, ref.shape, lambda rows, read=ref.read_rows: self._count(read(rows)), ref.file)

    def _count(self, tensor: torch.Tensor) -> torch.Tensor:
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        weakref.finalize(tensor, self._freed)
        return tensor

    def _freed(self) -> None:
        self.alive -= 1


@pytest.fixture
def sharded_bf16(tiny, tmp_path):
    """A tiny Wan backbone saved by diffusers in bf16 as a sharded folder (index + several files)."""
    torch.manual_seed(3)
    theirs = WanTransformer3DModel(**{k: v for k, v in diffusers_config(tiny).items() if not k.startswith("_")})
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    theirs.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="60KB")
    return tmp_path, {k: v.detach().clone() for k, v in theirs.state_dict().items()}


def test_sharded_folder_streams_file_by_file_one_tensor_at_a_time(tiny, sharded_bf16):
    folder, stored = sharded_bf16
    index = json.loads(next(folder.glob("*.safetensors.index.json")).read_text())
    files = checkpoint_files(folder)
    assert len(files) >= 2 and {f.name for f in files} == set(index["weight_map"].values())

    counting = CountingSource(CheckpointSource.open(folder))
    torch.manual_seed(0)  # the new HarmoView modules draw the same numbers in both loads
    streamed, report = build_model(tiny, counting)
    assert report.ok and report.layout == "diffusers" and report.new  # MFI / LPT are not in a Wan checkpoint
    # every file once, in turn; never more than one stored tensor alive (so never more than one shard)
    assert [f for f, _ in groupby(counting.files)] == files
    assert counting.peak == 1 and counting.alive == 0

    torch.manual_seed(0)
    whole, _ = build_model(tiny, read_state_dict(folder))  # the whole state dict at once, as before
    for name, p in streamed.named_parameters():
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, whole.get_parameter(name), atol=0, rtol=0)
    # the stored bf16 values, converted on copy (through our native <-> diffusers key map)
    for key, value in to_layout(streamed, "diffusers").items():
        if key in stored:
            torch.testing.assert_close(value, stored[key].float(), atol=0, rtol=0)


def test_bf16_model_gets_the_stored_bf16_tensors(tiny, sharded_bf16):
    folder, stored = sharded_bf16
    model, _ = build_model(tiny, folder, dtype=torch.bfloat16)
    weight = model.blocks[1].ffn[0].weight
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, stored["blocks.1.ffn.net.0.proj.weight"])


def test_rows_of_a_stored_tensor_read_alone(sharded_bf16):
    folder, stored = sharded_bf16
    for ref in CheckpointSource.open(folder).items():  # a ref reads while its file is open: inside the loop
        if ref.key == "proj_out.weight":
            assert ref.shape == tuple(stored["proj_out.weight"].shape)
            assert torch.equal(ref.read(slice(3, 7)), stored["proj_out.weight"][3:7])
            break
    else:
        raise AssertionError("proj_out.weight not found")
