"""The HarmoView DiT: configs, blocks, RoPE (Jump-RoPE), reference tokens, MFI, weights and encoders."""
