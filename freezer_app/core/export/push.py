"""Publish a bundle on the Hugging Face Hub (`freezer-app push BUNDLE REPO_ID`), through
huggingface_hub's own `create_repo` and `upload_folder`; timm then loads it anywhere with
`timm.create_model("hf-hub:REPO_ID", pretrained=True)`. Only this needs the network."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from freezer_app.core.errors import ExportError
from freezer_app.core.export.api import MARKER

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def check_bundle(folder: Path) -> None:
    """A bundle Freezer wrote, complete: its marker names the files, and they are there."""
    marker = folder / MARKER
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        raise ExportError(
            f"{folder} is not a bundle Freezer exported (no readable {MARKER}).",
            "Export one first: freezer-app export RUN_DIR --format bundle --out FOLDER",
        ) from None
    if record.get("format") != "bundle":
        raise ExportError(
            f"{folder} holds a '{record.get('format')}' export, not a bundle.",
            "Push a bundle: freezer-app export RUN_DIR --format bundle --out FOLDER",
        )
    missing = [name for name in record.get("files", []) if not (folder / name).is_file()]
    if missing:
        raise ExportError(
            f"{folder} lacks {', '.join(missing)}.", "Export the bundle again, then push it."
        )


def push_bundle(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    api: Any = None,
    starting: Callable[[], None] | None = None,
) -> str:
    """Create the model repository if needed and upload the bundle; returns the repo's URL.
    api: a huggingface_hub.HfApi (the default one, with the user's saved token or HF_TOKEN).
    starting: called once everything checkable here has been checked, before the upload."""
    folder = Path(folder).expanduser()
    if not REPO_ID.match(repo_id):
        raise ExportError(
            f"{repo_id!r} is not a Hub repository id.", "Use USER/NAME or ORGANISATION/NAME."
        )
    check_bundle(folder)
    if api is None:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise ExportError(
                "Pushing needs the huggingface_hub package.", "pip install huggingface_hub"
            ) from None
        from huggingface_hub import get_token

        if get_token() is None:
            # Said here rather than after a round trip that the Hub refuses.
            raise ExportError(
                "You are not logged in to the Hugging Face Hub.",
                "Log in with `hf auth login`, or set HF_TOKEN to a token with write access.",
            )
        api = HfApi()
    if starting is not None:
        starting()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            ignore_patterns=[MARKER],  # Freezer's own bookkeeping, not part of the model
            commit_message="Upload a model fine-tuned with Freezer (freezer-app)",
        )
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(
            f"The Hub refused or could not be reached: {first}",
            "Check the network and that you are logged in (hf auth login, or HF_TOKEN) with "
            "write access to that repository.",
        ) from None
    return str(getattr(url, "url", url) or f"https://huggingface.co/{repo_id}")
