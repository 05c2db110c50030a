"""Hugging Face Hub repo names, shared by the checkpoints (mimic/train/hub.py, model repos) and the KB
stores (mimic/kb/hub.py, dataset repos) that mimic-el publishes and opens by name, and the one upload both make."""
import os
import shutil
import tempfile


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


def publish(repo_id: str, repo_type: str, stage_into, private: bool, token: str, message: str) -> str:
    """Create the Hub repo `repo_id` of `repo_type` if needed (`private` applies then) and upload, in one
    call, the folder `stage_into(folder)` writes in a temporary place (removed afterwards). -> the repo's URL."""
    from huggingface_hub import HfApi
    check_repo_id(repo_id, repo_type)
    staging = tempfile.mkdtemp(prefix="mimic-push-")
    try:
        folder = os.path.join(staging, repo_type)
        stage_into(folder)
        api = HfApi(token=token)
        try:
            url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type, commit_message=message)
        except Exception as e:  # the hub client raises many kinds (no token, no network, no permission)
            raise HubError(f"could not publish to the Hugging Face Hub as {repo_id} (log in with `hf auth login` "
                           f"or set HF_TOKEN): {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return str(url)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
