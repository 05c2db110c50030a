"""What the system refuses (issue 18, item 10): a PermissionError or another OSError in a command is one
plain line on stderr and a non-zero exit, never a traceback; -v shows the traceback; a bug still raises."""
import builtins
import errno
import os

import pytest

import mimic.cli as cli
import mimic.kb.versions as versions
from mimic.cli.common import prog
from tests.conftest import ROOT

STORE = os.path.join(ROOT, "tests", "fixtures", "v0.1", "store")
LINK = ["link", "--kb", STORE, "--sentence", "Hopper painted Nighthawks.", "--mention", "Hopper"]


def _manifest_refused(monkeypatch, error):
    """The store's manifest cannot be opened (e.g. another user's 0600 file): `error` is raised."""
    real = builtins.open

    def refusing(path, *args, **kwargs):
        if os.path.basename(str(path)) == versions.MANIFEST:
            raise error
        return real(path, *args, **kwargs)

    monkeypatch.setattr(versions, "open", refusing, raising=False)


def test_a_permission_error_is_one_line_and_exit_1(monkeypatch, capsys):
    manifest = os.path.join(STORE, versions.MANIFEST)
    _manifest_refused(monkeypatch, PermissionError(errno.EACCES, "Permission denied", manifest))
    assert cli.main(LINK) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {manifest}: Permission denied; check that this user may read (and, to change it, write) "
                   f"that file and its folder ('{prog()} -v link ...' shows the traceback)\n")


@pytest.mark.parametrize("error,said", [
    (OSError(errno.ENOSPC, "No space left on device", "/srv/kb/x.npy"), "error: /srv/kb/x.npy: No space left on device"),
    (OSError(errno.EIO, "Input/output error"), "error: Input/output error"),
    (OSError("something odd"), "error: something odd"),
    (PermissionError(errno.EPERM, "Operation not permitted", "/a", None, "/b"), "error: /a -> /b: Operation not permitted"),
])
def test_other_os_errors_are_one_line(monkeypatch, capsys, error, said):
    _manifest_refused(monkeypatch, error)
    assert cli.main(LINK) == 1
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1 and "Traceback" not in err


def test_verbose_shows_the_traceback_and_a_bug_still_raises(monkeypatch):
    _manifest_refused(monkeypatch, PermissionError(errno.EACCES, "Permission denied", "m"))
    with pytest.raises(PermissionError):
        cli.main(["-v", *LINK])
    _manifest_refused(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(LINK)


def test_a_user_error_is_still_exit_2(capsys):
    assert cli.main(["link", "--kb", "no/such/kb", "--sentence", "a b", "--mention", "a"]) == 2
    assert capsys.readouterr().err == "error: no/such/kb: no such KB store folder\n"
