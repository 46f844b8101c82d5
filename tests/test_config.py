import pytest

from hf_vltprune import BlipPrunedConfig, PruningConfig, reducer_names

from .conftest import tiny_blip_config


def test_defaults_are_the_stock_model():
    config = PruningConfig()
    assert not config.reduces("vision") and not config.reduces("text")
    assert config.keep_schedule("vision", 12) == {}


def test_keep_becomes_a_linear_schedule_over_all_layers():
    config = PruningConfig(method="tome", vision_keep=0.25)
    schedule = config.keep_schedule("vision", 3)
    assert list(schedule) == [0, 1, 2]
    assert schedule[2] == pytest.approx(0.25)
    assert schedule[0] == pytest.approx(0.75) and schedule[1] == pytest.approx(0.5)


def test_explicit_schedule_sets_keep_and_defaults_to_the_last_layers():
    config = PruningConfig(vision_schedule=[0.8, 0.5])
    assert config.vision_keep == 0.5
    assert config.keep_schedule("vision", 4) == {2: 0.8, 3: 0.5}
    config = PruningConfig(vision_layers=[0, 5], vision_schedule=[0.8, 0.5])
    assert config.keep_schedule("vision", 6) == {0: 0.8, 5: 0.5}


def test_round_trip_through_dict():
    config = PruningConfig(method="crossget", vision_keep=0.5, text_keep=0.8, text_layers=[1])
    assert PruningConfig.from_dict(config.to_dict()) == config


def test_registry_lists_the_builtin_methods():
    assert {"tome", "crossget"} <= set(reducer_names())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(method="nope"), "method"),
        (dict(vision_keep=0.0), "vision_keep"),
        (dict(vision_keep=1.5), "vision_keep"),
        (dict(text_keep=-0.1), "text_keep"),
        (dict(vision_keep="half"), "vision_keep"),
        (dict(vision_keep=True), "vision_keep"),
        (dict(vision_keep=0.5, vision_layers=[]), "vision_layers"),
        (dict(vision_keep=0.5, vision_layers=[-1]), "vision_layers"),
        (dict(vision_keep=0.5, vision_layers=[1, 1]), "vision_layers"),
        (dict(vision_layers=[1, 2]), "vision_layers"),  # layers given but nothing to remove
        (dict(vision_schedule=[0.5, 0.8]), "vision_schedule"),  # increasing
        (dict(vision_schedule=[1.2]), "vision_schedule"),
        (dict(vision_schedule=[0.8, 0.5], vision_keep=0.3), "vision_keep"),  # conflicting budgets
        (dict(vision_layers=[0, 1, 2], vision_schedule=[0.8, 0.5]), "vision_schedule"),  # one entry per layer
        (dict(method="tome", method_options={"bogus": 1}), "method_options"),
        (dict(proportional_attention="yes"), "proportional_attention"),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PruningConfig(**kwargs)


def test_unknown_fields_are_rejected():
    with pytest.raises(ValueError, match="unknown fields"):
        PruningConfig.from_dict({"vision_kep": 0.5})


def test_layers_out_of_range_for_the_model_raise():
    with pytest.raises(ValueError, match="vision_layers"):
        BlipPrunedConfig(**tiny_blip_config(pruning=dict(vision_keep=0.5, vision_layers=[3])))
    with pytest.raises(ValueError, match="text_schedule"):
        BlipPrunedConfig(**tiny_blip_config(pruning=dict(text_schedule=[0.9, 0.8, 0.7])))


def test_model_config_serialises_pruning(tmp_path):
    config = BlipPrunedConfig(**tiny_blip_config(pruning=PruningConfig(method="crossget", vision_keep=0.5)))
    config.save_pretrained(tmp_path)
    loaded = BlipPrunedConfig.from_pretrained(tmp_path)
    assert loaded.model_type == "blip_pruned"
    assert loaded.pruning_config == PruningConfig(method="crossget", vision_keep=0.5)
