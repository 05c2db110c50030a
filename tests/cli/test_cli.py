"""The command line explains itself and reports user errors as one line, without a traceback."""
import subprocess
import sys

import pytest


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mimic", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0
    for command in ("train", "evaluate"):
        assert command in out.stdout


@pytest.mark.parametrize("command,needle", [("train", "--drop-unit"), ("evaluate", "--ranks-out"),
                                            ("train", "subset files the authors released: put such a file in data.train_file"),
                                            ("train", "--image-mode {default,authors}"),
                                            ("data check", "mention_images/")])
def test_each_command_has_help(command, needle):
    out = run(*command.split(), "--help")
    assert out.returncode == 0 and needle in out.stdout


def test_missing_config_is_one_clear_line(tmp_path):
    out = run("evaluate", "--config", str(tmp_path / "nope.yaml"), "--init", "random")
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: config file not found"


def test_bad_checkpoint_is_one_clear_line(tmp_path, synth_config_path):
    bad = tmp_path / "x.ckpt"
    bad.write_text("not a checkpoint")
    out = run("evaluate", "--config", synth_config_path, "--checkpoint", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {bad}: not a readable PyTorch checkpoint")


def test_train_applies_the_run_config_once(synth_config_path, tmp_path):
    """Its checks and warnings once: train() applies it, the command's model loading does not again."""
    out = run("train", "--config", synth_config_path, "--set", "model.hidden_dim=7", "--set",
              f"data.train_file={tmp_path / 'none.json'}", "--output-dir", str(tmp_path / "runs"), "--device", "cpu")
    assert out.returncode == 2 and out.stderr.count("model.hidden_dim: 7 is not used") == 1
    assert out.stderr.strip().endswith("none.json: mention split file not found")  # after the config was applied
