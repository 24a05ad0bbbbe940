"""Publish an exported folder on the Hugging Face Hub: create the repo, upload the folder in one commit.

The token is passed to `huggingface_hub` and nowhere else: no message, log line or file here contains it.
"""
from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from llama_ft.hf.weights import WeightsError, checkpoint_files
from llama_ft.sources.hub_ids import MAX_NAME, is_repo_id
from llama_ft.sources.resolve import missing_parts

LOGIN_HINT = "run `huggingface-cli login` (`hf auth login` in recent huggingface_hub) or set HF_TOKEN"


class HubError(ValueError):
    """A push that cannot go ahead as asked; the message says what to fix (and never holds the token)."""


def check_repo_id(repo_id: str) -> str:
    """`repo_id` itself when it is a valid `owner/name` model repo id; else a HubError."""
    if not is_repo_id(repo_id):
        raise HubError(f"repo id {repo_id!r} is not `owner/name` (e.g. my-user/smollm2-135m-sst2): one '/', "
                       f"letters, digits, '-', '_' and '.', no '--' or '..', a name of at most {MAX_NAME} "
                       "characters.")
    return repo_id


def resolve_token(token: str | None = None) -> str:
    """The token to push with: the argument, else $HF_TOKEN, else the saved login; else a HubError."""
    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise HubError(f"no Hugging Face token: {LOGIN_HINT}, or pass token=...; it needs write access.")
    return token


def check_export_folder(directory: str | Path) -> Path:
    """`directory` when it holds a complete export (config.json and all weight files); else a HubError."""
    folder = Path(directory)
    if missing_parts(folder, weights=False):
        raise HubError(f"{folder}: no config.json, so not a complete export; write it with "
                       "llama_ft.save_pretrained(model, folder) before pushing.")
    try:
        checkpoint_files(folder)
    except WeightsError as e:
        raise HubError(f"{folder}: the weights are incomplete ({e}); export again before pushing.") from None
    return folder


def push_to_hub(directory: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload an exported folder to the model repo `repo_id` (created when missing) in one commit; its URL.

    `private` applies when the repo is created; an existing repo keeps its visibility.
    """
    folder = check_export_folder(directory)
    check_repo_id(repo_id)
    api = HfApi(token=resolve_token(token))
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                          commit_message=commit_message or f"Upload {folder.name} (exported with llama_ft)")
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise HubError(f"the Hub rejected the token (401) pushing to {repo_id}: {LOGIN_HINT} with a "
                           "valid token.") from None
        if status == 403:
            raise HubError(f"the token may not write to {repo_id} (403): use a token with write access to "
                           "that owner, or push to a repo under your own name.") from None
        raise
    return str(url)
