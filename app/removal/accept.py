"""Which answer the `Accept` header asks for: the image, its bytes as application/octet-stream, or JSON.

ACCEPT_RULE says it in words (the OpenAPI description and docs/output-options.md carry it);
`preferred` applies it, and `answer_for` with the request's sync_mode and output_mask.
"""

from __future__ import annotations

from typing import Literal

from app.errors import invalid_parameter
from app.imaging import codec
from app.removal.options import Options

Answer = Literal["image", "bytes", "json"]  # bytes: the image sent as application/octet-stream

JSON_TYPE = "application/json"
OCTET_TYPE = "application/octet-stream"
ACCEPT_RULE = (
    "Without `sync_mode`, the answer is JSON only when the `Accept` header ranks `application/json` strictly "
    "above the image type the answer would have (`image/png`, `image/webp` or `image/jpeg`) and above "
    "`application/octet-stream`: each type's preference is the q-value (default 1) of the most specific range "
    "naming it (`image/png`, else `image/*`, else `*/*`; `application/json`, else `application/*`, else `*/*`), "
    "0 when none does. Equal preferences give the image: `*/*`, a browser's Accept and axios's "
    "`application/json, text/plain, */*` get the image; `Accept: application/json` alone, or "
    "`application/json, image/*;q=0.5`, get JSON. The image's bytes come as `application/octet-stream` only "
    "when that ranks strictly above the image type (what some generated clients ask for)."
)


def _preferences(accept: str) -> dict[str, float]:
    """Media range -> q-value; a malformed q counts as 1 (a client that lists a type wants it)."""
    ranks: dict[str, float] = {}
    for part in accept.split(","):
        media_range, *params = (piece.strip() for piece in part.split(";"))
        if not media_range:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 1.0
        media_range = media_range.lower()
        ranks[media_range] = max(q, ranks.get(media_range, 0.0))
    return ranks


def _quality(ranks: dict[str, float], media_type: str) -> float:
    kind = media_type.split("/")[0]
    for media_range in (media_type, f"{kind}/*", "*/*"):
        if media_range in ranks:
            return ranks[media_range]
    return 0.0


def preferred(accept: str, image_type: str = "image/png") -> Answer:
    """ACCEPT_RULE: JSON only when the client prefers it, strictly, to the image it would get; the
    image as application/octet-stream only when that is preferred, strictly, to its own type."""
    ranks = _preferences(accept)
    image, octet = _quality(ranks, image_type), _quality(ranks, OCTET_TYPE)
    if _quality(ranks, JSON_TYPE) > max(image, octet):
        return "json"
    return "bytes" if octet > image else "image"


def wants_json(accept: str) -> bool:
    """Whether the Accept header asks for the JSON answer (ACCEPT_RULE): what an asynchronous job keeps."""
    return preferred(accept) == "json"


def answer_for(chosen: Options, accept: str) -> Answer:
    """The answer a request gets: by `Accept` (ACCEPT_RULE) unless sync_mode decides JSON or not; a 400
    when output_mask asks for JSON that the request does not get."""
    by_accept = preferred(accept, codec.CONTENT_TYPES[chosen.output_format])
    answer: Answer = by_accept
    if chosen.sync_mode is not None:  # it decides JSON or not; Accept still picks the bytes' media type
        answer = "json" if chosen.sync_mode else ("image" if by_accept == "json" else by_accept)
    if chosen.output_mask and answer != "json":
        raise invalid_parameter(
            "output_mask returns the mask inside a JSON answer: add sync_mode=true (or Accept: application/json)."
        )
    return answer
