"""Issue 12, class 1: no body is read before the key is checked, and no body is read past its
cap, whatever the route, size, framing or Content-Type.

Bodies go over a raw socket (tests/reliability/helpers.py ``raw_request``): the server answers
before the body is complete and stops reading it, which a client like httpx would report as a
broken pipe. Each request declares up to 8 GiB (or streams chunked, with no length at all) and
sends until the answer arrives; the server's peak RSS growth (its whole process tree, /proc)
is measured per request."""

from __future__ import annotations

import pytest

from tests.reliability.helpers import (
    assert_still_answers,
    files_under,
    raw_request,
    server_cost,
)

MB = 10**6
GIB = 1024**3
MIB = 1024**2
# Target of issue 12: an unauthenticated request of any size and content type costs the
# server at most this much memory.
RSS_BUDGET = 50 * MB
MULTIPART = "multipart/form-data; boundary=xyzzy"

# (name, method, path, Content-Type, Authorization, bytes sent, declared length or None:
# chunked)
UNAUTHENTICATED = [
    ("json route, multipart, 8 GiB declared, no key", "POST", "/v1/jobs", MULTIPART, None,
     64 * MIB, 8 * GIB),
    ("json route, multipart, 256 MiB chunked, unknown key", "POST", "/v1/jobs", MULTIPART,
     "Bearer gif_not-a-real-key-at-all", 256 * MIB, None),
    ("json route, json, 1 GiB declared, bare key", "POST", "/v1/jobs", "application/json",
     "gif_not-a-real-key-at-all", 32 * MIB, GIB),
    ("upload route, multipart, 8 GiB declared, Basic", "POST", "/v1/models", MULTIPART,
     "Basic dXNlcjpwYXNz", 64 * MIB, 8 * GIB),
    ("upload route, octet-stream, 128 MiB chunked, no key", "POST", "/v1/datasets",
     "application/octet-stream", None, 128 * MIB, None),
    ("read route with a body, 1 GiB declared, no key", "GET", "/v1/models", MULTIPART, None,
     32 * MIB, GIB),
    ("cancel route, text/plain, 64 MiB chunked, Bearer without key", "POST",
     "/v1/jobs/job_x/cancel", "text/plain", "Bearer ", 64 * MIB, None),
    ("tiny multipart, no key", "POST", "/v1/jobs", MULTIPART, None, 1024, 1024),
]


def _send(server, method, path, content_type, authorization, sent, declared):
    headers = {"Content-Type": content_type}
    if authorization is not None:
        headers["Authorization"] = authorization
    return raw_request(server.url, method, path, headers, sent,
                       declare_length=declared is not None, declared_length=declared)


def test_unauthenticated_bodies_are_401_unread(embedded):
    artifacts = embedded.data_dir / "artifacts"
    before = files_under(artifacts)
    # Warm: the first refusal imports and allocates what every later one reuses.
    _send(embedded, "POST", "/v1/jobs", MULTIPART, None, 1024, 1024)
    failures, figures = [], []
    for name, method, path, content_type, authorization, sent, declared in UNAUTHENTICATED:
        with server_cost(embedded) as cost:
            response = _send(embedded, method, path, content_type, authorization, sent, declared)
        figures.append(f"{name}: {response.status} {cost}")
        body = response.json()
        says_why = any(words in body.get("detail", "")
                       for words in ("Authorization: Bearer <key>", "invalid or revoked"))
        if (
            response.status != 401
            or "Bearer" not in response.headers.get("www-authenticate", "")
            or body.get("status") != 401
            or not says_why
        ):
            failures.append(f"{name}: {response.status} {response.body[:300]!r}")
        if cost.rss_growth > RSS_BUDGET:
            failures.append(f"{name}: server RSS grew {cost.rss_growth / MB:.0f} MB")
    print("\n".join(figures))
    assert not failures, "\n".join(failures)
    assert files_under(artifacts) == before
    assert_still_answers(embedded)


@pytest.mark.parametrize(
    ("path", "content_type", "sent", "declared", "status"),
    [
        # A JSON route given a multipart body past the 16 MiB cap: 413, read at most 16 MiB.
        ("/v1/jobs", MULTIPART, 64 * MIB, 8 * GIB, 413),
        ("/v1/jobs", MULTIPART, 96 * MIB, None, 413),
        ("/v1/jobs", "application/json", 64 * MIB, None, 413),
        # An upload route only streams multipart: anything else is 415, unread.
        ("/v1/models", "application/json", 64 * MIB, 8 * GIB, 415),
        # An upload past its cap (2 MiB here): 413, from the declared length or the stream.
        ("/v1/datasets", MULTIPART, 64 * MIB, 8 * GIB, 413),
        ("/v1/datasets", MULTIPART, 64 * MIB, None, 400),
    ],
)
def test_authenticated_bodies_past_their_cap_are_refused_bounded(
    embedded, path, content_type, sent, declared, status
):
    """With a valid key the body is read, but never past its route's cap. (A chunked upload
    of zeros is not valid multipart: the parser refuses it (400) before the cap is reached.)"""
    artifacts = embedded.data_dir / "artifacts"
    before = files_under(artifacts)
    headers = {"Content-Type": content_type, **embedded.headers}
    raw_request(embedded.url, "POST", path, headers, 1024)  # warm this route
    with server_cost(embedded) as cost:
        response = raw_request(embedded.url, "POST", path, headers, sent,
                               declare_length=declared is not None, declared_length=declared)
    print(f"POST {path} {content_type} {sent} bytes: {response.status} {cost}")
    assert response.status == status, response.body[:300]
    assert response.json()["status"] == status
    assert cost.rss_growth <= RSS_BUDGET, f"server RSS grew {cost.rss_growth / MB:.0f} MB"
    assert files_under(artifacts) == before
    assert_still_answers(embedded)
