"""``qwen2.5-vl``: a local Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint through transformers.

The model and processor load with ``from_pretrained(DIR, local_files_only=True)``; nothing is downloaded.
Each clip's sampled frames go in as one video message (the processor's video path: frames are resized
with Qwen's ``smart_resize`` to the pixel budget, with the per-frame cap that qwen-vl-utils applies), the
batch is padded on the left and decoded greedily. GPU (bf16) when one is visible, else CPU (fp32).

qwen-vl-utils is not needed: its ``process_vision_info`` reads and resizes video files, while the caption
stage decodes the clip's frames itself (PyAV) and the transformers video processor does the same resize.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datakit.clips.captions.base import CaptionerConfigError, ClipFrames, model_dir_name
from datakit.clips.captions.prompts import get_prompt

#: config.model_type -> transformers class; anything else goes through AutoModelForImageTextToText
MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
}


class EmptyCaptionError(RuntimeError):
    """The model produced no text for a clip (recorded as an error, never stored as a caption)."""


def model_class(model_type: str):
    """The transformers class for a checkpoint's ``model_type``."""
    import transformers

    name = MODEL_CLASSES.get(model_type)
    cls = getattr(transformers, name, None) if name else None
    return cls if cls is not None else transformers.AutoModelForImageTextToText


class QwenVLCaptioner:
    """Captions clips with a local Qwen-VL checkpoint."""

    name = "qwen2.5-vl"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        prompt_version: str = "v1",
        max_pixels: int = 448 * 448,
        max_new_tokens: int = 256,
        device: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoProcessor

        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise CaptionerConfigError(f"--caption-model-dir {folder}: no config.json (not a transformers checkpoint)")
        self.model = model_dir_name(folder)
        self.prompt_version = prompt_version
        self.prompt = get_prompt(prompt_version)
        self.max_pixels = int(max_pixels)
        self.max_new_tokens = int(max_new_tokens)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"  # generation continues after the prompt
        self.net = (
            model_class(config.model_type)
            .from_pretrained(folder, local_files_only=True, dtype=dtype)
            .to(self.device)
            .eval()
        )
        video = getattr(self.processor, "video_processor", None)
        short = int(getattr(video, "size", {}).get("shortest_edge", 0) or 0) if video is not None else 0
        self._size = {"shortest_edge": min(short or 28 * 28 * 4, self.max_pixels), "longest_edge": self.max_pixels}
        self._extra = {"cap_pixels_per_frame": True} if hasattr(video, "cap_pixels_per_frame") else {}

    @classmethod
    def from_config(cls, cfg) -> QwenVLCaptioner:
        return cls(
            cfg.caption_model_dir,
            prompt_version=cfg.caption_prompt_version,
            max_pixels=cfg.caption_max_pixels,
            max_new_tokens=cfg.caption_max_new_tokens,
        )

    def _messages(self) -> list[dict]:
        return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": self.prompt}]}]

    def caption(self, batch: Sequence[ClipFrames]) -> list[str]:
        import torch

        if not batch:
            return []
        text = self.processor.apply_chat_template(self._messages(), tokenize=False, add_generation_prompt=True)
        metadata = [
            {
                "total_num_frames": len(c.frames),
                "fps": float(c.fps),
                "frames_indices": list(range(len(c.frames))),
                "video_backend": "pyav",
            }
            for c in batch
        ]
        inputs = self.processor(
            text=[text] * len(batch),
            videos=[c.frames for c in batch],
            video_metadata=metadata,
            size=self._size,
            padding=True,
            return_tensors="pt",
            **self._extra,
        ).to(self.device)
        with torch.inference_mode():
            out = self.net.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        texts = [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]
        for clip, t in zip(batch, texts, strict=True):
            if not t:
                raise EmptyCaptionError(f"the model produced no caption text for clip {clip.clip_id}")
        return texts
