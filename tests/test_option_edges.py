"""Option values at the edges, in process: each is a 400 or a picture, never an exception (a 500)."""

from __future__ import annotations

import numpy as np
import pytest

from app.errors import ApiError
from app.imaging import compose
from app.removal import options


@pytest.mark.parametrize(
    "fields",
    [
        {"output_format": "webp", "quality": 10**400},
        {"max_side": 10**400},
        {"bg_blur": 10**400},
        {"crop_margin": 10**400},
        {"crop_margin": -(10**400)},
    ],
)
def test_a_huge_json_number_is_a_400(fields: dict[str, object]) -> None:
    with pytest.raises(ApiError) as refused:
        options.parse(fields, None, mask=False)
    assert refused.value.code == "invalid_parameter" and list(fields)[-1] in refused.value.message


@pytest.mark.parametrize("dx, dy", [(150, 0), (-150, 0), (0, 60), (0, -60), (99, 47), (2000, -2000)])
def test_a_shadow_offset_past_the_image_shifts_it_out_or_partly(dx: int, dy: int) -> None:
    rgba = np.zeros((48, 100, 4), np.uint8)
    rgba[10:30, 20:60] = (200, 10, 10, 255)
    shadowed = compose.add_shadow(
        rgba, options.parse({"shadow_offset_x": dx, "shadow_offset_y": dy}, None, mask=False).finish
    )
    assert shadowed.shape == rgba.shape
    assert (shadowed[10:30, 20:60] == rgba[10:30, 20:60]).all()  # the subject itself is untouched
