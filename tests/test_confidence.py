"""The mask's confidence, model=auto and the fast models' foreground colour.

Unit tests of the confidence function, the undecided-region rule and the fast foreground
estimate on generated arrays; then through real uvicorn (lean config: every model on U2-Netp,
auto as shipped): X-Mask-Confidence and the JSON `confidence` on every answer, and auto's
escalation and billing with the threshold forced either way (CUTOUT_AUTO).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import requests
from jobs_harness import finished

from app.accounts.billing import Bill
from app.inference import confidence
from app.inference.foreground import estimate_foreground_fast
from app.inference.pipeline import drop_undecided
from app.store import Reservation
from harness import LiveServer, assert_error, subject_image

COSTS = {"ghost": 1, "falcon": 1, "aurora": 2}


def _disc(size: int = 64, edge: float = 1.0) -> np.ndarray:
    """A centred disc, 1 inside, 0 outside, with a linear edge `edge` pixels wide."""
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    return np.clip((size / 4 - radius) / edge + 0.5, 0.0, 1.0).astype(np.float32)


def test_confidence_is_high_for_a_crisp_subject_and_falls_with_doubt() -> None:
    crisp = _disc()
    assert confidence.score(crisp) > 0.9
    assert confidence.score(crisp, crisp, crisp) == pytest.approx(confidence.score(crisp))
    # Half the subject left half transparent: the network could not decide.
    assert confidence.score(_disc(edge=12.0)) < confidence.score(crisp) - 0.2
    # Two views that disagree: one sees the disc, the other a disc shifted by a third of its size.
    shifted = np.roll(crisp, 10, axis=1)
    assert confidence.score(np.maximum(crisp, shifted), crisp, shifted) < 0.8
    # A "subject" that runs off the frame on every side is background taken for subject.
    assert confidence.score(np.ones((64, 64), np.float32)) == 0.0
    assert confidence.score(np.zeros((64, 64), np.float32)) == 0.0
    for mask in (crisp, _disc(edge=30.0), np.random.default_rng(0).random((64, 64), dtype=np.float32)):
        assert 0.0 <= confidence.score(mask) <= 1.0


def test_an_undecided_region_is_dropped_and_a_decided_one_kept() -> None:
    pred = np.zeros((64, 64), np.float32)
    pred[8:24, 8:24] = 1.0  # the subject
    pred[40:60, 40:60] = 0.35  # a half-transparent second subject: no pixel decided
    out = drop_undecided(pred)
    assert out[16, 16] == 1.0 and out[50, 50] == 0.0
    np.testing.assert_array_equal(drop_undecided(_disc(edge=6.0)), _disc(edge=6.0))


def test_fast_foreground_takes_the_old_background_out_of_soft_edges() -> None:
    height, width = 64, 96
    alpha = np.zeros((height, width), np.uint8)
    alpha[:, :40] = 255
    alpha[:, 40:56] = np.linspace(255, 0, 16).astype(np.uint8)  # a soft edge
    red, blue = np.array([220, 40, 30], np.uint8), np.array([40, 90, 230], np.uint8)
    a = alpha[..., None].astype(np.float32) / 255
    photo = (red * a + blue * (1 - a) + 0.5).astype(np.uint8)  # red subject, blue sky behind
    out = estimate_foreground_fast(photo, alpha)
    soft = (alpha > 20) & (alpha < 235)
    before = np.abs(photo[soft].astype(int) - red).mean()
    after = np.abs(out[soft].astype(int) - red).mean()
    assert after < before / 3, (before, after)
    opaque = alpha == 255
    np.testing.assert_array_equal(out[opaque], photo[opaque])


def test_a_bill_settles_for_less_never_more() -> None:
    bill = Bill(Reservation("r", "a", 2, 8), 2)
    bill.settle_for(1)
    assert bill.amount == 1 and bill.remaining == 9
    bill.settle_for(3)
    assert bill.amount == 2, "never more than was reserved"
    with pytest.raises(ValueError):
        bill.settle_for(-1)
    replayed = Bill(Reservation("r", "a", 0, 8, replayed=True), 0)
    replayed.settle_for(1)
    assert replayed.amount == 0


def _confidence(response: requests.Response) -> float:
    value = float(response.headers["X-Mask-Confidence"])
    assert 0.0 <= value <= 1.0
    return value


@pytest.mark.parametrize("model", ["ghost", "falcon", "aurora", "auto"])
def test_every_answer_states_its_confidence(live_server: LiveServer, api_key: str, model: str) -> None:
    cutout = live_server.remove(api_key, subject_image(160, 120), model=model)
    assert cutout.status_code == 200, cutout.text
    assert _confidence(cutout) > 0.5, "a disc on a plain background is an easy subject"
    mask = live_server.remove(api_key, subject_image(160, 120), model=model, path="/v2/rembg/mask/")
    assert mask.status_code == 200, mask.text
    _confidence(mask)
    answer = live_server.remove(api_key, subject_image(160, 120), model=model, fields={"sync_mode": "true"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["confidence"] == pytest.approx(_confidence(answer), abs=1e-9)
    assert base64.b64decode(body["image"]["url"].split(",", 1)[1])[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def auto_servers(start_server: Callable[..., LiveServer]) -> Iterator[dict[str, LiveServer]]:
    """Two servers whose auto threshold is forced: 1.0 escalates every request, 0.0 none."""
    servers = {
        name: start_server(CUTOUT_AUTO=json.dumps({"first": "falcon", "escalate_to": "aurora", "below": below}))
        for name, below in (("always", 1.0), ("never", 0.0))
    }
    yield servers


def test_auto_escalates_below_the_threshold_and_charges_what_ran(auto_servers: dict[str, LiveServer]) -> None:
    server = auto_servers["always"]
    key = server.create_key(10)
    response = server.remove(key, subject_image(160, 120), model="auto")
    assert response.status_code == 200, response.text
    assert response.headers["X-Model"] == "aurora"
    assert response.headers["X-Model-Escalated"] == "true"
    assert response.headers["X-Credits-Charged"] == str(COSTS["aurora"])
    assert response.headers["X-Credits-Remaining"] == str(10 - COSTS["aurora"])
    assert server.balance(key) == 10 - COSTS["aurora"]
    _confidence(response)


def test_auto_without_escalation_reserves_the_larger_and_refunds_the_difference(
    auto_servers: dict[str, LiveServer],
) -> None:
    server = auto_servers["never"]
    key = server.create_key(10)
    response = server.remove(key, subject_image(160, 120), model="auto")
    assert response.status_code == 200, response.text
    assert response.headers["X-Model"] == "falcon"
    assert response.headers["X-Model-Escalated"] == "false"
    assert response.headers["X-Credits-Charged"] == str(COSTS["falcon"])
    assert response.headers["X-Credits-Remaining"] == str(10 - COSTS["falcon"])
    assert server.balance(key) == 10 - COSTS["falcon"], "aurora's extra credit came back"
    # The reservation is aurora's price: an account holding only falcon's is refused up front.
    poor = server.create_key(COSTS["falcon"])
    assert_error(server.remove(poor, subject_image(160, 120), model="auto"), 402, "insufficient_credits")
    assert server.balance(poor) == COSTS["falcon"]
    mask = server.remove(key, subject_image(160, 120), model="auto", path="/v2/rembg/mask/")
    assert mask.status_code == 200 and mask.headers["X-Model"] == "falcon"


def test_account_lists_auto_and_its_prices(live_server: LiveServer, api_key: str) -> None:
    prices = requests.get(live_server.url + "/v2/account", headers={"ApiKey": api_key}, timeout=10).json()["models"]
    auto = prices["auto"]
    assert (auto["cost"], auto["escalated_cost"]) == (COSTS["falcon"], COSTS["aurora"])
    assert auto["runs"] == "falcon" and auto["escalates_to"] == "aurora"
    assert 0.0 <= auto["escalates_below_confidence"] <= 1.0


def test_auto_refuses_an_operating_resolution(live_server: LiveServer, api_key: str) -> None:
    response = live_server.remove(api_key, model="auto", fields={"operating_resolution": "1024x1024"})
    assert_error(response, 400, "invalid_parameter")


def test_an_asynchronous_auto_job_is_charged_what_ran(auto_servers: dict[str, LiveServer]) -> None:
    """The same settlement through app/jobs: the job reserves aurora's price and is charged falcon's
    when it did not escalate (the rest given back), aurora's when it did."""
    for name, ran in (("never", "falcon"), ("always", "aurora")):
        server = auto_servers[name]
        key = server.create_key(10)
        response = server.remove(key, subject_image(160, 120), model="auto", headers={"Prefer": "respond-async"})
        assert response.status_code == 202, response.text
        job = finished(server, key, response.headers["Location"])
        assert job["status"] == "succeeded", job
        assert server.balance(key) == 10 - COSTS[ran], f"{name}: charged {ran}'s price"
        result = requests.get(server.url + job["result_url"], headers={"ApiKey": key}, timeout=10)
        assert result.status_code == 200 and result.content[:4] == b"\x89PNG"


def test_a_replayed_auto_answer_says_auto_and_is_not_charged_again(auto_servers: dict[str, LiveServer]) -> None:
    """Only the body is kept with an Idempotency-Key: a replay cannot say which of auto's models ran,
    so it names `auto` and leaves the operating resolution out rather than guess."""
    server = auto_servers["always"]
    key = server.create_key(10)
    image, headers = subject_image(160, 120), {"Idempotency-Key": "auto-replay-1"}
    first = server.remove(key, image, model="auto", headers=headers)
    again = server.remove(key, image, model="auto", headers=headers)
    assert first.status_code == again.status_code == 200, again.text
    assert first.headers["X-Model"] == "aurora" and again.headers["X-Model"] == "auto"
    assert again.headers["Idempotent-Replayed"] == "true" and again.headers["X-Credits-Charged"] == "0"
    assert "X-Operating-Resolution" not in again.headers
    assert again.content == first.content
    assert server.balance(key) == 10 - COSTS["aurora"]
