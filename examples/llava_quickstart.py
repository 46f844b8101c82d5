"""Quick start on a tiny LLaVA built from a config (no download): prune the visual tokens, generate a padded batch,
measure, save and reload through the Auto API.

    python examples/llava_quickstart.py
"""

import tempfile

import torch
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

import hf_vltprune
from hf_vltprune import LlavaPrunedForConditionalGeneration, PruningConfig

# A stock checkpoint: here a tiny random LLaVA (64 visual tokens per image) saved to a folder; a Hub id such as
# "llava-hf/llava-1.5-7b-hf" works the same way.
IMAGE = 999
tiny = LlavaConfig(
    vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                   image_size=64, patch_size=8),
    text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                            vocab_size=1000, pad_token_id=0),
    image_token_id=IMAGE, pad_token_id=0,
)
stock_dir = tempfile.mkdtemp()
LlavaForConditionalGeneration(tiny).save_pretrained(stock_dir)

# Stock weights + VisionZip: the language model reads 16 of each image's 64 visual tokens.
model = LlavaPrunedForConditionalGeneration.from_pretrained(
    stock_dir, pruning_config=PruningConfig(method="visionzip", vision_tokens=16)).eval()

# Two prompts of different lengths, left-padded as for any decoder-only generation: <image>*64 then text.
prompts = [[1] + [IMAGE] * 64 + [5, 6, 7], [1] + [IMAGE] * 64 + [8, 9, 10, 11, 12]]
width = max(map(len, prompts))
inputs = dict(
    input_ids=torch.tensor([[0] * (width - len(p)) + p for p in prompts]),
    attention_mask=torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
    pixel_values=torch.randn(2, 3, 64, 64),
)
generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
print("new tokens:", generated[:, width:].tolist())

for name, candidate in [("stock", LlavaForConditionalGeneration.from_pretrained(stock_dir)), ("visionzip", model)]:
    m = hf_vltprune.measure(candidate, inputs, latency_repeats=3)
    print(f"{name:9s} {m.gflops:.4f} GFLOPs/sample (prefill), {m.latency_ms:.1f} ms per batch")

# Save and reload: the pruned class comes back, pruning active, through the transformers Auto class.
out_dir = tempfile.mkdtemp()
model.save_pretrained(out_dir)
reloaded = AutoModelForImageTextToText.from_pretrained(out_dir).eval()
assert type(reloaded) is LlavaPrunedForConditionalGeneration
assert torch.equal(reloaded.generate(**inputs, max_new_tokens=5, do_sample=False), generated)
print("reloaded:", type(reloaded).__name__, reloaded.pruning_config.method, reloaded.config.pruning["vision_tokens"])
