"""HarmoView: a Wan2.x text-to-video DiT that keeps 1-3 people themselves across viewpoints.

Public API shared by the trainer and the sampler:

    from harmoview import DiTConfig, get_config, build_model, References
    model, report = build_model(get_config("wan2.1-t2v-1.3b"), "/ckpt/Wan2.1-T2V-1.3B")
    velocity = model(video_latents, timesteps, text_features, references, vit_features)
"""

from harmoview.model.config import FRONTAL_SLOT, PRESETS, VIEW_SLOTS, DiTConfig, get_config
from harmoview.model.dit import HarmoViewDiT, is_harmoview_param
from harmoview.model.mfi import MFIProjector, ViTFeatures, load_vit
from harmoview.model.references import References, reference_layout
from harmoview.model.weights import (
    LoadReport,
    build_model,
    from_pretrained,
    load_weights,
    read_state_dict,
    save_checkpoint,
    to_layout,
)

__all__ = [
    "FRONTAL_SLOT",
    "PRESETS",
    "VIEW_SLOTS",
    "DiTConfig",
    "HarmoViewDiT",
    "LoadReport",
    "MFIProjector",
    "References",
    "ViTFeatures",
    "build_model",
    "from_pretrained",
    "get_config",
    "is_harmoview_param",
    "load_vit",
    "load_weights",
    "read_state_dict",
    "reference_layout",
    "save_checkpoint",
    "to_layout",
]
