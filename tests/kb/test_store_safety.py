"""A store never lost: a writer killed at any step leaves a loadable store with the old or the new content;
one writer at a time (the second waits, or says why it gave up); a reader sees one version, whole."""
import builtins
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import faiss
import filelock
import numpy as np
import pytest
import torch
from PIL import Image

from mimic.data.readers import Entity
from mimic.kb.edit import compact_store, edit_store
from mimic.kb.encode import encode_store
from mimic.kb.fingerprint import file_fingerprint
from mimic.kb.store import KBStore, StoreError
from mimic.linker import Linker

# every call that changes the filesystem: a writer is killed just before the n-th of them
MUTATORS = [(os, "replace"), (os, "rename"), (os, "link"), (os, "mkdir"), (os, "makedirs"), (os, "remove"),
            (os, "unlink"), (os, "rmdir"), (os, "fsync"), (shutil, "rmtree"), (tempfile, "mkstemp"),
            (tempfile, "mkdtemp"), (np.lib.format, "open_memmap"), (faiss, "write_index")]


def _die_at(step: int):
    """In a forked child: patch every mutator (and open() for writing) to SIGKILL the process at `step`."""
    count = [0]

    def guard(fn):
        def wrapper(*args, **kwargs):
            count[0] += 1
            if count[0] == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapper
    for module, name in MUTATORS:
        setattr(module, name, guard(getattr(module, name)))
    real_open = builtins.open
    guarded_open = guard(real_open)
    builtins.open = lambda file, mode="r", *a, **k: (guarded_open if any(c in mode for c in "wax+") else real_open)(
        file, mode, *a, **k)


def run_killed(action, step: int) -> str:
    """Run action() in a forked child killed at its `step`-th filesystem change: "killed" or "finished"."""
    pid = os.fork()
    if pid == 0:  # the child: single-threaded (OpenMP and fork do not mix), then the writer
        try:
            torch.set_num_threads(1)
            faiss.omp_set_num_threads(1)
            _die_at(step)
            action()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - reported through the exit code
            sys.stderr.write(f"child failed: {type(e).__name__}: {e}\n")
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the writer failed at step {step}"
    return "finished"


def content(path) -> tuple:
    """What a store holds, as a reader sees it: its version, ids in order, a digest of their terms."""
    store = KBStore.load(path)
    terms = store.read_terms(np.arange(len(store)), ["tglu.t_g", "cmfu.f"])
    digest = hashlib.sha256(terms["tglu.t_g"].round(3).tobytes() + terms["cmfu.f"].round(3).tobytes()).hexdigest()
    return store.manifest["kb_version"], tuple(e["id"] for e in store.entities), digest


def kill_at_every_step(pristine: str, tmp_path, action, follow_every: int = 1) -> dict:
    """Kill `action(store)` before each of its filesystem changes in turn, each time on a fresh copy of the
    store; every outcome must load with the old or the new content, and take the next edit (checked
    after every `follow_every`-th step)."""
    old = content(pristine)
    outcomes, new, step, seen = {"old": 0, "new": 0}, None, 0, []
    work = tempfile.mkdtemp(dir=tmp_path)
    while True:
        step += 1
        path = os.path.join(work, f"copy{step}")
        shutil.copytree(pristine, path)
        result = run_killed(lambda: action(path), step)
        now = content(path)  # loadable, whatever the step
        if result == "finished":
            new = now
            break
        outcomes["old" if now == old else "new"] += 1
        seen.append(now)
        if step % follow_every == 0:  # the next writer is not blocked by what the killed one left
            edit_store(path, remove=[now[1][-1]])
            assert len(KBStore.load(path)) == len(now[1]) - 1
        shutil.rmtree(path)
    assert new != old and all(now in (old, new) for now in seen)  # never a third state
    print(f"killed at each of {step - 1} steps: {outcomes['old']} left the old version, {outcomes['new']} the new "
          f"one; every store loadable")
    return {"steps": step - 1, **outcomes}


@pytest.fixture()
def small_store(tiny_model, synth_dataset, tmp_path):
    entities = synth_dataset.entities[:12]
    path = str(tmp_path / "pristine")
    encode_store(tiny_model, entities, synth_dataset.kb_images, path,
                 file_fingerprint(synth_dataset.config.data.entity), progress=False)
    return path


def test_an_edit_killed_at_any_step_leaves_the_old_or_the_new_store(small_store, tiny_model, synth_dataset, tmp_path):
    Image.new("RGB", (20, 20), (0, 90, 200)).save(tmp_path / "new.png")
    def edit(path):
        edit_store(path, tiny_model, add=[Entity(0, "Blue Kite", "a blue kite", ["new.png"], "Qkite")],
                   update=[{"id": "Q1003", "description": "changed"}], remove=["Q1005"], image_folder=str(tmp_path))
    report = kill_at_every_step(small_store, tmp_path, edit)
    # measured: 177 steps, 176 leave the old version (the switch is the last but one), 1 the new one
    assert report["steps"] > 100 and report["old"] > 100 and report["new"] >= 1, report


def test_a_compaction_or_a_re_encoding_killed_at_any_step_leaves_a_store(small_store, tiny_model, synth_dataset,
                                                                          tmp_path):
    edit_store(small_store, remove=["Q1001", "Q1002"])
    report = kill_at_every_step(small_store, tmp_path, lambda path: compact_store(path, tiny_model, progress=False),
                                follow_every=7)
    assert report["steps"] > 20 and report["old"] > 10, report
    entities = synth_dataset.entities[20:30]  # another KB into the same --out: the old store stays until the switch
    report = kill_at_every_step(small_store, tmp_path, lambda path: encode_store(
        tiny_model, entities, synth_dataset.kb_images, path, "other", progress=False), follow_every=7)
    assert report["steps"] > 20 and report["old"] > 10, report


def test_a_second_writer_waits_and_says_why_it_gave_up(small_store):
    with filelock.FileLock(os.path.join(small_store, ".lock")):  # another command is editing the store
        t = time.perf_counter()
        with pytest.raises(StoreError, match="another command is changing this KB store \\(waited 0.5 s\\); run "
                                             "this one again when it has finished"):
            edit_store(small_store, remove=["Q1001"], wait=0.5)
        assert 0.4 < time.perf_counter() - t < 5
    edit_store(small_store, remove=["Q1001"], wait=0.5)  # free again
    assert KBStore.load(small_store).find("Q1001") is None


def test_concurrent_writers_lose_no_update(small_store, tiny_model, tmp_path):
    errors = []

    def add(ident):
        try:
            edit_store(small_store, tiny_model, add=[Entity(0, f"Thing {ident}", "new", [], ident)])
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=add, args=(f"Qnew{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    removals = [subprocess.Popen([sys.executable, "-m", "mimic", "kb", "remove", "--kb", small_store, "--ids", ident],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for ident in ("Q1004", "Q1006")]
    for t in threads:
        t.join()
    assert [p.wait(120) for p in removals] == [0, 0] and errors == []
    store = KBStore.load(small_store)
    ids = [e["id"] for e in store.entities]
    assert len(store) == 12 + 3 - 2 and store.manifest["kb_version"] == 6
    assert {"Qnew0", "Qnew1", "Qnew2"} <= set(ids) and not {"Q1004", "Q1006"} & set(ids)


def test_a_reader_sees_one_whole_version_while_edits_land(small_store, tiny_model):
    versions = {content(small_store)}
    seen, stop, failures = [], threading.Event(), []

    def read():
        while not stop.is_set():
            try:
                seen.append(content(small_store))
            except Exception as e:  # noqa: BLE001
                failures.append(e)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(4):
            edit_store(small_store, tiny_model, add=[Entity(0, f"Item {i}", "x", [], f"Qi{i}")],
                       remove=[f"Q{1000 + i}"])
            versions.add(content(small_store))
        compact_store(small_store, tiny_model, progress=False)
        versions.add(content(small_store))
    finally:
        stop.set()
        reader.join()
    assert failures == [] and len(seen) > 5
    assert set(seen) <= versions  # never a mix of two versions


def test_a_linker_keeps_serving_its_version_while_segments_are_collected(small_store, tiny_model):
    linker = Linker(tiny_model, KBStore.load(small_store))
    before = linker.link("the red falcon in lima", "falcon", None, 3)
    edit_store(small_store, remove=["Q1009"])
    compact_store(small_store, tiny_model, progress=False)  # the segment the linker maps is deleted
    assert linker.link("the red falcon in lima", "falcon", None, 3) == before  # mapped files outlive deletion
    assert linker.store.entities[11]["id"] == "Q1011"
    assert linker.refresh() and len(linker.store) == 11
