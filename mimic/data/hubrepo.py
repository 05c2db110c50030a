"""Hugging Face Hub repo names, shared by the checkpoints (mimic/train/hub.py, model repos) and the KB
stores (mimic/kb/hub.py, dataset repos) that mimic-el publishes and opens by name."""
import os


class HubError(ValueError):
    """A Hub name or upload that cannot work, with the reason."""


def check_repo_id(repo_id: str, kind: str = "model") -> str:
    """"owner/name" as the Hub accepts it, or HubError saying what is wrong."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise HubError(f"{repo_id!r}: a Hub {kind} repo is named owner/name")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"{repo_id!r} is not a valid Hub repo name: {str(e).splitlines()[0]}")
    return repo_id


def is_repo_name(spec: str) -> bool:
    """Could `spec` name a Hub repo rather than a local path? (A local path that exists always wins.)"""
    try:
        return not os.path.exists(spec) and bool(check_repo_id(spec))
    except HubError:
        return False


def public(value):
    """A recorded value with local paths cut to their last part (what is published names no server folder)."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.basename(value.rstrip("/"))
    return value
