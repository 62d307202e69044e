"""Test support, not part of the library: tiny random encoders (the real classes at toy sizes).

No module of `harmoview` imports this one (the import contract in pyproject.toml keeps it so); tests,
benchmarks and the README's weight-free try-out do. The encoders are written through their real
`save_pretrained`, so the loading code under test is the one that loads real weights.

`write_tiny_encoders(root)` lays them out like a diffusers Wan folder (vae/, text_encoder/, tokenizer/) plus
an open_clip vit/, so both `EncoderPaths.from_wan_dir(root, vit=root / "vit")` and the returned paths work.
Sizes match `get_config("tiny")`: z=4 latents, 24-wide text features, a 16-wide ViT read at two depths.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harmoview.model.encoders import EncoderPaths

# Layers of the tiny ViT read for MFI: two depths, as get_config("tiny").vit_num_levels = 2.
tiny_vit_layers = (0, 1)
TINY_VIT = {"layers": 2, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 32}
TINY_TEXT_DIM = 24

# Tokenizer training text: caption-like words become whole tokens; the character alphabet below means an
# unseen word still splits into distinct pieces instead of collapsing to <unk>.
_CORPUS = (
    "a man and a woman talk in a kitchen, smiling at the camera.",
    "a person walks through the park; the camera follows from the left.",
    "two people sit at a table and turn their heads to the right.",
    "close-up of a face in profile, soft light, indoor scene.",
    "a group of friends laughing outdoors on a sunny day.",
)
_ALPHABET = [chr(c) for c in range(33, 127)]
_SPECIALS = ["<pad>", "</s>", "<unk>"]  # T5's ids: pad 0, eos 1, unk 2


def write_tiny_encoders(root: str | Path, *, seed: int = 0) -> EncoderPaths:
    """Write a tiny VAE, umT5, tokenizer and open_clip ViT under root; deterministic for a seed."""
    root = Path(root)
    # fork_rng: seeding here must not change the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer_dir = write_tiny_tokenizer(root / "tokenizer")
        vocab_size = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
        return EncoderPaths(
            vae=write_tiny_vae(root / "vae"),
            text_encoder=write_tiny_text_encoder(root / "text_encoder", vocab_size),
            tokenizer=tokenizer_dir,
            vit=write_tiny_vit(root / "vit"),
        )


def write_tiny_vae(folder: Path, *, z_dim: int = 4, wan22: bool = False) -> Path:
    """AutoencoderKLWan with 8 channels throughout: temporal stride 4, spatial stride 8 (16 when wan22).

    wan22 mimics the Wan2.2 TI2V-5B VAE layout: residual blocks and 2x2 pixels folded into channels
    (patch_size 2, so 3 * 4 = 12 channels in and out).
    """
    from diffusers import AutoencoderKLWan

    # Spread-out statistics so that a test can tell normalised from raw latents.
    stats = {"latents_mean": [0.1 * (i + 1) for i in range(z_dim)], "latents_std": [1.0 + i for i in range(z_dim)]}
    layout = {"base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1, "temperal_downsample": [False, True, True]}
    if wan22:
        extra = {"is_residual": True, "patch_size": 2, "in_channels": 12, "out_channels": 12}
        extra |= {"scale_factor_spatial": 16, "scale_factor_temporal": 4}
    else:
        extra = {"scale_factor_spatial": 8, "scale_factor_temporal": 4}
    AutoencoderKLWan(z_dim=z_dim, **layout, **stats, **extra).save_pretrained(folder)
    return folder


def write_tiny_tokenizer(folder: Path) -> Path:
    """A BPE tokenizer trained here on a few captions, saved as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=192, special_tokens=_SPECIALS, initial_alphabet=_ALPHABET, show_progress=False
    )
    tok.train_from_iterator(_CORPUS, trainer)
    # T5 appends </s> to every sequence; an empty caption is then one token, not zero.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return folder


def write_tiny_text_encoder(folder: Path, vocab_size: int) -> Path:
    """UMT5EncoderModel, 2 layers of width 24 (= get_config('tiny').text_dim)."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=TINY_TEXT_DIM, d_kv=12, d_ff=48, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    UMT5EncoderModel(config).save_pretrained(folder)
    return folder


def write_tiny_vit(folder: Path) -> Path:
    """An open_clip vision tower (width 16, 2 layers, 32 px, patch 8) in the hub layout load_vit reads."""
    from safetensors.torch import save_file

    from harmoview.model.mfi import load_vit

    folder.mkdir(parents=True, exist_ok=True)
    visual = load_vit(TINY_VIT, layer_indices=tiny_vit_layers).visual
    state = {f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": {"embed_dim": TINY_VIT["width"], "vision_cfg": TINY_VIT}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder
