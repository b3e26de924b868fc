"""Block responses: the page a person sees, and JSON, text or empty bodies for everything else.

Pure rendering: values in, (status, headers, body) out. No mitmproxy, no I/O.
Everything that came from a request or a list is escaped for where it lands
(HTML text, HTML attribute, JSON, a header value, a terminal).
"""

from __future__ import annotations

import html
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Final, Literal

from proxy_addons.core.canon import scalar_text
from proxy_addons.core.engine import Verdict

Kind = Literal["html", "json", "text", "empty"]

# URLs can be 64 KB; a person needs the start of it, and the page must stay small.
MAX_SHOWN_URL: Final = 2048
# Header values carry list text; keep them short and on one line.
MAX_HEADER_VALUE: Final = 200
# Accept headers longer than this are not worth parsing fully (browsers send < 300 bytes).
MAX_ACCEPT_LENGTH: Final = 2048
HEADER_NAME: Final = "X-Jectguard-Block"

_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HEADER_UNSAFE_RE: Final = re.compile(r"[^\x20-\x7e]")
_STAGES: Final = {
    "request": "the requested address",
    "authority": "the address in the request line (or HTTP/2 :authority)",
    "host-header": "the Host header of the request",
    "sni": "the TLS server name (SNI)",
    "connect": "the CONNECT target",
    "redirect": "a redirect target",
    "address": "the server's IP address",
    "destination": "the destination (the proxy does not connect there)",
}


def new_request_id() -> str:
    """A short random id a person can read out to an administrator."""
    return secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class ProceedForm:
    """A "proceed anyway" form: sent to ``action`` with ``fields``.

    On a block page it is a GET to the proxy's own origin (no token); on that
    origin's confirmation page it is the POST that carries the signed token.
    """

    action: str
    fields: dict[str, str]
    minutes: int
    host: str
    method: str = "post"


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """Everything a block response tells the person or the API client."""

    url: str
    stage: str
    request_id: str
    time: float
    host: str | None = None
    list: str | None = None
    rule: str | None = None
    line: int | None = None
    kind: str | None = None
    category: str | None = None
    mode: str = "enforce"
    admin_contact: str = ""
    report_url: str = ""
    proceed: ProceedForm | None = field(default=None, compare=False)
    # 403 for a block; 400/414/502 for something unreadable, which fails closed
    status: int = 403
    # why, when no list rule says it (a refused destination, an unreadable Host header)
    why: str = ""

    @classmethod
    def from_verdict(
        cls,
        verdict: Verdict,
        *,
        url: str,
        stage: str,
        request_id: str,
        when: float | None = None,
        admin_contact: str = "",
        report_url: str = "",
        proceed: ProceedForm | None = None,
        status: int = 403,
        why: str = "",
    ) -> BlockInfo:
        m = verdict.match
        return cls(
            url=_shorten(url),
            stage=stage,
            request_id=request_id,
            time=time.time() if when is None else when,
            host=verdict.host,
            list=m.list if m else None,
            rule=m.rule if m else None,
            line=m.line if m else None,
            kind=m.kind.label if m else None,
            category=m.category if m else None,
            mode=m.mode.value if m else "enforce",
            admin_contact=admin_contact,
            report_url=report_url,
            proceed=proceed,
            status=status or 403,
            why=why,
        )

    @property
    def listed(self) -> bool:
        """Whether a list rule decided (not a policy or an unreadable request)."""
        return self.list is not None

    @property
    def headline(self) -> str:
        if self.listed:
            return "suspected malicious"
        return "refused: " + self.why if self.why else "refused"

    @property
    def time_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.time))

    def as_dict(self) -> dict[str, object]:
        return {
            "blocked": True,
            "reason": self.headline,
            "url": self.url,
            "host": self.host,
            "list": self.list,
            "rule": self.rule,
            "line": self.line,
            "kind": self.kind,
            "category": self.category,
            "stage": self.stage,
            "request_id": self.request_id,
            "time": self.time_text,
            "admin_contact": self.admin_contact or None,
            "report_url": self.report_url or None,
        }


@dataclass(frozen=True, slots=True)
class Rendered:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _shorten(url: str) -> str:
    url = scalar_text(url)
    return url if len(url) <= MAX_SHOWN_URL else url[:MAX_SHOWN_URL] + "…"


def printable(text: str) -> str:
    """Control characters shown as escapes: safe for a terminal, a log line, a text body."""
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def header_value(text: str) -> str:
    """One short line of printable ASCII, safe in an HTTP header."""
    return _HEADER_UNSAFE_RE.sub("?", text)[:MAX_HEADER_VALUE]


def block_header(info: BlockInfo) -> str:
    """The ``X-Jectguard-Block`` value: list, rule and request id."""
    return header_value(
        f"list={info.list or '-'}; rule={info.rule or '-'}; "
        f"category={info.category or '-'}; stage={info.stage}; id={info.request_id}"
    )


def _q(params: list[str]) -> float:
    for p in params:
        name, _, value = p.partition("=")
        if name.strip() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def choose_kind(sec_fetch_dest: str | None, accept: str | None) -> Kind:
    """Which body a blocked request gets.

    Fetch metadata decides when present: a ``document`` navigation gets the
    page, any other destination (script, image, iframe, fetch) an empty body.
    Without it, the Accept header: HTML for browsers, JSON for API clients,
    plain text for everything else.
    """
    if sec_fetch_dest:
        return "html" if sec_fetch_dest.strip().lower() == "document" else "empty"
    if not accept:
        return "text"
    html_q = json_q = 0.0
    for item in accept[:MAX_ACCEPT_LENGTH].lower().split(","):
        media, *params = item.split(";")
        media = media.strip()
        if media in ("text/html", "application/xhtml+xml"):
            html_q = max(html_q, _q(params))
        elif media == "application/json" or (
            media.startswith("application/") and media.endswith("+json")
        ):
            json_q = max(json_q, _q(params))
    if html_q > 0 and html_q >= json_q:
        return "html"
    if json_q > 0:
        return "json"
    return "text"


def _common_headers(info: BlockInfo) -> list[tuple[str, str]]:
    return [
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        (HEADER_NAME, block_header(info)),
    ]


def render(info: BlockInfo, kind: Kind) -> Rendered:
    """The 403 response for one block, in the given kind."""
    headers = _common_headers(info)
    if kind == "html":
        csp = (
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
        )
        if info.proceed is not None:
            csp += f"; form-action {_origin(info.proceed.action)}"
        else:
            csp += "; form-action 'none'"
        headers += [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Security-Policy", csp),
            ("X-Frame-Options", "DENY"),
        ]
        return Rendered(info.status, headers, render_html(info).encode("utf-8"))
    if kind == "json":
        headers.append(("Content-Type", "application/json"))
        return Rendered(info.status, headers, render_json(info).encode("ascii"))
    headers.append(("Content-Type", "text/plain; charset=utf-8"))
    if kind == "empty":
        return Rendered(info.status, headers, b"")
    return Rendered(info.status, headers, render_text(info).encode("utf-8"))


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return header_value(f"{scheme}://{rest.split('/', 1)[0]}")


def render_json(info: BlockInfo) -> str:
    return json.dumps(info.as_dict(), ensure_ascii=True, sort_keys=True)


def render_text(info: BlockInfo) -> str:
    lines = [
        "Blocked by jectguard: suspected malicious site."
        if info.listed
        else f"Refused by jectguard: {info.why or 'not allowed'}.",
        f"URL: {info.url}",
        f"Host: {info.host or '-'}",
        f"List: {info.list or '-'}",
        f"Rule: {info.rule or '-'}" + (f" (line {info.line})" if info.line else ""),
        f"Category: {info.category or '-'}",
        f"Matched: {_STAGES.get(info.stage, info.stage)}",
        f"Request ID: {info.request_id}",
        f"Time: {info.time_text}",
        "If you believe this is a mistake, report it"
        + (f" to {info.admin_contact}" if info.admin_contact else " to your administrator")
        + " and quote the request ID.",
    ]
    if info.report_url:
        lines.append(f"Report a false positive: {info.report_url}")
    return "\n".join(printable(line) for line in lines) + "\n"


def _e(text: object) -> str:
    return html.escape(printable(str(text)), quote=True)


def _contact_html(contact: str) -> str:
    if not contact:
        return "your administrator"
    if contact.startswith(("https://", "http://", "mailto:")):
        return f'<a href="{_e(contact)}">{_e(contact)}</a>'
    if "@" in contact and " " not in contact.strip():
        return f'<a href="mailto:{_e(contact.strip())}">{_e(contact)}</a>'
    return _e(contact)


_CSS: Final = """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f6f6f4;color:#1d1d1d}
main{max-width:42rem;margin:0 auto;padding:1.5rem 1rem}
h1{font-size:1.5rem;margin:.5rem 0 1rem;color:#a4161a}
.box{background:#fff;border:1px solid #ddd;border-left:6px solid #a4161a;border-radius:6px;
padding:1rem 1.25rem;margin:1rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere;word-break:break-word}
code{font-size:.9em;overflow-wrap:anywhere}
button{font:inherit;padding:.5rem 1rem;border-radius:6px;border:1px solid #888;background:#eee}
@media (max-width:30rem){dl{grid-template-columns:1fr}dt{margin-top:.5rem}}
small{color:#555}
"""


def _title(info: BlockInfo) -> str:
    return "Blocked: suspected malicious site" if info.listed else "Refused by jectguard"


def _explanation(info: BlockInfo) -> str:
    if info.listed:
        return (
            "<p>jectguard stopped this request because the address is on a list of\n"
            "<strong>suspected malicious</strong> sites. Sites on such lists may have been "
            "hacked\nto spread malware, or may host phishing or attack code. Lists can be "
            "wrong.</p>"
        )
    return (
        f"<p>jectguard refused this request: <strong>{_e(info.why or 'not allowed')}"
        "</strong>. This is the proxy's own policy, not a list.</p>"
    )


def render_html(info: BlockInfo) -> str:
    """The block page: no scripts, no external resources, readable on a phone."""
    rows = [
        ("Blocked address", f"<code>{_e(info.url)}</code>"),
        *([] if info.listed else [("Reason", _e(info.why or "not allowed"))]),
        ("Matched", _e(_STAGES.get(info.stage, info.stage))),
        ("List", _e(info.list or "-")),
        (
            "Rule",
            f"<code>{_e(info.rule or '-')}</code>"
            + (f" <small>(line {int(info.line)})</small>" if info.line else ""),
        ),
        ("Category", _e(info.category or "-")),
        ("Request ID", f"<code>{_e(info.request_id)}</code>"),
        ("Time", _e(info.time_text)),
    ]
    details = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    report = (
        f'<p>You can also <a href="{_e(info.report_url)}">report a false positive</a>.</p>'
        if info.report_url
        else ""
    )
    proceed = ""
    if info.proceed is not None:
        p = info.proceed
        hidden = "".join(
            f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in p.fields.items()
        )
        proceed = (
            '<div class="box"><h2>Continue anyway?</h2>'
            f"<p>Only if you are sure this site is safe. You will be asked to confirm on "
            f"a page of the proxy; that lets this device reach <code>{_e(p.host)}</code> "
            f"for {int(p.minutes)} minutes, and the decision is logged.</p>"
            f'<form method="{_e(p.method)}" action="{_e(p.action)}">{hidden}'
            '<button type="submit">Continue anyway…</button></form></div>'
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{_e(_title(info))}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>{"This site was blocked" if info.listed else "This request was refused"}</h1>
{_explanation(info)}
<div class="box"><dl>
{details}
</dl></div>
<h2>Think this is a mistake?</h2>
<p>If you believe this site is safe, contact {_contact_html(info.admin_contact)} and
quote the request ID <code>{_e(info.request_id)}</code>. They can check the rule and
allow the site.</p>
{report}
{proceed}
<p><small>{
        "Blocked by jectguard. Matches come from the list named above, not from a"
        "\njudgement about this particular page."
        if info.listed
        else "Refused by jectguard."
    }</small></p>
</main>
</body>
</html>
"""


def render_proceed_page(form: ProceedForm, url: str, return_origin: str) -> Rendered:
    """The confirmation page on the proxy's own origin: the signed form and one button.

    No web origin can read it (no CORS headers; ``Cross-Origin-Resource-Policy``),
    frame it (``frame-ancestors 'none'``) or post to it on a person's behalf
    (the form goes only to this origin).
    """
    hidden = "".join(
        f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in form.fields.items()
    )
    body = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>Continue to a blocked site?</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>Continue to a blocked site?</h1>
<div class="box"><p>The address <code>{_e(_shorten(url))}</code> is on a list of
<strong>suspected malicious</strong> sites. Continue only if you are sure it is safe.
This device may then reach <code>{_e(form.host)}</code> for {int(form.minutes)} minutes;
the decision is logged.</p>
<form method="post" action="{_e(form.action)}">{hidden}
<button type="submit">Continue to {_e(form.host)}</button></form></div>
<p><small>This page is served by jectguard itself, not by the site.</small></p>
</main>
</body>
</html>
"""
    headers = [
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        # not no-referrer: that makes the browser send "Origin: null" with the POST,
        # and the grant checks the Origin is this page's
        ("Referrer-Policy", "same-origin"),
        ("Content-Type", "text/html; charset=utf-8"),
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
            # the grant's 303 goes to the blocked site: form-action covers redirects
            f"base-uri 'none'; form-action 'self' {header_value(return_origin)}",
        ),
        ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
    ]
    return Rendered(200, headers, body.encode("utf-8"))
