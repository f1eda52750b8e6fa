import os
import sys

import pytest

from tests import forkserver
from tests.conftest import REPO


def test_version_and_help(cli):
    r = cli("--version")
    assert r.returncode == 0 and "tudui" in r.stdout
    r = cli("train", "--help")
    assert r.returncode == 0 and "--img-size" in r.stdout and "--label-smoothing" in r.stdout


def test_output_into_a_closed_pipe_ends_quietly_with_sigpipes_status():
    """`tudui models | head -1`: the reader is gone before tudui writes; no traceback, the status a shell gives a
    tool ended by SIGPIPE (141), as `yes | head -1` ends."""
    read, write = os.pipe()
    os.close(read)  # the reader went away
    try:
        r = forkserver.run([sys.executable, "-m", "tudui", "models"], stdout=write, stderr=forkserver.subprocess.PIPE,
                           text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(REPO / "src")})
    finally:
        os.close(write)
    assert r.returncode == 141 and r.stderr == "", r.stderr


def _subparser(name):
    import argparse

    from tudui.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_every_train_flag_is_listed_in_a_named_group():
    """`tudui train --help` in sections (data, model, optimisation, augmentation, run, device), none left over."""
    from tudui.core.options import GROUPS

    p = _subparser("train")
    titles = {g.title: g for g in p._action_groups}
    for title in ("data", "model", "optimisation", "augmentation", "run and output", "device and scale"):
        assert titles[title]._group_actions, f"group {title!r} is empty"
    loose = [a.option_strings for g in p._action_groups if g.title not in GROUPS.values() for a in g._group_actions
             if not set(a.option_strings) & {"-h", "--help", "--debug"}]
    assert loose == []


@pytest.mark.parametrize("command, classes, cli_only", [
    ("train", ["TrainConfig"], {"_config"}),
    ("lr-find", ["TrainConfig", "LrFindOptions"], {"_config"}),
    ("tune", ["TrainConfig", "TuneOptions"], {"_config"}),
    ("eval", ["EvalOptions"], {"json", "out"}),
    ("predict", ["PredictOptions"], {"json"}),
    ("export", ["ExportOptions"], set()),
    ("serve", ["ServeOptions"], set()),
])
def test_each_commands_flags_are_its_options_fields(command, classes, cli_only):
    """The flags come from the options dataclass (core/options.py), as the library keywords do: nothing is declared
    twice."""
    import dataclasses

    from tudui.core import config, options

    fields = {f.name for c in classes for f in dataclasses.fields(getattr(config, c, None) or getattr(options, c))
              if f.metadata.get("cli", True)}
    dests = {a.dest for a in _subparser(command)._actions if a.dest not in ("help", "debug")}
    assert dests == fields | cli_only


def test_flags_not_given_leave_the_dataclass_default():
    from tudui.cli import build_parser

    args = build_parser().parse_args(["predict", "m.pt", "a.png"])
    assert not hasattr(args, "batch_size") and not hasattr(args, "topk")  # PredictOptions' defaults apply
    args = build_parser().parse_args(["serve", "m.pt", "--read-timeout", "5"])
    assert args.read_timeout_s == 5.0 and not hasattr(args, "max_batch")


def _commands():
    """Every command and sub-command of `tudui`'s parser, found by walking it: [(argv, parser)], so a command
    added to the table is covered with nothing to list here."""
    import argparse

    from tudui.cli import build_parser

    found = [([], build_parser())]
    for argv, parser in found:  # grows while walked: the sub-commands' own sub-commands too
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += [([*argv, name], p) for name, p in action.choices.items()]
    return found


def test_every_commands_help_prints_its_usage_and_every_flag(capsys):
    import argparse

    from tudui.cli import main

    commands = _commands()
    names = {" ".join(argv) for argv, _ in commands}
    assert {"", "train", "eval", "predict", "serve", "board", "data", "data check", "data export"} <= names
    for argv, parser in commands:
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--help"])
        out, err = capsys.readouterr()
        assert exit_.value.code == 0 and err == "", (argv, err)
        assert out.startswith(" ".join(["usage: tudui", *argv])), (argv, out[:200])
        shown = "".join(out.split())  # argparse wraps long lines (at spaces and after hyphens)
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert all(s in out for s in action.option_strings), (argv, action.option_strings)
            if action.help and "%" not in action.help:  # argparse fills %(default)s in
                assert "".join(action.help.split()) in shown, (argv, action.help)


def test_importing_the_cli_and_every_help_loads_no_torch():
    """`tudui --help` and each command's --help answer at once: torch (seconds to import) is loaded on first use
    only. A fresh interpreter, since this one has imported torch long ago."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys\n"
            "import tudui.cli\n"
            "assert 'torch' not in sys.modules, 'import tudui.cli loaded torch'\n"
            "for argv in sys.argv[1:]:\n"
            "    try:\n"
            "        tudui.cli.main(argv.split() + ['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "    assert 'torch' not in sys.modules, f'tudui {argv} --help loaded torch'\n"
            "print('no torch')\n")
    commands = [" ".join(argv) for argv, _ in _commands() if argv]
    r = subprocess.run([sys.executable, "-c", code, *commands], capture_output=True, text=True, timeout=60,
                       env=os.environ | {"PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0 and r.stdout.rstrip().endswith("no torch"), r.stderr[-2000:]


@pytest.mark.parametrize("argv, usage, hint", [
    (["train", "--data", "digits", "--epochz", "1"], "usage: tudui train --data", "did you mean --epochs?"),
    (["train", "--data", "digits", "--batchsize=64"], "usage: tudui train --data", "did you mean --batch-size?"),
    (["predict", "m.pt", "x.png", "--top-k", "3"], "usage: tudui predict", "did you mean --topk?"),
    (["data", "check", "x", "--jsn"], "usage: tudui data check", "did you mean --json?"),
])
def test_a_mistyped_flag_gets_its_commands_usage_and_the_nearest_flag(argv, usage, hint, capsys):
    """Not the top level's `usage: tudui [-h] ... COMMAND` with no clue: the command's own usage and its nearest
    flag (difflib over that command's options)."""
    from tudui.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage), err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{usage.removeprefix('usage: ').split(' --')[0]}: error: unrecognized arguments: ") and \
        last.endswith(f"; {hint}"), last


def test_epochs_zero_is_one_error_line_and_leaves_no_run_folder(tmp_path, capsys):
    """Was a FileNotFoundError traceback (best.pt never written) and a half-made run folder."""
    from tudui.cli import main

    assert main(["train", "--data", "digits", "--epochs", "0", "--project", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err == "error: --epochs must be at least 1 (passes over the data), got 0\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["train", "--data", "digits"], ["lr-find", "--data", "digits"],
                                  ["eval", "m.pt", "--data", "digits"], ["predict", "m.pt", "x.png"]])
@pytest.mark.parametrize("size", ["0", "-4"])
def test_batch_size_below_one_is_one_error_line_in_every_command(argv, size, tmp_path, capsys):
    from tudui.cli import main

    project = ["--project", str(tmp_path)] if argv[0] in ("train", "lr-find") else []
    assert main([*argv, "--batch-size", size, *project]) == 2
    assert capsys.readouterr().err == f"error: --batch-size must be at least 1, got {size}\n"
    assert list(tmp_path.iterdir()) == []


def test_tudui_works_without_its_optional_extras():
    """`make demo` installs only the export and serve extras: with Optuna, MLflow, pytorch-grad-cam, OpenVINO, NNCF
    and timm unimportable, `import tudui.api` and a command's start still work (each extra is imported where used)."""
    import os
    import sys

    from tests import forkserver
    from tests.conftest import REPO

    code = ("import sys\n"
            "for name in ('optuna', 'mlflow', 'pytorch_grad_cam', 'openvino', 'nncf', 'timm'):\n"
            "    sys.modules[name] = None  # import raises ImportError\n"
            "import tudui.api\n"
            "from tudui.cli import main\n"
            "sys.exit(main(['models']))\n")
    r = forkserver.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=os.environ | {"PYTHONPATH": str(REPO / "src")})  # the fork server imports none of them
    assert r.returncode == 0 and "fast" in r.stdout, r.stderr[-3000:]
