"""encode-kb --devices: two CPU processes through Lightning give the same store as one process, and a kill
of either rank loses nothing: the next run encodes only the chunks still missing."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mimic.data.readers import Dataset, load_config
from mimic.kb.encode import encode_store
from mimic.kb.fingerprint import file_fingerprint
from mimic.kb.store import KBStore
from mimic.linker import Linker
from mimic.train.loading import load_model
from tests.conftest import ROOT

# encode-kb through the CLI, every chunk logged as it starts, one rank killed (SIGKILL) at its n-th chunk.
# Lightning starts rank 1 by running this same script again, so the patch applies to every rank.
DRIVER = '''
import os, signal, sys
from mimic.kb import distributed

real = distributed.ChunkEncoder.predict_step
kill_rank, kill_at = int(os.environ.get("KILL_RANK", -1)), int(os.environ.get("KILL_AT", -1))


def step(self, chunk, batch_idx):
    if self.global_rank == kill_rank and batch_idx == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if chunk != distributed.NOTHING:
        with open(os.environ["CHUNK_LOG"], "a") as f:
            f.write(f"{int(chunk)}\\n")
    return real(self, chunk, batch_idx)


distributed.ChunkEncoder.predict_step = step
from mimic.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_two_processes_killed_and_resumed_make_the_store_of_one(tmp_path, synth_config_path, tiny_clip):
    config = load_config(synth_config_path)
    data = config.data
    dataset = Dataset(config)
    model = load_model(None, tiny_clip, "random", "cpu").eval()  # what the CLI builds from the same options
    reference = str(tmp_path / "one")
    encode_store(model, dataset.entities, dataset.kb_images, reference, file_fingerprint(data.entity, data.qid2id),
                 batch_size=4, chunk_size=4, precision="float32", progress=False)

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    log = tmp_path / "chunks.log"
    out = str(tmp_path / "two")
    command = [sys.executable, str(driver), "encode-kb", "--entities", data.entity, "--qid2id", data.qid2id,
               "--images", data.kb_img_folder, "--encoder", tiny_clip, "--init", "random", "--out", out,
               "--devices", "2", "--accelerator", "cpu", "--chunk-size", "4", "--batch-size", "4",
               "--precision", "float32", "--no-progress"]

    def run(**kill):
        env = {**os.environ, "PYTHONPATH": ROOT, "CHUNK_LOG": str(log), **{k: str(v) for k, v in kill.items()}}
        return subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)

    def kept():
        return sorted(int(f[:6]) for f in os.listdir(out + ".partial/chunks"))

    chunks = list(range(12))  # 48 entities in chunks of 4; rank 0 takes the even ones, rank 1 the odd ones
    killed = run(KILL_RANK=1, KILL_AT=2)
    assert killed.returncode != 0
    assert "another process of this encoding stopped" in killed.stderr and "Traceback" not in killed.stderr
    assert "run the same command again" in killed.stderr
    assert kept() == [0, 1, 2, 3, 4, 6, 8, 10]  # rank 1 died before its third chunk; rank 0 finished its six
    with pytest.raises(Exception, match="encoding has not finished"):
        KBStore.load(out)

    killed = run(KILL_RANK=0, KILL_AT=1)  # resumed with 5, 7, 9, 11; now rank 0 (the launcher, with the locks) dies
    assert killed.returncode != 0
    assert kept() == [c for c in chunks if c != 9]  # rank 0 did 5 and died at 9; rank 1 did 7 and 11

    done = run()
    assert done.returncode == 0, done.stderr
    assert "encoded 1 of 12 chunks on 2 processes; 11 were done before" in done.stdout
    encoded = [int(line) for line in log.read_text().split()]
    assert sorted(encoded) == chunks  # over the three runs, every chunk was encoded exactly once
    assert not os.path.exists(out + ".partial")

    one, two = KBStore.load(reference), KBStore.load(out)
    assert list(one.entities) == list(two.entities)
    x, y = one.read_terms(np.arange(len(one))), two.read_terms(np.arange(len(two)))
    assert sorted(x) == sorted(y)
    for name in x:
        np.testing.assert_allclose(y[name], x[name], rtol=0, atol=1e-5, err_msg=name)
    linkers = [Linker(model, store) for store in (one, two)]
    for m in dataset.split("test")[:5]:
        a, b = (linker.link(m.sentence, m.mention, dataset.mention_image(m), 5) for linker in linkers)
        assert [r["index"] for r in a["results"]] == [r["index"] for r in b["results"]]
        np.testing.assert_allclose([r["score"] for r in a["results"]], [r["score"] for r in b["results"]], atol=1e-5)


def test_devices_refusals_say_what_to_do(tmp_path):
    entities = tmp_path / "e.json"
    entities.write_text('[{"name": "Fox", "description": "a canid", "qid": "Q1"}]')
    code = ("import sys; sys.modules['lightning'] = None; from mimic.cli import main; "
            f"sys.exit(main(['encode-kb', '--entities', {str(entities)!r}, '--init', 'random', "
            f"'--out', {str(tmp_path / 'kb')!r}, '--devices', '2']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "encode-kb --devices runs on PyTorch Lightning" in done.stderr
    assert "pip install -r requirements-dev.txt" in done.stderr
    assert not os.path.exists(tmp_path / "kb")
    both = subprocess.run([sys.executable, "-m", "mimic", "encode-kb", "--entities", str(entities), "--init", "random",
                           "--out", str(tmp_path / "kb"), "--devices", "2", "--shard", "0/2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert both.returncode != 0 and "give it without --shard or --merge" in both.stderr
    if not torch.cuda.is_available():
        gpu = subprocess.run([sys.executable, "-m", "mimic", "encode-kb", "--entities", str(entities), "--init",
                              "random", "--out", str(tmp_path / "kb"), "--devices", "2", "--accelerator", "gpu"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert gpu.returncode != 0 and "Traceback" not in gpu.stderr
        assert "--accelerator gpu, but PyTorch sees no GPU here" in gpu.stderr
