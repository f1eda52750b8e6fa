"""TrainConfig: presets fill in what is not given."""
import dataclasses

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


# The lessons' routines as the course notes write them (course: train.py's DataLoader(batch_size=64), SGD(lr=1e-2),
# 10 epochs, the CIFAR-10 net; blitz: batch_size=50, Adam(lr=0.001), EPOCH = 1, the MNIST CNN), plus everything
# tudui adds by default switched off: smoothing, decay, augmentation, TTA, EMA, clipping, warm-up, mixed precision.
PLAIN = {"loss": "cross-entropy", "label_smoothing": 0.0, "weight_decay": 0.0, "augment": "none", "tta": False,
         "scheduler": "none", "warmup_epochs": 0.0, "ema": False, "clip_grad": None, "amp": "off"}
LESSONS = {
    "course": PLAIN | {"model": "cifar-net", "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "momentum": 0.0,
                       "epochs": 10},
    "blitz": PLAIN | {"model": "mnist-cnn", "batch_size": 50, "optimizer": "adam", "lr": 0.001, "momentum": 0.9,
                      "epochs": 1},
}


@pytest.mark.parametrize("preset", sorted(LESSONS))
def test_the_lesson_presets_are_the_lessons_routines_and_change_nothing_else(preset):
    cfg = TrainConfig.from_dict({"data": ["digits"], "preset": preset})
    default = TrainConfig.from_dict({"data": ["digits"]})
    for field in dataclasses.fields(TrainConfig):
        expected = LESSONS[preset].get(field.name, getattr(default, field.name))
        if field.name != "preset":
            assert getattr(cfg, field.name) == expected, field.name


@pytest.mark.parametrize("preset", sorted(LESSONS))
def test_options_given_on_the_command_line_win_over_a_lesson_preset(preset, monkeypatch, tmp_path):
    """`tudui train --preset course --lr 0.1 ...` trains at 0.1 with the rest of the course (the config the run
    gets, resolved by the CLI exactly as for training; the training itself is replaced by a stub)."""
    import tudui.api
    from tudui.cli import main

    seen = []
    monkeypatch.setattr(tudui.api, "fit", lambda cfg, callbacks: seen.append(cfg))
    given = {"lr": 0.1, "momentum": 0.5, "scheduler": "onecycle", "tta": True, "batch_size": 32, "epochs": 2,
             "augment": "flip", "amp": "bf16", "weight_decay": 0.01}
    argv = ["train", "--data", "digits", "--preset", preset, "--project", str(tmp_path), "--lr", "0.1",
            "--momentum", "0.5", "--scheduler", "onecycle", "--tta", "--batch-size", "32", "--epochs", "2",
            "--augment", "flip", "--amp", "bf16", "--weight-decay", "0.01"]
    assert main(argv) == 0
    (cfg,) = seen
    for key, value in (LESSONS[preset] | given).items():
        assert getattr(cfg, key) == value, key
    assert not list(tmp_path.iterdir())  # resolving the options wrote nothing


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


# --- range checks live with the fields and run before any data is read ------------------------------------------------
class UntouchableData:
    """A Dataset that fails the test as soon as anything reads it (its length, an item)."""

    def __len__(self):
        raise AssertionError("the data was read before the options were checked")

    def __getitem__(self, i):
        raise AssertionError("the data was read before the options were checked")


RANGES = [("lr", 0, "--lr must be positive"), ("lr", -1e-3, "--lr must be positive"),
          ("val_split", 1.5, r"--val-split must be in \[0, 1\)"),
          ("val_split", -0.1, r"--val-split must be in \[0, 1\)"),
          ("label_smoothing", 1.0, r"--label-smoothing must be in \[0, 1\)"),
          ("batch_size", 0, "--batch-size must be at least 1"), ("time", 0, "--time is a budget in minutes and must be positive")]


@pytest.mark.parametrize("option, value, message", RANGES)
def test_a_value_out_of_range_is_refused_before_any_data_is_read(option, value, message):
    import tudui

    with pytest.raises(TuduiError, match=message):
        tudui.train(data=[UntouchableData()], **{option: value}, plots=False, tensorboard=False)


@pytest.mark.parametrize("option, value, message", RANGES)
def test_the_cli_refuses_a_value_out_of_range_before_looking_for_the_data(option, value, message, tmp_path, capsys):
    """A --data folder that does not exist: had the data been looked for first, the error would name the folder."""
    from tudui.cli import main

    flag = "--" + option.replace("_", "-")
    assert main(["train", "--data", str(tmp_path / "no-such-folder"), flag, str(value), "--project",
                 str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-such-folder" not in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "runs").exists()  # no run directory either


@pytest.mark.parametrize("call, message", [
    (lambda t, p: t.predict(p / "missing.pt", [str(p)], batch_size=0), "--batch-size must be at least 1"),
    (lambda t, p: t.evaluate(p / "missing.pt", "digits", split="holdout"), "--split takes one of auto, test, val, train, all"),
    (lambda t, p: t.evaluate(p / "missing.pt", "digits", batch_size=-1), "--batch-size must be at least 1"),
    (lambda t, p: t.export(p / "missing.pt", "tflite"), "--format takes one of onnx, torchscript, safetensors"),
    (lambda t, p: t.serve(p / "missing.pt", max_batch=0), "--max-batch must be at least 1"),
    (lambda t, p: t.serve(p / "missing.pt", max_wait_ms=-1), "--max-wait-ms must be at least 0"),
    (lambda t, p: t.serve(p / "missing.pt", read_timeout_s=0), "--read-timeout must be positive"),
    (lambda t, p: t.serve(p / "missing.pt", max_upload_mb=0), "--max-upload-mb must be positive"),
    (lambda t, p: t.serve(p / "missing.pt", max_decode_mb=-5), "--max-decode-mb must be positive"),
    (lambda t, p: t.serve(p / "missing.pt", prot=80), "unknown option.*prot"),
    (lambda t, p: t.lr_find(data=[UntouchableData()], steps=0), "--steps must be at least 1"),
    (lambda t, p: t.lr_find(data=[UntouchableData()], start=0), "--start must be positive"),
])
def test_every_commands_options_are_checked_before_the_model_or_data_is_loaded(call, message, tmp_path):
    """The model file does not exist: had it been loaded first, the error would say so."""
    import tudui.api

    with pytest.raises(TuduiError, match=message):
        call(tudui.api, tmp_path)


def test_options_of_each_command_carry_their_defaults_once():
    """The library's keywords, the CLI's defaults and the predictor's own default all read the dataclass."""
    import inspect

    from tudui.core.options import EVAL_BATCH_SIZE, EvalOptions, PredictOptions, ServeOptions
    from tudui.data import EVAL_BATCH_SIZE as data_eval_batch
    from tudui.inference.predictor import Predictor

    assert PredictOptions.batch_size == 64 and PredictOptions.topk == 5
    predict = inspect.signature(Predictor.predict).parameters
    assert predict["batch_size"].default == PredictOptions.batch_size and predict["topk"].default == PredictOptions.topk
    assert EvalOptions.batch_size == EVAL_BATCH_SIZE == data_eval_batch == 512
    assert (ServeOptions.max_batch, ServeOptions.max_wait_ms, ServeOptions.read_timeout_s) == (32, 2.0, 30.0)
    serve = ServeOptions(model="m.pt")
    assert serve.host == "127.0.0.1" and serve.port == 8000 and serve.docs is True


def test_a_field_states_its_range_once_for_the_message_and_the_check():
    from tudui.core.options import bounds_text, in_bounds

    assert bounds_text({"min": 0, "lt": 1}) == "in [0, 1)" and in_bounds(0, {"min": 0, "lt": 1})
    assert not in_bounds(1, {"min": 0, "lt": 1})
    assert bounds_text({"gt": 0, "max": 1}) == "in (0, 1]" and not in_bounds(0, {"gt": 0, "max": 1})
    assert bounds_text({"gt": 0}) == "positive" and bounds_text({"min": 1}) == "at least 1"
    assert bounds_text({}) is None
