"""Issue 12, class 6: model downloads honour ``If-None-Match`` as RFC 9110 says and as the
report routes do: the weak comparison (``W/"…"`` matches the strong ETag), ``*``, and lists
of tags; a tag that matches nothing gets the file. A 304 carries the ETag and no body, and
is answered without reading the file (a download re-hashes it, then streams it).

Bytes read are the process's ``rchar`` from ``/proc/<pid>/io``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.helpers import assert_still_answers, server_cost


def _bytes_read(pid: int) -> int:
    for line in (Path("/proc") / str(pid) / "io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/<pid>/io")


@pytest.fixture(scope="module")
def model_download(embedded, uploaded) -> tuple[str, str, int]:
    """(content URL, ETag, size) of the uploaded model."""
    url = f"/v1/models/{uploaded['model']['id']}/content"
    response = embedded.client().get(url)
    assert response.status_code == 200
    return url, response.headers["etag"], len(response.content)


@pytest.mark.parametrize(
    "header",
    ['{etag}', 'W/{etag}', '*', '"nope", W/{etag}', 'W/{etag} , "other"', '"a","b",{etag}'],
)
def test_a_matching_if_none_match_is_304(embedded, model_download, header):
    url, etag, _ = model_download
    for range_header in (None, "bytes=0-9"):
        headers = {"If-None-Match": header.format(etag=etag)}
        if range_header:
            headers["Range"] = range_header
        response = embedded.client().get(url, headers=headers)
        assert response.status_code == 304, (header, response.text[:200])
        assert response.headers["etag"] == etag and response.content == b""


@pytest.mark.parametrize("header", ['"nope"', 'W/"nope"', '', ',', '"abc'])
def test_a_tag_that_matches_nothing_gets_the_file(embedded, model_download, header):
    url, etag, size = model_download
    response = embedded.client().get(url, headers={"If-None-Match": header})
    assert response.status_code == 200, response.text[:200]
    assert len(response.content) == size and response.headers["etag"] == etag


def test_revalidating_reads_no_file(embedded, model_download):
    url, etag, size = model_download
    client, pid = embedded.client(), embedded.process.pid
    start = _bytes_read(pid)
    for _ in range(20):
        assert client.get(url).status_code == 200
    downloads = _bytes_read(pid) - start
    with server_cost(embedded) as cost:
        start = _bytes_read(pid)
        for _ in range(20):
            assert client.get(url, headers={"If-None-Match": f"W/{etag}"}).status_code == 304
        revalidations = _bytes_read(pid) - start
    print(f"20 downloads read {downloads:,} bytes, 20 revalidations {revalidations:,}; {cost}")
    assert downloads >= 20 * 2 * size  # hashed, then streamed
    assert revalidations < downloads - 20 * 2 * size + 20 * 1024
    assert cost.rss_growth < 20 * 10**6
    assert_still_answers(embedded)
