"""The package list in pyproject.toml is written by hand (see the comment there): it must name every folder."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    listed = (ROOT / "pyproject.toml").read_text()
    folders = [p for p in (ROOT / "hf_vltprune").rglob("*") if p.is_dir() and p.name != "__pycache__"]
    names = ["hf_vltprune"] + [".".join(("hf_vltprune",) + p.relative_to(ROOT / "hf_vltprune").parts) for p in folders]
    missing = [name for name in names if f'"{name}"' not in listed]
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert '"hf_vltprune.model_cards" = "model_cards"' in listed and (ROOT / "model_cards" / "__init__.py").is_file()


def test_the_card_template_ships_with_the_package():
    from importlib.resources import files

    template = files("hf_vltprune.model_cards").joinpath("pruned_model_card.md").read_text()
    assert "{{ card_data }}" in template and "hf-vltprune:start" in template
