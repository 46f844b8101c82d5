"""A tiny LLaVA (small CLIP tower + small Llama) and prompts with image placeholders, built from configs."""

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

IMAGE, PAD = 99, 0
PATCHES = 16  # 32x32 images, 8x8 patches


def tiny_llava_config(**overrides) -> LlavaConfig:
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=100, max_position_embeddings=256, pad_token_id=PAD)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, pad_token_id=PAD, **overrides)


def tiny_llava(seed: int = 0, **overrides) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(tiny_llava_config(**overrides)).eval()


def prompt(*parts) -> list[int]:
    """Token ids from parts: an int list is text, the string "image" is one image's placeholders."""
    ids = []
    for part in parts:
        ids += [IMAGE] * PATCHES if part == "image" else list(part)
    return ids


# Two prompts of different lengths; the second has two images.
PROMPTS = [prompt([10, 11, 12], "image", [30, 31, 32, 33, 34, 35]),
           prompt([10, 11], "image", [40, 41, 42], "image", [50, 51])]
IMAGES = [1, 2]


def pixels(seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, 3, 32, 32, generator=generator) for count in IMAGES]


def padded_batch(side: str, prompts=PROMPTS) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `attention_mask` of `prompts`, padded on `side`."""
    width = max(len(p) for p in prompts)
    rows, masks = [], []
    for ids in prompts:
        pad = [PAD] * (width - len(ids))
        rows.append(pad + ids if side == "left" else ids + pad)
        ones = [1] * len(ids)
        masks.append([0] * len(pad) + ones if side == "left" else ones + [0] * len(pad))
    return torch.tensor(rows), torch.tensor(masks)
