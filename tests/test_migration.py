"""Callers of remove.bg, PhotoRoom and fal keep their names: authentication headers, field aliases,
result headers, through a real uvicorn."""

from __future__ import annotations

import pytest

from harness import LiveServer, assert_error, subject_image


@pytest.mark.parametrize("header", ["Key {key}", "key {key}", "Bearer {key}"])
def test_authorization_key_as_fal_sends_it(live_server: LiveServer, api_key: str, header: str) -> None:
    response = live_server.remove(None, subject_image(), "ghost", headers={"Authorization": header.format(key=api_key)})
    assert response.status_code == 200, response.text
    assert response.headers["X-Credits-Remaining"] == "99"


def test_authorization_key_with_a_wrong_key_is_refused(live_server: LiveServer) -> None:
    wrong = live_server.remove(None, subject_image(), "ghost", headers={"Authorization": "Key co_not-a-key"})
    assert_error(wrong, 401, "invalid_api_key")
    missing = live_server.remove(None, subject_image(), "ghost", headers={"Authorization": "Basic dXNlcjpwdw=="})
    body = assert_error(missing, 401, "invalid_api_key")
    assert "Authorization: Key <key>" in body["error"]["message"]
