"""A newcomer's first hour with the CLI and the library: Linker.open(store) alone uses the model the store
records; mistakes are refused before the model (and PyTorch) loads; random weights are said so; offline,
the error says how to go on."""
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace
from urllib.parse import unquote

import pytest

from mimic import Linker
from mimic.model.encoder import EncoderUnavailable, load_clip
from mimic.train.loading import random_parts
from tests.conftest import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "v0.1")
STORE = os.path.join(FIXTURES, "store")
EXPECTED = json.load(open(os.path.join(FIXTURES, "expected.json"), encoding="utf-8"))


def test_linker_open_with_the_store_alone_uses_the_model_it_records(monkeypatch):
    monkeypatch.chdir(ROOT)  # the fixture store records its checkpoint relative to the repository
    linker = Linker.open(STORE)
    query = EXPECTED["queries"][0]
    answer = linker.link(query["sentence"], query["mention"], top_k=7)
    assert [r["id"] for r in answer["results"]] == [r["id"] for r in EXPECTED["answers"][0]["results"]]
    assert linker.model.config.encoder == "tiny-clip"


def _cli_without_torch(*args, cwd=ROOT):
    """Run the CLI in a fresh interpreter -> (exit status, stderr, whether PyTorch was imported)."""
    code = ("import sys\nfrom mimic.cli import main\ntry:\n    status = main(sys.argv[1:])\n"
            "except SystemExit as e:  # as the interpreter would report it\n    print(e, file=sys.stderr)\n"
            "    status = 1\nprint('torch' in sys.modules, file=sys.stderr)\nsys.exit(status)")
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    *lines, torch_loaded = out.stderr.strip().splitlines()
    return out.returncode, "\n".join(lines), torch_loaded == "True"


@pytest.mark.parametrize("args,message", [
    (["link", "--kb", "no/such/kb", "--sentence", "Hopper painted.", "--mention", "Hopper"],
     "error: no/such/kb: no such KB store folder"),
    (["link", "--kb", STORE, "--sentence", "The fox ran.", "--mention", "Mercury"],
     'error: The mention "Mercury" does not occur in the sentence; copy it from the sentence.'),
    (["explain", "--kb", "no/such/kb", "--sentence", "a b", "--mention", "a", "--out", "why"],
     "error: no/such/kb: no such KB store folder"),
    (["kb", "remove", "--kb", "no/such/kb", "--ids", "Q1"], "error: no/such/kb: no such KB store folder"),
    (["encode-kb", "--entities", "x.json", "--init", "zero-shot", "--out", "tests"],
     "error: tests is not a mimic-el KB store (it holds"),
])
def test_mistakes_are_refused_before_the_model_loads(args, message):
    status, err, torch_loaded = _cli_without_torch(*args)
    assert status == 2 and err.startswith(message), err
    assert not torch_loaded  # refused without importing PyTorch, let alone loading a model


def test_explain_refuses_an_existing_out_before_the_model_loads(tmp_path):
    (tmp_path / "explanation.json").write_text("{}")
    status, err, torch_loaded = _cli_without_torch("explain", "--kb", STORE, "--sentence", "The fox ran.",
                                                   "--mention", "fox", "--out", str(tmp_path))
    assert status == 1 and f"error: {tmp_path} already holds explanation.json; choose another --out" in err
    assert not torch_loaded and (tmp_path / "explanation.json").read_text() == "{}"


def test_link_queries_refuses_an_out_that_is_a_folder_before_the_work(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"sentence": "The fox ran.", "mention": "fox"}) + "\n")
    status, err, torch_loaded = _cli_without_torch("link", "--kb", STORE, "--queries", str(tmp_path / "q.jsonl"),
                                                   "--out", str(tmp_path))
    assert status == 2 and f"--out {tmp_path} is a folder; give a file name" in err and not torch_loaded


def test_random_weights_are_said(tmp_path, tiny_clip):
    entities = tmp_path / "e.json"
    entities.write_text(json.dumps([{"name": "Fox", "description": "a canid", "qid": "Q1"},
                                    {"name": "Sun", "description": "a star", "qid": "Q2"}]))
    out = subprocess.run([sys.executable, "-m", "mimic", "encode-kb", "--entities", str(entities), "--init", "random",
                          "--encoder", tiny_clip, "--out", str(tmp_path / "kb"), "--no-progress", "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "warning: the MIMIC layers are random (--init random: untrained" in out.stderr
    out = subprocess.run([sys.executable, "-m", "mimic", "link", "--kb", str(tmp_path / "kb"), "--sentence",
                          "The fox ran.", "--mention", "fox", "--device", "cpu"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "warning: the MIMIC layers are random" in out.stderr, out.stderr


def test_random_parts_name_an_untagged_open_clip_backbone():
    model = SimpleNamespace(config=SimpleNamespace(encoder="open_clip:ViT-B-32", metadata={"init": "zero-shot"}))
    (part,) = random_parts(model)
    assert part.startswith("the CLIP backbone open_clip:ViT-B-32 has no pretrained tag, so its weights are random")
    model.config.encoder, model.config.metadata = "open_clip:ViT-B-32/laion2b_s34b_b79k", {"init": "zero-shot"}
    assert random_parts(model) == []


def test_offline_the_error_says_how_to_go_on():
    with pytest.raises(EncoderUnavailable) as caught:
        load_clip("openai/clip-vit-base-patch32", local_files_only=True)
    message = str(caught.value)
    assert "give a local copy of the model with --encoder DIR" in message
    assert "--encoder open_clip:ViT-B-32 builds that architecture with random weights" in message


def test_the_readme_builds_the_demo_kb_with_one_command(tmp_path, tiny_clip):
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("python -m mimic encode-kb") and "demo_kb" in ln]
    args = line.split()[3:]  # after "python -m mimic"
    args[args.index("--out") + 1] = str(tmp_path / "demo")
    if "--encoder" in args:  # offline here: the tiny CLIP stands in for the pretrained one
        args[args.index("--encoder") + 1] = tiny_clip
    else:
        args += ["--encoder", tiny_clip]
    out = subprocess.run([sys.executable, "-m", "mimic", *args, "--no-progress", "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "KB store written to" in out.stdout and "(51 entities)" in out.stdout
    # the README's Python example, on that store: it runs as printed and links Hopper to a Hopper
    python = readme.split("## Link from Python")[1].split("```python\n")[1].split("```")[0]
    python = python.replace('"kb/demo"', repr(str(tmp_path / "demo")))
    code = python + "import json; print(json.dumps([len(result['results']), result['results'][0]['name'], why['scores']]))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    count, best, scores = json.loads(out.stdout.splitlines()[-1])  # random weights: any entity may come first
    names = {unquote(e["entity_name"]) for e in json.load(open(os.path.join(ROOT, "assets", "demo_kb", "kb_entity.json")))}
    assert count == 5 and best in names and set(scores) == {"s", "s_t", "s_v", "s_c"}
    # and the README's every-mention command: the spans come from the KB's names, whatever the weights
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("python -m mimic link") and "--mention" not in ln]
    text = line.split('--sentence "')[1].rstrip('"')
    out = subprocess.run([sys.executable, "-m", "mimic", "link", "--kb", str(tmp_path / "demo"), "--sentence", text,
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    spans = [m["text"] for m in json.loads(out.stdout)["mentions"]]
    assert spans == ["Grace Hopper", "COBOL", "Alan Turing", "Turing machine"]
    shutil.rmtree(tmp_path / "demo")
