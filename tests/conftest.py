"""Tiny BLIP configs and inputs shared by the tests (no download: everything is built from configs)."""

import pytest
import torch
from transformers import BlipConfig

VOCAB = 64
PAD, BOS, SEP = 0, 1, 2


def tiny_blip_config(vision_layers: int = 3, text_layers: int = 2, **overrides) -> dict:
    """Keyword arguments for a tiny `BlipConfig` (or `BlipPrunedConfig`): 4x4 patches of 32x32 images = 65 tokens."""
    text = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers, num_attention_heads=4,
        max_position_embeddings=32, bos_token_id=BOS, sep_token_id=SEP, pad_token_id=PAD, eos_token_id=SEP,
    )
    # BLIP VQA feeds question states to a decoder built for image states: both widths must match.
    # BlipVisionConfig initialises with std 1e-10 by default: a vision tower that ignores its input would hide bugs.
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers, num_attention_heads=4,
                  image_size=32, patch_size=4, initializer_range=0.02)
    return dict(text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16, **overrides)


@pytest.fixture
def blip_config() -> BlipConfig:
    return BlipConfig(**tiny_blip_config())


def make_inputs(batch: int = 3, length: int = 9, seed: int = 0, pad_last: bool = True) -> dict:
    """Random pixels and token ids; with `pad_last`, each later sample is shorter (right padding)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, 32, 32, generator=generator)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    input_ids[:, 0] = BOS
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if pad_last:
        for row in range(batch):
            valid = length - 2 * row
            input_ids[row, valid:] = PAD
            attention_mask[row, valid:] = 0
    return dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)


@pytest.fixture
def inputs() -> dict:
    return make_inputs()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
