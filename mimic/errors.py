"""The errors a user can cause and fix (bad input, files, options): the command line reports them as one
plain line (`error: ...`, exit status 2) instead of a traceback.

They are named, not imported: an error's class is loaded whenever one is raised, so checking against the
modules already loaded is exact, and the command line can refuse bad input before PyTorch is imported.
"""
import sys

USER_ERRORS = (("mimic.data.readers", "DataError"), ("mimic.train.checkpoint", "CheckpointError"),
               ("mimic.model.encoder", "EncoderUnavailable"), ("mimic.fileio", "OutputError"),
               ("mimic.model.images", "ImageError"), ("mimic.query", "QueryError"),
               ("mimic.kb.versions", "StoreError"), ("mimic.data.hubrepo", "HubError"))


def is_user_error(error: BaseException) -> bool:
    if isinstance(error, FileNotFoundError):
        return True
    for module, name in USER_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(error, getattr(loaded, name)):
            return True
    return False
