"""image_url: the guarded fetcher, end to end against a local HTTP server, and its address check.

No test sends a packet outside loopback, even if the guard were broken: the photos are
served on 127.0.0.1, and every other range is proven on `address_allowed` alone.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from app.errors import ApiError
from app.http.client_address import parse_networks
from app.removal.fetch import _check_url, address_allowed
from harness import LiveServer, assert_error, free_port, png_of, subject_image

PHOTO = subject_image(96, 72)
MAX_BODY = 300_000  # the fetch server's upload limit, also the limit of a fetched image


class Photos(BaseHTTPRequestHandler):
    """Serves the test photo and the misbehaving answers the fetcher must survive; counts its hits."""

    hits: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        Photos.hits.append(self.path)
        path, _, query = self.path.partition("?")
        if path == "/photo.jpg":
            self._send(200, PHOTO, "text/plain")  # the wrong Content-Type: the bytes are sniffed
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/big-declared":
            self._send(200, b"\xff\xd8" + b"\0" * (MAX_BODY + 10), "image/jpeg")
        elif path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            for _ in range(MAX_BODY // len(chunk) + 2):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/text":
            self._send(200, b"<html>not an image</html>", "image/jpeg")
        elif path == "/slow":
            time.sleep(3)
            self._send(200, PHOTO, "image/jpeg")
        else:
            self._send(404, b"no", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def photos() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Photos)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fetching_server(start_server) -> LiveServer:  # type: ignore[no-untyped-def]
    return start_server(
        CUTOUT_FETCH_ALLOW='["127.0.0.1/32"]',
        CUTOUT_FETCH_TIMEOUT_S="2",
        CUTOUT_MAX_BODY_BYTES=str(MAX_BODY),
        CUTOUT_OPTION_COSTS='{"image_url": 1, "shadow": 2}',
    )


@pytest.fixture(scope="module")
def default_server(start_server) -> LiveServer:  # type: ignore[no-untyped-def]
    return start_server()


def fetch(server: LiveServer, key: str, url: str, **extra: object) -> requests.Response:
    return requests.post(
        server.url + "/v2/rembg/",
        headers={"ApiKey": key},
        json={"image_url": url, "model": "ghost", **extra},
        timeout=60,
    )


def test_fetches_from_an_allowlisted_address_and_prices_it(fetching_server: LiveServer, photos: str) -> None:
    key = fetching_server.create_key(20)
    response = fetch(fetching_server, key, f"http://{photos}/photo.jpg")
    assert response.status_code == 200, response.text
    assert png_of(response.content).size == (96, 72)
    assert response.headers["X-Credits-Charged"] == "2", "ghost (1) + image_url (1)"
    redirected = fetch(fetching_server, key, f"http://{photos}/redirect?http://{photos}/photo.jpg", shadow=True)
    assert redirected.status_code == 200 and redirected.headers["X-Credits-Charged"] == "4", "+ shadow (2)"
    # A multipart form with the field instead of the file part.
    form = requests.post(
        fetching_server.url + "/v2/rembg/",
        headers={"ApiKey": key},
        files={"image_url": (None, f"http://{photos}/photo.jpg"), "model": (None, "ghost")},
        timeout=60,
    )
    assert form.status_code == 200 and form.headers["X-Credits-Charged"] == "2"
    account = requests.get(fetching_server.url + "/v2/account", headers={"ApiKey": key}, timeout=10).json()
    assert account["option_costs"] == {"image_url": 1, "bg_blur": 0, "bg_image": 0, "shadow": 2}
    assert account["credits"] == 20 - 2 - 4 - 2


def test_failed_fetches_are_400s_with_their_codes_and_not_charged(fetching_server: LiveServer, photos: str) -> None:
    key = fetching_server.create_key(5)
    cases = [
        (
            f"http://{photos}/redirect?http://127.0.0.2:{photos.split(':')[1]}/photo.jpg",
            "image_url_forbidden",
            "127.0.0.2",
        ),
        (f"http://{photos}/loop", "image_url_unreachable", "more than 3"),
        (f"http://{photos}/missing", "image_url_unreachable", "HTTP 404"),
        (f"http://{photos}/big-declared", "image_url_too_large", str(MAX_BODY)),
        (f"http://{photos}/big-chunked", "image_url_too_large", str(MAX_BODY)),
        (f"http://{photos}/slow", "image_url_unreachable", "2 s"),
        (f"http://127.0.0.1:{free_port()}/photo.jpg", "image_url_unreachable", "connection"),  # nothing listens
        (f"ftp://{photos}/photo.jpg", "image_url_forbidden", "http or https"),
        (f"http://user:pw@{photos}/photo.jpg", "invalid_parameter", "password"),
        (f"http://{photos}/text", "invalid_image", "JPEG"),
        ("not a url", "image_url_forbidden", "http or https"),
    ]
    for url, code, says in cases:
        body = assert_error(fetch(fetching_server, key, url), 400, code)
        assert says in body["error"]["message"], (url, body)
    assert fetching_server.balance(key) == 5


def test_default_refuses_loopback_in_every_spelling(default_server: LiveServer, photos: str) -> None:
    key = default_server.create_key(5)
    port = photos.split(":")[1]
    before = len(Photos.hits)
    for host in ("127.0.0.1", "[::1]", "0.0.0.0", "localhost", "127.1", "[::ffff:127.0.0.1]", "2130706433"):
        body = assert_error(fetch(default_server, key, f"http://{host}:{port}/photo.jpg"), 400, "image_url_forbidden")
        assert "public URL" in body["error"]["message"]
    assert len(Photos.hits) == before, "nothing reached the photo server"
    assert default_server.balance(key) == 5


def test_bg_image_url_is_fetched_as_bg_image_and_priced_as_a_fetch(fetching_server: LiveServer, photos: str) -> None:
    """remove.bg's bg_image_url: the background fetched like image_url, then as an uploaded bg_image."""
    key = fetching_server.create_key(20)
    photo = subject_image(160, 120)
    by_url = requests.post(
        fetching_server.url + "/v2/rembg/",
        headers={"ApiKey": key},
        files={"image": ("p.jpg", photo, "image/jpeg")},
        data={"model": "ghost", "bg_image_url": f"http://{photos}/photo.jpg"},
        timeout=60,
    )
    uploaded = requests.post(
        fetching_server.url + "/v2/rembg/",
        headers={"ApiKey": key},
        files={"image": ("p.jpg", photo, "image/jpeg"), "bg_image": ("b.jpg", PHOTO, "image/jpeg")},
        data={"model": "ghost"},
        timeout=60,
    )
    assert by_url.status_code == 200 and uploaded.status_code == 200, by_url.text
    assert by_url.content == uploaded.content
    fetch_cost = int(by_url.headers["X-Credits-Charged"]) - int(uploaded.headers["X-Credits-Charged"])
    assert fetch_cost == 1, "the fetch is priced as image_url's"
    both = requests.post(
        fetching_server.url + "/v2/rembg/",
        headers={"ApiKey": key},
        files={"image": ("p.jpg", photo, "image/jpeg"), "bg_image": ("b.jpg", PHOTO, "image/jpeg")},
        data={"model": "ghost", "bg_image_url": f"http://{photos}/photo.jpg"},
        timeout=60,
    )
    assert "bg_image_url" in assert_error(both, 400, "invalid_parameter")["error"]["message"]
    forbidden = fetch(fetching_server, key, f"http://{photos}/photo.jpg", bg_image_url="http://169.254.169.254/x.jpg")
    assert_error(forbidden, 400, "image_url_forbidden")


def test_fetching_can_be_switched_off(live_server: LiveServer, photos: str) -> None:
    key = live_server.create_key(5)  # the shared server runs with CUTOUT_FETCH_ENABLED=false
    body = assert_error(fetch(live_server, key, f"http://{photos}/photo.jpg"), 400, "image_url_forbidden")
    assert "does not fetch" in body["error"]["message"]
    assert live_server.balance(key) == 5


def test_a_slow_fetch_does_not_block_the_event_loop_and_holds_its_accounts_slot(
    fetching_server: LiveServer, photos: str
) -> None:
    key, other = fetching_server.create_key(5), fetching_server.create_key(5)
    thread = threading.Thread(target=fetch, args=(fetching_server, key, f"http://{photos}/slow"))
    thread.start()
    time.sleep(0.5)
    started = time.perf_counter()
    assert requests.get(fetching_server.url + "/health", timeout=5).status_code == 200
    assert time.perf_counter() - started < 0.5
    # The fetch holds one of the account's running slots (free plan: one at once): the account's next
    # request waits its turn until the slow fetch gives up (2 s); other accounts are served meanwhile.
    started = time.perf_counter()
    assert fetch(fetching_server, other, f"http://{photos}/photo.jpg").status_code == 200
    assert time.perf_counter() - started < 1.0
    started = time.perf_counter()
    waited = fetch(fetching_server, key, f"http://{photos}/photo.jpg")
    assert waited.status_code == 200, waited.text
    assert time.perf_counter() - started > 0.8, "it waited behind the slow fetch"
    thread.join()
    assert fetching_server.balance(key) == 5 - int(waited.headers["X-Credits-Charged"]), "the failed fetch is free"


FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.254",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "ff05::2",
    "2001:db8::1",
    "100::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::ffff:100.64.0.1",
    "2002:7f00:1::1",
    "2002:a9fe:a9fe::1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::7f00:1",
    "::127.0.0.1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo to a private client address
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::1", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_address_check_refuses_internal_ranges(address: str) -> None:
    assert not address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_address_check_allows_public_unicast(address: str) -> None:
    assert address_allowed(ipaddress.ip_address(address))


def test_allowlist_opens_exactly_its_networks() -> None:
    allow = parse_networks(["127.0.0.1/32", "10.1.0.0/16", "fd00::/8"])
    for address in ("127.0.0.1", "::ffff:127.0.0.1", "10.1.2.3", "fd00::5"):
        assert address_allowed(ipaddress.ip_address(address), allow), address
    for address in ("127.0.0.2", "10.2.0.1", "169.254.169.254", "::1", "fc00::1"):
        assert not address_allowed(ipaddress.ip_address(address), allow), address


def test_a_url_in_unicode_is_requested_in_ascii_and_a_broken_host_is_a_400() -> None:
    # httpcore takes ASCII only: a raw IDN host or path reached it as a TypeError (a 500).
    url, host = _check_url("https://bücher.example:8443/straße/foto.jpg?q=ä#top")
    assert (
        url == "https://xn--bcher-kva.example:8443/stra%C3%9Fe/foto.jpg?q=%C3%A4"
        and host == b"xn--bcher-kva.example:8443"
    )
    assert _check_url("http://127.0.0.1:8080/a%20b.jpg?x=1&y=2") == (
        "http://127.0.0.1:8080/a%20b.jpg?x=1&y=2",
        b"127.0.0.1:8080",
    )
    with pytest.raises(ApiError) as refused:
        _check_url("http://ä..com/photo.jpg")
    assert refused.value.code == "invalid_parameter"
