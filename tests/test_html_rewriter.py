"""HTMLRewriter (``from js import HTMLRewriter``), as Cloudflare's lol-html behaves.

The rewriting rules are tested on the class itself, fed in small chunks as a
body streams; the binding of it all, in a real jailed worker that rewrites
a page it built and one it fetched from a real upstream, as Cloudflare's
OpenGraph example does.
"""

from __future__ import annotations

import asyncio

import pytest

from sandbox.html_rewriter import HTMLRewriter, SelectorError
from sandbox.workers import Response
from tests.test_cf_gaps import corral, deploy  # noqa: F401 - the module's fixtures (upstream: conftest)

PAGE = (b'<!DOCTYPE html>\n<html><head><title>T &amp; x</title><meta property="og:title" content="old">'
        b'<META name="twitter:card" content="x"></head>\n<body class="main page"><!-- note -->'
        b'<p id="a">Hello <b>bold</b> world</p><p>two</p><ul><li>1<li>2</ul>\n<img src="a.png">'
        b'<a href="http://x.test/y">link</a><div class="drop">gone <span>too</span></div>'
        b'<script>if (a < b) {}</script><section>keep<i>me</i></section></body></html>')


def rewrite(rewriter: HTMLRewriter, page: bytes = PAGE, chunk: int = 7) -> tuple[Response, str]:
    async def body():
        for i in range(0, len(page), chunk):
            yield page[i:i + chunk]

    async def run() -> tuple[Response, str]:
        source = Response(body(), headers={"content-type": "text/html; charset=utf-8",
                                           "content-length": str(len(page))})
        out = rewriter.transform(source)
        return out, await out.text()

    return asyncio.run(run())


class Remove:
    def element(self, el):
        el.remove()


def test_unchanged_markup_comes_back_byte_for_byte() -> None:
    out, text = rewrite(HTMLRewriter.new().on("blink", Remove()), chunk=3)
    assert text.encode() == PAGE
    assert out.headers.get("content-length") is None  # rewriting changes it


def test_elements_attributes_and_content() -> None:
    class Head:
        def element(self, el):
            el.prepend('<meta property="og:title" content="new & improved" />', html=True)
            el.append("<not a tag>")

    class Links:
        def element(self, el):
            el.setAttribute("href", el.getAttribute("href").replace("http:", "https:"))
            el.setAttribute("data-q", 'a"b')

    seen = []

    class Paragraphs:
        async def element(self, el):  # handlers may be async
            seen.append((el.tagName, el.getAttribute("id"), el.hasAttribute("id")))
            el.before("<!-- before -->", {"html": True})
            el.onEndTag(lambda end: end.after("[end]"))

        def text(self, chunk):
            if chunk.text.strip():
                chunk.replace(chunk.text.upper())

    rewriter = (HTMLRewriter.new()
                .on('meta[property^="og:"]', Remove()).on('meta[name^="twitter:"]', Remove())
                .on("head", Head()).on("a[href]", Links()).on("p", Paragraphs())
                .on("div.drop", Remove())
                .on("li:first-child", {"element": lambda el: el.setInnerContent("first")})
                .on("section", {"element": lambda el: el.removeAndKeepContent()})
                .on("body > ul li:nth-child(2)", {"element": lambda el: el.setAttribute("class", "second")}))
    _, text = rewrite(rewriter)
    assert text == (
        '<!DOCTYPE html>\n<html><head><meta property="og:title" content="new & improved" />'
        "<title>T &amp; x</title>&lt;not a tag&gt;</head>\n"
        '<body class="main page"><!-- note --><!-- before --><p id="a">HELLO <b>BOLD</b> WORLD</p>[end]'
        "<!-- before --><p>TWO</p>[end]<ul><li>first<li class=\"second\">2</ul>\n"
        '<img src="a.png"><a href="https://x.test/y" data-q="a&quot;b">link</a>'
        "<script>if (a < b) {}</script>keep<i>me</i></body></html>")
    assert seen == [("p", "a", True), ("p", None, False)]


def test_document_handlers_see_doctype_comments_and_the_end() -> None:
    got = {}

    class Document:
        def doctype(self, doctype):
            got["doctype"] = doctype.name

        def comments(self, comment):
            comment.text = " changed "

        def end(self, end):
            end.append("<!-- end -->", html=True)

    _, text = rewrite(HTMLRewriter.new().onDocument(Document()))
    assert got == {"doctype": "html"}
    assert "<!-- changed -->" in text and text.endswith("</html><!-- end -->")


@pytest.mark.parametrize("selector, matches", [
    ("p#a", ["p#a"]),
    ("p:not(#a)", ["p"]),
    ("p:nth-child(odd)", ["p#a"]),  # the comment before it is no child
    ("body p:first-of-type", ["p#a"]),
    ("[id]", ["p#a"]),
    ('[class~="page"] > p', ["p#a", "p"]),
    ('[class|="main"]', []),  # "main page" is neither "main" nor "main-..."
    ("*:first-child", ["html", "head", "title", "p#a", "b", "li", "span", "i"]),
    ("ul > li:nth-child(2n)", ["li"]),
])
def test_selectors(selector: str, matches: list[str]) -> None:
    seen: list[str] = []

    def label(el):
        seen.append(el.tagName + (f"#{el.getAttribute('id')}" if el.hasAttribute("id") else ""))

    rewrite(HTMLRewriter.new().on(selector, {"element": label}))
    assert seen == matches


@pytest.mark.parametrize("selector, fragment", [
    ("a,b", "lists, '+' and '~' are not supported"), ("p:hover", "unsupported pseudo-class :hover"),
    ("[", "invalid selector"), ("", "non-empty string"), ("li:nth-child(x)", "unsupported :nth"),
])
def test_unsupported_selectors_are_refused_by_name(selector: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as caught:
        HTMLRewriter.new().on(selector, Remove())
    assert fragment in str(caught.value)
    assert isinstance(caught.value, TypeError)  # what JavaScript throws


OPENGRAPH = '''
from js import HTMLRewriter
from pyodide.ffi import create_proxy
from workers import Response, WorkerEntrypoint, fetch


class Inject:
    def element(self, head):
        head.prepend('<meta property="og:title" content="Corral" />', html=True)


class Shout:
    def text(self, chunk):
        chunk.replace(chunk.text.upper())


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/fetched"):
            # A streamed body from a real upstream: its text rewritten as it comes.
            upstream = await fetch(request.headers.get("x-target") + "/echo/rewritten")
            return HTMLRewriter.new().onDocument(create_proxy(Shout())).transform(upstream.js_object)

        async def page():
            for part in ("<html><head><title>x</title>", "</head><body><p>hi</p></body></html>"):
                yield part.encode()

        original = Response(page(), headers={"content-type": "text/html"})
        return HTMLRewriter.new().on("head", create_proxy(Inject())).transform(original)
'''


def test_a_worker_rewrites_what_it_serves_and_what_it_fetches(corral, upstream):  # noqa: F811
    deploy(corral, "opengraph", OPENGRAPH)
    resp = corral.request("/", host="opengraph.localhost")
    assert resp.status == 200, (resp, corral.log())
    assert resp.text == ('<html><head><meta property="og:title" content="Corral" /><title>x</title>'
                         "</head><body><p>hi</p></body></html>")
    fetched = corral.request("/fetched", host="opengraph.localhost",
                             headers={"x-target": upstream.url("").rstrip("/")})
    assert fetched.status == 200, (fetched, corral.log())
    assert '"PATH": "/ECHO/REWRITTEN"' in fetched.text, fetched.text
