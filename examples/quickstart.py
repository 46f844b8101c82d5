"""Quick start on a tiny BLIP built from a config (no download): prune, measure, save, reload through the Auto API.

    python examples/quickstart.py
"""

import tempfile

import torch
from transformers import AutoModelForVisualQuestionAnswering, BlipConfig, BlipForQuestionAnswering

import hf_vltprune
from hf_vltprune import AutoPrunedModel, BlipPrunedForQuestionAnswering, PruningConfig

# A stock checkpoint: here a tiny random BLIP VQA model saved to a folder (a Hub id works the same way).
tiny = BlipConfig(
    text_config=dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, bos_token_id=1, sep_token_id=2, pad_token_id=0, eos_token_id=2),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       image_size=64, patch_size=8),
)
stock_dir = tempfile.mkdtemp()
BlipForQuestionAnswering(tiny).save_pretrained(stock_dir)

# Stock weights + CrossGET: keep 50% of the vision tokens and 75% of the question tokens.
pruning = PruningConfig(method="crossget", vision_keep=0.5, text_keep=0.75)
model = BlipPrunedForQuestionAnswering.from_pretrained(stock_dir, pruning_config=pruning).eval()

inputs = dict(pixel_values=torch.randn(2, 3, 64, 64), input_ids=torch.randint(3, 100, (2, 12)))
inputs["input_ids"][:, 0] = 1
answers = model.generate(**inputs, max_new_tokens=3)
print("answers:", answers.tolist())

unpruned = hf_vltprune.get_pruned_model(model, PruningConfig(method="crossget"))
for name, candidate in [("unpruned", unpruned), ("crossget", model)]:
    m = hf_vltprune.measure(candidate, {**inputs, "labels": inputs["input_ids"][:, :3]}, latency_repeats=3)
    print(f"{name:9s} {m.gflops:.4f} GFLOPs/sample, vision tokens per layer {m.tokens_per_layer['vision_model']}")

# Save and reload: the pruned class comes back, pruning active, through the transformers Auto class too.
out_dir = tempfile.mkdtemp()
model.save_pretrained(out_dir)
reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(out_dir).eval()
assert type(reloaded) is BlipPrunedForQuestionAnswering
assert torch.equal(reloaded.generate(**inputs, max_new_tokens=3), answers)
assert type(AutoPrunedModel.from_pretrained(out_dir)) is BlipPrunedForQuestionAnswering
print("reloaded:", type(reloaded).__name__, reloaded.pruning_config)
