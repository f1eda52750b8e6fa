"""TrainConfig: presets fill in what is not given."""
import pytest

from tudui.core.config import PRESETS, TrainConfig
from tudui.core.errors import TuduiError


def test_preset_fills_only_the_options_not_given():
    best = PRESETS["best"]
    assert best, "the best preset sets something"
    cfg = TrainConfig.from_dict({"data": ["digits"], "preset": "best", "epochs": 3})
    assert cfg.epochs == 3  # given explicitly: kept
    for key, value in best.items():
        if key != "epochs":
            assert getattr(cfg, key) == value
    plain = TrainConfig.from_dict({"data": ["digits"]})
    assert any(getattr(plain, k) != v for k, v in best.items())  # the preset changes something


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(TuduiError, match="unknown preset 'fastest'; choose one of: best, max"):
        TrainConfig.from_dict({"data": ["digits"], "preset": "fastest"})


def test_explicit_epochs_replace_a_presets_time_budget():
    assert TrainConfig.from_dict({"preset": "max"}).time == 55.0
    cfg = TrainConfig.from_dict({"preset": "max", "epochs": 2})
    assert cfg.time is None and cfg.epochs == 2 and cfg.model == "fast-res-wide"
    assert TrainConfig.from_dict({"preset": "max", "epochs": 2, "time": 5}).time == 5


@pytest.mark.parametrize("option, value", [("cuda_graph", "maybe"), ("augment", "xyz"), ("bad_images", "ignore"),
                                           ("scheduler", "linear")])
def test_a_value_outside_an_options_choices_is_a_clear_error_from_the_library_too(option, value):
    flag = "--" + option.replace("_", "-")
    with pytest.raises(TuduiError, match=f"{flag} takes one of .*got '{value}'"):
        TrainConfig.from_dict({"data": ["digits"], option: value})


def test_sizes_a_model_file_could_not_be_loaded_with_are_refused_at_training(tmp_path, capsys):
    """What predict/serve refuse in a model file (an input side over MAX_IMG_SIZE, a std of 0 or NaN) is refused
    before training too, so tudui never writes a model it will not load."""
    from tudui.cli import main
    from tudui.core.config import MAX_IMG_SIZE

    with pytest.raises(TuduiError, match=r"--img-size must be in \[1, 2048\]"):
        TrainConfig(data="digits", img_size=MAX_IMG_SIZE + 1)
    for std in ("0", "nan"):
        capsys.readouterr()
        assert main(["train", "--data", "digits", "--model", "fast", "--epochs", "1", "--mean", "0.5", "--std", std,
                     "--project", str(tmp_path)]) == 2
        assert "--std must be finite and positive" in capsys.readouterr().err
