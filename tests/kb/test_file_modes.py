"""Files and folders a command writes follow the umask (issue 18, item 10): a store or a checkpoint written
by one user is readable by the others it is shared with (umask 022: files 0644, folders 0755), and private
when the umask says so (077: 0600, 0700). Temporary files made private by tempfile must not carry their
mode into place."""
import os
import stat

import pytest
from PIL import Image

from mimic.data.readers import Entity
from mimic.kb.edit import compact_store, edit_store
from mimic.kb.encode import encode_store
from mimic.kb.fingerprint import file_fingerprint
from mimic.kb.store import KBStore
from mimic.train.checkpoint import save_model


def modes(root) -> dict:
    """{path relative to root: permission bits} of every folder and file under root (root included)."""
    found = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


@pytest.fixture()
def umask():
    """Set the process umask for one test, and put the previous one back."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask,file_mode,folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_a_store_and_a_checkpoint_follow_the_umask(tiny_model, synth_dataset, tmp_path, umask, mask, file_mode,
                                                   folder_mode):
    umask(mask)
    entities = [Entity(index=e.index, name=e.name, attr=e.attr, images=list(e.images), qid=e.qid)
                for e in synth_dataset.entities[:6]]
    kb = str(tmp_path / "kb")
    encode_store(tiny_model, entities, synth_dataset.kb_images, kb, file_fingerprint(synth_dataset.config.data.entity),
                 batch_size=8, progress=False)
    Image.new("RGB", (24, 16), (10, 200, 10)).save(tmp_path / "upload.png")
    edit_store(kb, tiny_model, add=[Entity(0, "Green Thing", "a green thing", ["upload.png"], "Qg")],
               image_folder=str(tmp_path), remove=["Q1001"])
    compact_store(kb, tiny_model, progress=False)
    save_model(tiny_model, str(tmp_path / "ckpt"))
    save_model(tiny_model, str(tmp_path / "ckpt"))  # a replacement too

    for root in (kb, str(tmp_path / "ckpt")):
        found = modes(root)
        names = {os.path.basename(p) for p in found}
        if root == kb:  # the files of every kind a store holds, a copied image among them
            assert {"manifest.json", "entities.jsonl", "entities.offsets.npy", "ids.hash.npy", "ids.row.npy",
                    "segment.json", "images"} <= names and any(p.startswith("images/") for p in found)
        else:
            assert {"config.json", "model.safetensors"} <= names
        wrong = {p: oct(m) for p, m in found.items()
                 if m != (folder_mode if os.path.isdir(os.path.join(root, p)) else file_mode)}
        assert wrong == {}, root
    assert len(KBStore.load(kb)) == 6


def test_a_hostile_leftover_name_is_not_followed(tmp_path, umask):
    """A symlink planted where a temporary file would go is never written through: the temporary name is
    created new (O_EXCL), and a planted link at the target is replaced, not followed."""
    from mimic.fileio import write_json
    umask(0o022)
    secret = tmp_path / "secret.txt"
    secret.write_text("keep")
    os.symlink(secret, tmp_path / "out.json")
    write_json(str(tmp_path / "out.json"), {"a": 1})
    assert secret.read_text() == "keep"
    assert not os.path.islink(tmp_path / "out.json")
    assert stat.S_IMODE(os.stat(tmp_path / "out.json").st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["out.json", "secret.txt"]
