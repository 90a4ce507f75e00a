"""A batch body's bad inputs (app/jobs/batch_input.py), answered by the app in process (the fast
layer): each is a 400 for the whole batch in our error shape, nothing reserved."""

from __future__ import annotations

import pytest

from inprocess import InProcess, check_response

pytestmark = pytest.mark.anyio

URI = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ({"image_data_uri": URI, "name": 5}, '"name" must be a string'),
        ({"image_data_uri": "not a data uri", "name": ["a.png"]}, '"name" must be a string'),
        ({"image_data_uri": URI, "output": "both"}, '"output" must be "cutout" or "mask"'),
        ({"image_data_uri": URI, "name": None}, "null fields"),
        ("a.png", "an item is an object"),
    ],
)
async def test_a_bad_json_item_is_a_400_for_the_whole_batch(fast_app: InProcess, item: object, says: str) -> None:
    key = await fast_app.key(credits=5)
    body = {"model": "ghost", "items": [{"image_data_uri": URI}, item]}
    response = await fast_app.client.post("/v2/batches", headers={"ApiKey": key}, json=body)
    error = check_response(response, "invalid_parameter")["error"]
    assert error["message"].startswith("items[1]: ") and says in error["message"], error
    account = await fast_app.client.get("/v2/account", headers={"ApiKey": key})
    assert account.json()["credits"] == 5
