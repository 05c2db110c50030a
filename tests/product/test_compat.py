"""What users already have on disk keeps working: a checkpoint, an edited store and the CLI's commands and
flags, as mimic-el 0.1.0 wrote them (tests/fixtures/v0.1/README.md)."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

from mimic.cli import build_parser
from mimic.kb.edit import edit_store
from mimic.kb.store import KBStore
from mimic.linker import Linker
from mimic.train.checkpoint import load_checkpoint
from tests.conftest import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "v0.1")
CHECKPOINT, STORE = os.path.join(FIXTURES, "checkpoint"), os.path.join(FIXTURES, "store")
EXPECTED = json.load(open(os.path.join(FIXTURES, "expected.json"), encoding="utf-8"))


def _image(name):
    return os.path.join(FIXTURES, name) if name else None


@pytest.fixture(scope="module")
def linker():
    return Linker(load_checkpoint(CHECKPOINT), KBStore.load(STORE))  # Linker checks the store's fingerprints


def _same_answer(answer, expected):
    assert answer["nil"] == expected["nil"]
    assert [(r["rank"], r["id"], r["qid"], r["name"]) for r in answer["results"]] == \
        [(r["rank"], r["id"], r["qid"], r["name"]) for r in expected["results"]]
    for row, want in zip(answer["results"], expected["results"]):
        for key in ("score", "s_t", "s_t_g2g", "s_t_g2l", "s_v", "s_v_e2m", "s_v_m2e", "s_c"):
            assert row[key] == pytest.approx(want[key], abs=1e-4), key


def test_checkpoint_loads_with_its_settings():
    model = load_checkpoint(CHECKPOINT)
    assert model.config.encoder == "tiny-clip"
    assert (model.config.dv, model.config.tglu_dim, model.config.vdlu_dim, model.config.cmfu_dim) == (8, 8, 8, 8)
    assert model.encoder.text_embed_dim == 16 and model.processor.max_length == 40


def test_store_opens_at_its_version(linker):
    store = linker.store
    assert (len(store), store.manifest["kb_version"], len(store.manifest["segments"])) == (7, 3, 2)
    assert [e["id"] for e in store.entities] == ["Q308", "Q3757", "Q251", "Q8331", "Q525", "Q8332", "Q42196"]
    assert store.entities[5]["image"].startswith(STORE) and os.path.isfile(store.entities[5]["image"])


@pytest.mark.parametrize("position", range(len(EXPECTED["queries"])))
def test_link_answers_as_it_did(linker, position):
    query = EXPECTED["queries"][position]
    answer = linker.link(query["sentence"], query["mention"], _image(query["image"]), top_k=7)
    _same_answer(answer, EXPECTED["answers"][position])


def test_cli_links_with_the_model_the_store_records():
    query = EXPECTED["queries"][1]
    out = subprocess.run([sys.executable, "-m", "mimic", "link", "--kb", os.path.relpath(STORE, ROOT), "--sentence",
                          query["sentence"], "--mention", query["mention"], "--image", _image(query["image"]),
                          "--top-k", "7", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    _same_answer(json.loads(out.stdout), EXPECTED["answers"][1])


def test_store_takes_an_edit(tmp_path):
    copy = str(tmp_path / "store")
    shutil.copytree(STORE, copy)
    manifest = edit_store(copy, remove=["Q3757"])
    assert (manifest["kb_version"], manifest["count"]) == (4, 6)
    query = EXPECTED["queries"][0]
    answer = Linker(load_checkpoint(CHECKPOINT), KBStore.load(copy)).link(query["sentence"], query["mention"], top_k=7)
    want = [r["id"] for r in EXPECTED["answers"][0]["results"] if r["id"] != "Q3757"]
    assert [r["id"] for r in answer["results"]] == want


def _surface(parser, path=(), out=None):
    """{command: {flag: its settings}} of every command, as tests/fixtures/v0.1/cli.json records them."""
    out = {} if out is None else out
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _surface(sub, (*path, name), out)
        elif not isinstance(action, argparse._HelpAction):
            flags[" ".join(action.option_strings) or action.dest] = {
                "required": action.required, "choices": list(action.choices) if action.choices else None,
                "default": action.default, "nargs": action.nargs, "type": getattr(action.type, "__name__", None),
                "action": type(action).__name__}
    out[" ".join(path)] = flags
    return out


def test_every_command_and_flag_of_0_1_remains():
    recorded = json.load(open(os.path.join(FIXTURES, "cli.json"), encoding="utf-8"))
    now = _surface(build_parser())
    for command, flags in recorded.items():
        assert command in now, f"the command {command!r} is gone"
        for flag, settings in flags.items():
            assert now[command].get(flag) == settings, f"{command} {flag}"
