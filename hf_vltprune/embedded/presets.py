"""Presets of the embedded default: how much synthetic data, how large a BLIP, how long to train it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import BlipConfig

from ..data import SceneSpec


@dataclass(frozen=True)
class Preset:
    """A data + model + schedule recipe.

    Args:
        name: preset name (`micro` for tests, `tiny` for CPUs, `small` for a GPU).
        image_size, patch_size: the images and the ViT patches (`(image_size / patch_size)^2 + 1` vision tokens).
        vision_layers, text_layers, hidden_size, heads: the BLIP encoders (text and vision share the width).
        num_train, num_validation, num_test: synthetic examples per split.
        max_steps, batch_size, learning_rate, warmup_ratio: the training schedule.
        clutter, max_objects: scene difficulty.
        aligned_objects: place the objects on the patch grid (`SceneSpec.grid`), so a ViT trained for minutes
            reads their shapes (measured on `tiny`: ITM accuracy 71.8% with objects anywhere, 96.2% aligned).
        grounding: weight of the grounding losses in base-model training (`hf_vltprune.embedded.grounding`; 0: ITC
            and ITM only).
    """

    name: str
    image_size: int
    patch_size: int
    vision_layers: int
    text_layers: int
    hidden_size: int
    heads: int
    num_train: int
    num_validation: int
    num_test: int
    max_steps: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float = 0.05
    clutter: int = 40
    max_objects: int = 6
    grounding: float = 1.0
    aligned_objects: bool = True

    def __post_init__(self):
        if self.grounding < 0:
            raise ValueError(f"Preset.grounding={self.grounding} is invalid: allowed >= 0 (0 turns it off).")

    @property
    def patch_grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def vision_tokens(self) -> int:
        return self.patch_grid ** 2 + 1

    def scene_spec(self) -> SceneSpec:
        """How this preset's scenes are drawn."""
        grid = self.patch_grid if self.aligned_objects else None
        return SceneSpec(image_size=self.image_size, clutter=self.clutter, max_objects=self.max_objects, grid=grid)

    def blip_config(self, tokenizer) -> BlipConfig:
        """A `BlipConfig` of this size for `tokenizer`'s vocabulary and special tokens."""
        text = dict(
            vocab_size=len(tokenizer), hidden_size=self.hidden_size, intermediate_size=4 * self.hidden_size,
            num_hidden_layers=self.text_layers, num_attention_heads=self.heads, max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id,
        )
        vision = dict(
            hidden_size=self.hidden_size, intermediate_size=4 * self.hidden_size, num_hidden_layers=self.vision_layers,
            num_attention_heads=self.heads, image_size=self.image_size, patch_size=self.patch_size,
            initializer_range=0.02,
        )
        return BlipConfig(text_config=text, vision_config=vision, projection_dim=self.hidden_size,
                          image_text_hidden_size=self.hidden_size)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # Seconds on a CPU: for tests and smoke runs, not for accuracy.
    "micro": Preset("micro", image_size=32, patch_size=8, vision_layers=2, text_layers=2, hidden_size=32, heads=2,
                    num_train=64, num_validation=32, num_test=32, max_steps=4, batch_size=16, learning_rate=1e-3,
                    clutter=5, max_objects=3),
    # About 10 minutes on 2 CPU cores: 128 px, 16 px patches (65 vision tokens), objects on the patch grid.
    "tiny": Preset("tiny", image_size=128, patch_size=16, vision_layers=4, text_layers=4, hidden_size=128, heads=4,
                   num_train=12000, num_validation=1000, num_test=1000, max_steps=1000, batch_size=48,
                   learning_rate=1e-3, clutter=30, max_objects=4),
    # One GPU: ViT-S/16-like at 224 px (197 vision tokens), 12 layers.
    "small": Preset("small", image_size=224, patch_size=16, vision_layers=12, text_layers=6, hidden_size=384, heads=6,
                    num_train=60000, num_validation=2000, num_test=2000, max_steps=12000, batch_size=128,
                    learning_rate=3e-4),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is invalid: allowed {sorted(PRESETS)}.")
    return PRESETS[name]
