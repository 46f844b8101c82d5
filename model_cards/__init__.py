"""Model card templates, installed as `hf_vltprune.model_cards` (see pyproject.toml)."""
