"""save_model cleans up only after itself (issue 18, item 14): a folder named like its leftovers
(`.best.mydata.tmp/`, `.out.archive.old/`) that it did not make is never deleted or renamed into place;
the leftovers a killed save did make (they hold fileio.MARKER) are removed, or put back."""
import os

import torch

from mimic.fileio import MARKER
from mimic.train.checkpoint import load_checkpoint, save_model


def _user_folder(path, text):
    os.makedirs(path)
    with open(os.path.join(path, "notes.txt"), "w") as f:
        f.write(text)


def _listing(folder) -> dict:
    return {name: sorted(os.listdir(os.path.join(folder, name))) for name in sorted(os.listdir(folder))}


def test_a_users_folders_named_like_leftovers_are_untouched(tiny_model, tmp_path):
    _user_folder(tmp_path / ".best.mydata.tmp", "my data")
    _user_folder(tmp_path / ".best.archive.old", "my archive")  # with no `best`: a crash's leftover would go back
    os.symlink(tmp_path / ".best.archive.old", tmp_path / ".best.link.old")
    save_model(tiny_model, str(tmp_path / "best"))
    save_model(tiny_model, str(tmp_path / "best"))  # a replacement runs the clean-up again
    assert (tmp_path / ".best.mydata.tmp" / "notes.txt").read_text() == "my data"
    assert (tmp_path / ".best.archive.old" / "notes.txt").read_text() == "my archive"
    assert os.path.islink(tmp_path / ".best.link.old")
    assert sorted(os.listdir(tmp_path)) == [".best.archive.old", ".best.link.old", ".best.mydata.tmp", "best"]
    assert MARKER not in os.listdir(tmp_path / "best")
    assert load_checkpoint(str(tmp_path / "best")).config.encoder == tiny_model.config.encoder


def test_a_users_folder_holding_a_file_named_like_the_marker_in_a_link_is_untouched(tiny_model, tmp_path):
    """Hostile: a symlinked marker does not make a folder ours."""
    _user_folder(tmp_path / ".best.x.tmp", "mine")
    os.symlink(tmp_path / ".best.x.tmp" / "notes.txt", tmp_path / ".best.x.tmp" / MARKER)
    save_model(tiny_model, str(tmp_path / "best"))
    assert sorted(os.listdir(tmp_path / ".best.x.tmp")) == [MARKER, "notes.txt"]


def test_the_leftovers_of_a_killed_save_are_cleaned_up_or_put_back(tiny_model, tmp_path):
    save_model(tiny_model, str(tmp_path / "best"))
    # killed while building the new folder: its work folder holds the marker
    os.makedirs(tmp_path / ".best.a1b2c3d4.tmp")
    (tmp_path / ".best.a1b2c3d4.tmp" / MARKER).write_text("")
    (tmp_path / ".best.a1b2c3d4.tmp" / "model.safetensors").write_bytes(b"half")
    save_model(tiny_model, str(tmp_path / "best"))
    assert sorted(os.listdir(tmp_path)) == ["best"]
    # killed between the two renames: the previous checkpoint, set aside and marked, goes back into place
    (tmp_path / "best" / MARKER).write_text("")
    os.rename(tmp_path / "best", tmp_path / ".best.0badf00d.old")
    before = load_checkpoint(str(tmp_path / ".best.0badf00d.old"))
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)  # a new save that differs from the one put back
    save_model(tiny_model, str(tmp_path / "best"))
    assert sorted(os.listdir(tmp_path)) == ["best"] and MARKER not in os.listdir(tmp_path / "best")
    after = load_checkpoint(str(tmp_path / "best"))
    first = next(iter(tiny_model.state_dict()))
    torch.testing.assert_close(after.state_dict()[first], tiny_model.state_dict()[first])
    assert not torch.equal(after.state_dict()[first], before.state_dict()[first])


def test_a_save_killed_between_its_renames_leaves_the_previous_checkpoint_recoverable(tiny_model, tmp_path,
                                                                                      monkeypatch):
    save_model(tiny_model, str(tmp_path / "best"))
    real_rename = os.rename

    def killed(source, target):
        if str(source).endswith(".tmp"):  # the new folder's rename into place: the process dies here
            raise KeyboardInterrupt
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", killed)
    try:
        save_model(tiny_model, str(tmp_path / "best"))
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    (old,) = [e for e in os.listdir(tmp_path) if e.endswith(".old")]
    assert MARKER in os.listdir(tmp_path / old) and not os.path.exists(tmp_path / "best")
    save_model(tiny_model, str(tmp_path / "best"))
    assert sorted(os.listdir(tmp_path)) == ["best"]
    assert load_checkpoint(str(tmp_path / "best")) is not None
