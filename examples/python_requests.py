import os
import sys

import requests

api = os.environ.get("CUTOUT_URL", "http://localhost:8000")
with open("photo.jpg", "rb") as photo:
    response = requests.post(
        f"{api}/v2/rembg/",
        headers={"ApiKey": os.environ["CUTOUT_API_KEY"]},
        files={"image": photo},
        data={"model": "falcon"},
        timeout=60,
    )
if not response.ok:
    error = response.json()["error"]
    sys.exit(f"{response.status_code} {error['code']}: {error['message']} ({error['request_id']})")
with open("out.png", "wb") as out:
    out.write(response.content)
print("credits left:", response.headers["X-Credits-Remaining"])
