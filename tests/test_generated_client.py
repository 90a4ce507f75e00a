"""A client generated from /openapi.json works: openapi-python-client builds one from the
live server's document, and its calls upload a photo and return the PNG bytes, read the
account, and return the API's errors as the one Error model. (With a JSON request body documented
beside the multipart one, the generator names the multipart body `...FilesBody`.)"""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import requests

from harness import LiveServer, png_of, subject_image

# From 167 files and 12,443 lines before the document was shaped for generators; 30 before the
# seven operations of jobs and batches (app/openapi/jobs.py) and their models.
MAX_GENERATED_FILES = 50


@pytest.fixture(scope="module")
def client_package(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    work = tmp_path_factory.mktemp("generated")
    (work / "openapi.json").write_bytes(requests.get(live_server.url + "/openapi.json", timeout=10).content)
    bin_dir = Path(sys.executable).parent  # the generator runs ruff from PATH on what it writes
    generated = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", "openapi.json", "--output-path", "client"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
    )
    assert generated.returncode == 0, generated.stdout[-3000:] + generated.stderr[-3000:]
    assert "Warning" not in generated.stdout, generated.stdout  # nothing of the document was skipped
    files = list((work / "client").rglob("*.py"))
    assert len(files) <= MAX_GENERATED_FILES, sorted(str(f.relative_to(work)) for f in files)
    sys.path.insert(0, str(work / "client"))
    try:
        return importlib.import_module("cutout_client")
    finally:
        sys.path.remove(str(work / "client"))


def test_generated_client_uploads_a_photo_and_gets_the_png(live_server: LiveServer, client_package: ModuleType) -> None:
    from cutout_client.api.account import get_account
    from cutout_client.api.background_removal import remove_background, remove_background_mask
    from cutout_client.models import Account, Error, RemoveBackgroundFilesBody, RemoveBackgroundMaskFilesBody
    from cutout_client.models.remove_background_files_body_model import RemoveBackgroundFilesBodyModel
    from cutout_client.types import File

    key = live_server.create_key(10)
    # The generated client sends `Authorization: Bearer <token>`, one of the accepted forms.
    client = client_package.AuthenticatedClient(base_url=live_server.url, token=key, timeout=120)
    photo = subject_image(160, 120)

    cutout = remove_background.sync(
        client=client,
        body=RemoveBackgroundFilesBody(
            image=File(payload=io.BytesIO(photo), file_name="photo.jpg", mime_type="image/jpeg"),
            model=RemoveBackgroundFilesBodyModel.GHOST,
        ),
    )
    assert isinstance(cutout, File), cutout
    image = png_of(cutout.payload.read())
    assert image.mode == "RGBA" and image.size == (160, 120)

    mask = remove_background_mask.sync(
        client=client, body=RemoveBackgroundMaskFilesBody(image=File(payload=io.BytesIO(photo), file_name="photo.jpg"))
    )
    assert isinstance(mask, File) and png_of(mask.payload.read()).mode == "L"

    account = get_account.sync(client=client)
    # The generator renames `credits` (a Python builtin) to `credits_`.
    assert isinstance(account, Account) and account.to_dict()["credits"] == 8

    refused = remove_background.sync(
        client=client,
        body=RemoveBackgroundFilesBody(image=File(payload=io.BytesIO(b"not a photo"), file_name="photo.jpg")),
    )
    assert isinstance(refused, Error) and refused.error.code == "invalid_image"
    assert refused.error.request_id.startswith("req_")
    anonymous = client_package.AuthenticatedClient(base_url=live_server.url, token="co_not-a-key")
    assert get_account.sync(client=anonymous).error.code == "invalid_api_key"
