"""``HTMLRewriter``: Cloudflare's streaming HTML rewriter, for Python workers.

``HTMLRewriter.new().on(selector, handler).onDocument(handler).transform(response)``
returns a response whose body is the original one, rewritten as it streams:
handlers see each element a CSS selector matches (``element(el)``), the text
and comments inside it (``text(chunk)``, ``comments(comment)``) and, for the
whole document, its doctype, text, comments and end. Cloudflare's
implementation is lol-html, a Rust library inside workerd; there is no such
wheel, so this one tokenizes with the standard library's
:class:`html.parser.HTMLParser` (fed chunk by chunk as the body arrives) and
keeps lol-html's API and its rules:

* unchanged markup is written back byte for byte (its raw source, not a
  re-serialisation); a start tag whose name or attributes changed is written
  anew, attribute values quoted and escaped;
* inserted content is text (escaped) unless ``{"html": True}`` / ``html=True``;
* selectors: ``*``, ``tag``, ``#id``, ``.class``, ``[attr]``,
  ``[attr=v]`` (and ``~=``, ``|=``, ``^=``, ``$=``, ``*=``, with `` i``),
  ``:first-child``, ``:nth-child(an+b)``, ``:first-of-type``,
  ``:nth-of-type(an+b)``, ``:not(...)``, descendant and ``>`` combinators;
  anything else is refused when ``on()`` is called, naming the selector;
* handlers may be objects with methods or dicts of functions, and may be
  ``async``.

What differs: the body is decoded with the charset of its Content-Type
(UTF-8 by default) and written back in it; text reaches a ``text`` handler
as whole text nodes (``lastInTextNode`` is always true), not lol-html's
arbitrary chunks.
"""

from __future__ import annotations

import codecs
import html
import inspect
import re
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from typing import Any

from . import workers

VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                  "param", "source", "track", "wbr"})
XHTML = "http://www.w3.org/1999/xhtml"
_CLOSES_P = frozenset({"address", "article", "aside", "blockquote", "details", "div", "dl",
                       "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
                       "h5", "h6", "header", "hgroup", "hr", "main", "menu", "nav", "ol", "p", "pre",
                       "section", "table", "ul"})
#: HTML's optional end tags: a start tag of the key's name ends an open
#: element of these names (``<li>1<li>2`` is two items, not one inside the other).
IMPLIED_END = {
    **{tag: frozenset({"p"}) for tag in _CLOSES_P},
    "li": frozenset({"li", "p"}),
    "dt": frozenset({"dt", "dd", "p"}),
    "dd": frozenset({"dt", "dd", "p"}),
    "option": frozenset({"option"}),
    "optgroup": frozenset({"option", "optgroup"}),
    "tr": frozenset({"tr", "td", "th"}),
    "td": frozenset({"td", "th"}),
    "th": frozenset({"td", "th"}),
    "thead": frozenset({"thead", "tbody", "tfoot", "tr", "td", "th"}),
    "tbody": frozenset({"thead", "tbody", "tfoot", "tr", "td", "th"}),
    "tfoot": frozenset({"thead", "tbody", "tfoot", "tr", "td", "th"}),
}


# ---------------------------------------------------------------------------
# selectors
# ---------------------------------------------------------------------------


class SelectorError(TypeError):
    """A selector this rewriter (like lol-html) does not support, or not CSS."""


class _Compound:
    """One compound selector: a tag (or ``*``) and its conditions."""

    __slots__ = ("tag", "conditions")

    def __init__(self) -> None:
        self.tag = "*"
        self.conditions: list[Callable[[_Node], bool]] = []

    def matches(self, node: _Node) -> bool:
        return (self.tag == "*" or node.tag == self.tag) and all(c(node) for c in self.conditions)


_NTH = re.compile(r"^\s*(?:(?P<odd>odd)|(?P<even>even)|(?P<a>[+-]?\d*)n\s*(?:(?P<sign>[+-])\s*(?P<b>\d+))?"
                  r"|(?P<only>[+-]?\d+))\s*$")


def _nth(expression: str, selector: str) -> Callable[[int], bool]:
    m = _NTH.match(expression)
    if m is None:
        raise SelectorError(f"unsupported :nth expression {expression!r} in selector {selector!r}")
    if m["odd"]:
        a, b = 2, 1
    elif m["even"]:
        a, b = 2, 0
    elif m["only"] is not None:
        a, b = 0, int(m["only"])
    else:
        a = int(m["a"] + "1") if m["a"] in ("", "+", "-") else int(m["a"])
        b = int(m["b"] or 0) * (-1 if m["sign"] == "-" else 1)

    def test(index: int) -> bool:  # index counts from 1
        if a == 0:
            return index == b
        return (index - b) % a == 0 and (index - b) // a >= 0

    return test


_ATTR = re.compile(r"""\[\s*([^\s~|^$*=\]]+)\s*(?:([~|^$*]?=)\s*(?:"([^"]*)"|'([^']*)'|([^\s\]]+))\s*(i)?\s*)?\]""")
_NAME = re.compile(r"-?[_a-zA-Z0-9\u00a0-\uffff][-_a-zA-Z0-9\u00a0-\uffff]*")


def _attribute_test(name: str, op: str | None, value: str, fold: bool) -> Callable[[_Node], bool]:
    name = name.lower()

    def test(node: _Node) -> bool:
        got = node.attrs.get(name)
        if got is None:
            return False
        if op is None:
            return True
        have, want = (got.lower(), value.lower()) if fold else (got, value)
        if op == "=":
            return have == want
        if op == "~=":
            return want in have.split()
        if op == "|=":
            return have == want or have.startswith(want + "-")
        if op == "^=":
            return bool(want) and have.startswith(want)
        if op == "$=":
            return bool(want) and have.endswith(want)
        return bool(want) and want in have  # *=

    return test


_PSEUDO = re.compile(r":([a-z-]+)(?:\(([^()]*(?:\([^()]*\))?[^()]*)\))?")


def _compound(text: str, pos: int, selector: str) -> tuple[_Compound, int]:
    comp = _Compound()
    m = _NAME.match(text, pos)
    named = True
    if text.startswith("*", pos):
        pos += 1
    elif m is not None:
        comp.tag = m.group().lower()
        pos = m.end()
    else:
        named = False
    while pos < len(text) and text[pos] not in " >\t\n+~,)":
        ch = text[pos]
        if ch == "#":
            m = _NAME.match(text, pos + 1)
            if m is None:
                break
            ident = m.group()
            comp.conditions.append(lambda n, v=ident: n.attrs.get("id") == v)
            pos = m.end()
        elif ch == ".":
            m = _NAME.match(text, pos + 1)
            if m is None:
                break
            cls = m.group()
            comp.conditions.append(lambda n, v=cls: v in (n.attrs.get("class") or "").split())
            pos = m.end()
        elif ch == "[":
            m = _ATTR.match(text, pos)
            if m is None:
                break
            value = next((g for g in (m.group(3), m.group(4), m.group(5)) if g is not None), "")
            comp.conditions.append(_attribute_test(m.group(1), m.group(2), value, bool(m.group(6))))
            pos = m.end()
        elif ch == ":":
            m = _PSEUDO.match(text, pos)
            if m is None:
                break
            pseudo, arg = m.group(1), m.group(2)
            pos = m.end()
            if pseudo == "first-child" and arg is None:
                comp.conditions.append(lambda n: n.index == 1)
            elif pseudo == "first-of-type" and arg is None:
                comp.conditions.append(lambda n: n.type_index == 1)
            elif pseudo == "nth-child" and arg is not None:
                test = _nth(arg, selector)
                comp.conditions.append(lambda n, t=test: t(n.index))
            elif pseudo == "nth-of-type" and arg is not None:
                test = _nth(arg, selector)
                comp.conditions.append(lambda n, t=test: t(n.type_index))
            elif pseudo == "not" and arg is not None:
                inner, end = _compound(arg.strip(), 0, selector)
                if end != len(arg.strip()):
                    raise SelectorError(f":not() takes one compound selector, in {selector!r}")
                comp.conditions.append(lambda n, s=inner: not s.matches(n))
            else:
                raise SelectorError(f"unsupported pseudo-class :{pseudo} in selector {selector!r}")
        else:
            break
    if not named and not comp.conditions:
        raise SelectorError(f"invalid selector {selector!r} (at {text[pos:pos + 20]!r})")
    return comp, pos


class Selector:
    """A parsed selector: compound selectors joined by descendant (" ") or child (">")."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise SelectorError(f"a selector is a non-empty string, not {text!r}")
        self.text = text
        self.parts: list[tuple[str, _Compound]] = []  # (combinator before it, compound)
        pos, combinator, source = 0, "", text.strip()
        while pos < len(source):
            comp, pos = _compound(source, pos, text)
            self.parts.append((combinator, comp))
            gap = re.compile(r"\s*(>)?\s*").match(source, pos)
            assert gap is not None
            if gap.end() == pos and pos < len(source):
                raise SelectorError(f"unsupported selector {text!r} (at {source[pos:pos + 20]!r}): "
                                    "lists, '+' and '~' are not supported")
            combinator = ">" if gap.group(1) else " "
            pos = gap.end()
        if not self.parts:
            raise SelectorError(f"invalid selector {text!r}")

    def matches(self, stack: list[_Node]) -> bool:
        """Whether the last node of ``stack`` (its ancestors before it) matches."""
        return self._match(len(self.parts) - 1, stack, len(stack) - 1)

    def _match(self, part: int, stack: list[_Node], at: int) -> bool:
        combinator, comp = self.parts[part]
        if not comp.matches(stack[at]):
            return False
        if part == 0:
            return True
        if combinator == ">":
            return at > 0 and self._match(part - 1, stack, at - 1)
        return any(self._match(part - 1, stack, i) for i in range(at - 1, -1, -1))


# ---------------------------------------------------------------------------
# what handlers receive
# ---------------------------------------------------------------------------


def _content(content: Any, options: Any, html_: bool | None) -> str:
    if html_ is None:
        html_ = bool(options.get("html")) if isinstance(options, dict) else False
    text = content if isinstance(content, str) else str(content)
    return text if html_ else html.escape(text, quote=False)


class _Mutable:
    """What elements, text chunks, comments and end tags share: content around them."""

    def __init__(self) -> None:
        self._before: list[str] = []
        self._after: list[str] = []
        self._replacement: str | None = None
        self.removed = False

    def before(self, content: Any, options: Any = None, *, html: bool | None = None) -> Any:
        self._before.append(_content(content, options, html))
        return self

    def after(self, content: Any, options: Any = None, *, html: bool | None = None) -> Any:
        self._after.append(_content(content, options, html))
        return self

    def replace(self, content: Any, options: Any = None, *, html: bool | None = None) -> Any:
        self._replacement = _content(content, options, html)
        self.removed = True
        return self

    def remove(self) -> Any:
        self._replacement = ""
        self.removed = True
        return self

    def _wrap(self, own: str) -> str:
        middle = own if self._replacement is None else self._replacement
        return "".join(self._before) + middle + "".join(self._after)


class Element(_Mutable):
    """A start tag a selector matched, and the element it opens."""

    def __init__(self, node: _Node) -> None:
        super().__init__()
        self._node = node
        self._prepend: list[str] = []
        self._append: list[str] = []
        self._inner: str | None = None
        self._keep_content = False
        self._end_handlers: list[Any] = []
        self._changed = False

    namespaceURI = XHTML  # noqa: N815 - Workers API name

    @property
    def tagName(self) -> str:  # noqa: N802 - Workers API name
        return self._node.tag

    @tagName.setter
    def tagName(self, name: str) -> None:  # noqa: N802
        self._node.tag = str(name).lower()
        self._changed = True


    @property
    def attributes(self) -> list[list[str]]:
        return [[k, v] for k, v in self._node.attrs.items()]

    @property
    def selfClosing(self) -> bool:  # noqa: N802 - Workers API name
        return self._node.self_closing

    @property
    def canHaveContent(self) -> bool:  # noqa: N802 - Workers API name
        return self._node.tag not in VOID and not self._node.self_closing

    def getAttribute(self, name: str) -> str | None:  # noqa: N802 - Workers API name
        return self._node.attrs.get(name.lower())

    def hasAttribute(self, name: str) -> bool:  # noqa: N802 - Workers API name
        return name.lower() in self._node.attrs

    def setAttribute(self, name: str, value: Any) -> Element:  # noqa: N802 - Workers API name
        self._node.attrs[name.lower()] = str(value)
        self._changed = True
        return self

    def removeAttribute(self, name: str) -> Element:  # noqa: N802 - Workers API name
        if self._node.attrs.pop(name.lower(), None) is not None:
            self._changed = True
        return self

    def prepend(self, content: Any, options: Any = None, *, html: bool | None = None) -> Element:
        self._prepend.insert(0, _content(content, options, html))
        return self

    def append(self, content: Any, options: Any = None, *, html: bool | None = None) -> Element:
        self._append.append(_content(content, options, html))
        return self

    def setInnerContent(self, content: Any, options: Any = None, *,  # noqa: N802 - Workers API name
                        html: bool | None = None) -> Element:
        self._inner = _content(content, options, html)
        return self

    def removeAndKeepContent(self) -> Element:  # noqa: N802 - Workers API name
        self._keep_content = True
        return self

    def onEndTag(self, handler: Any) -> None:  # noqa: N802 - Workers API name
        self._end_handlers.append(handler)



class EndTag(_Mutable):
    """An element's end tag, as ``onEndTag`` handlers get it."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class TextChunk(_Mutable):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.lastInTextNode = True  # noqa: N815 - Workers API name


class Comment(_Mutable):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class Doctype:
    def __init__(self, decl: str) -> None:
        m = re.match(r'(?is)doctype\s+(\S+)(?:\s+public\s+"([^"]*)")?(?:\s+"([^"]*)")?', decl)
        self.name = m.group(1).lower() if m else None
        self.publicId = m.group(2) if m else None  # noqa: N815 - Workers API name
        self.systemId = m.group(3) if m else None  # noqa: N815 - Workers API name


class DocumentEnd:
    def __init__(self) -> None:
        self._append: list[str] = []

    def append(self, content: Any, options: Any = None, *, html: bool | None = None) -> DocumentEnd:
        self._append.append(_content(content, options, html))
        return self


# ---------------------------------------------------------------------------
# the rewriter
# ---------------------------------------------------------------------------


class _Node:
    """An open element: what selectors match against, and what it owes its end tag."""

    __slots__ = ("tag", "source_tag", "attrs", "self_closing", "index", "type_index", "children",
                 "types", "elements", "suppress", "drop_tags")

    def __init__(self, tag: str, attrs: dict[str, str], self_closing: bool, index: int,
                 type_index: int) -> None:
        self.tag = tag
        #: The name its end tag has in the source (``tagName`` may rename it).
        self.source_tag = tag
        self.attrs = attrs
        self.self_closing = self_closing
        self.index = index
        self.type_index = type_index
        self.children = 0
        self.types: dict[str, int] = {}
        #: What the handlers of the selectors that matched it got.
        self.elements: list[Element] = []
        #: Its content is not written (removed, replaced or given new inner content).
        self.suppress = False
        #: Its start and end tags are not written (removeAndKeepContent).
        self.drop_tags = False


def _handler(handlers: Any, name: str) -> Callable[..., Any] | None:
    if isinstance(handlers, dict):
        return handlers.get(name)
    return getattr(handlers, name, None)


class HTMLRewriter:
    """``HTMLRewriter.new().on(selector, handlers).onDocument(handlers).transform(response)``."""

    def __init__(self) -> None:
        self._elements: list[tuple[Selector, Any]] = []
        self._documents: list[Any] = []

    @classmethod
    def new(cls) -> HTMLRewriter:
        return cls()

    def on(self, selector: str, handlers: Any) -> HTMLRewriter:
        self._elements.append((Selector(selector), handlers))
        return self

    def onDocument(self, handlers: Any) -> HTMLRewriter:  # noqa: N802 - Workers API name
        self._documents.append(handlers)
        return self


    def transform(self, response: Any) -> workers.Response:
        """A new response: ``response``'s status and headers (less Content-Length,
        which the rewriting changes), its body rewritten as it streams."""
        if not isinstance(response, workers.Response):
            raise TypeError(f"HTMLRewriter.transform() takes a Response, not {type(response).__name__}")
        headers = workers.Headers(response.headers)
        headers.delete("content-length")
        charset = _charset(headers.get("content-type") or "")
        source = response.body
        body = None if source is None else _Rewrite(self, charset).run(source)
        out = workers.Response(body, status=response.status, status_text=response.status_text,
                               headers=headers)
        out.url, out.redirected = response.url, response.redirected
        return out


def _charset(content_type: str) -> str:
    m = re.search(r"charset=\"?([\w.:-]+)", content_type, re.I)
    if m:
        try:
            return codecs.lookup(m.group(1)).name
        except LookupError:
            pass
    return "utf-8"


class _Rewrite(HTMLParser):
    """One transform: the tokenizer's callbacks queue events; :meth:`run`
    applies the handlers (which may be async) and writes the output."""

    def __init__(self, rewriter: HTMLRewriter, charset: str) -> None:
        super().__init__(convert_charrefs=False)
        self.rewriter = rewriter
        self.charset = charset
        self.stack: list[_Node] = [_Node("#document", {}, False, 1, 1)]
        self.events: list[tuple[str, Any]] = []
        self.out: list[str] = []
        self.text: list[str] = []

    # -- tokenizer callbacks: queue ------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._flush_text()
        self.events.append(("start", (tag, attrs, self.get_starttag_text() or "", False)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._flush_text()
        self.events.append(("start", (tag, attrs, self.get_starttag_text() or "", True)))

    def handle_endtag(self, tag: str) -> None:
        self._flush_text()
        self.events.append(("end", tag))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_entityref(self, name: str) -> None:
        self.text.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.text.append(f"&#{name};")

    def handle_comment(self, data: str) -> None:
        self._flush_text()
        self.events.append(("comment", data))

    def handle_decl(self, decl: str) -> None:
        self._flush_text()
        self.events.append(("doctype" if decl.lower().startswith("doctype") else "raw", f"<!{decl}>"))

    def handle_pi(self, data: str) -> None:
        self._flush_text()
        self.events.append(("raw", f"<?{data}>"))

    def unknown_decl(self, data: str) -> None:
        self._flush_text()
        self.events.append(("raw", f"<![{data}]>"))

    def _flush_text(self) -> None:
        if self.text:
            self.events.append(("text", "".join(self.text)))
            self.text = []

    # -- applying handlers ---------------------------------------------------------------
    async def run(self, source: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        decoder = codecs.getincrementaldecoder(self.charset)(errors="replace")
        async for chunk in source:
            data = chunk.encode(self.charset) if isinstance(chunk, str) else bytes(chunk)
            self.feed(decoder.decode(data))
            out = await self._drain()
            if out:
                yield out
        self.feed(decoder.decode(b"", final=True))
        self.close()
        self._flush_text()
        out = await self._drain(final=True)
        if out:
            yield out

    async def _drain(self, final: bool = False) -> bytes:
        events, self.events = self.events, []
        apply = {"start": self._on_start, "end": self._on_end, "text": self._on_text,
                 "comment": self._on_comment, "doctype": self._on_doctype, "raw": self._on_raw}
        for kind, value in events:
            await apply[kind](value)
        if final:
            while len(self.stack) > 1:
                await self._close_top()
            end = DocumentEnd()
            for handlers in self.rewriter._documents:
                await _call(_handler(handlers, "end"), end)
            self.out.extend(end._append)
        text, self.out = "".join(self.out), []
        return text.encode(self.charset, errors="xmlcharrefreplace")

    def _write(self, text: str) -> None:
        if text and not self._suppressed:
            self.out.append(text)

    @property
    def _suppressed(self) -> bool:
        """Inside content that is not written (removed, replaced, or new inner content)."""
        return any(node.suppress for node in self.stack)

    async def _on_start(self, value: tuple[str, list[tuple[str, str | None]], str, bool]) -> None:
        tag, attrs, raw, self_closing = value
        implied = IMPLIED_END.get(tag)
        while implied and len(self.stack) > 1 and self.stack[-1].source_tag in implied:
            await self._close_top()
        parent = self.stack[-1]
        parent.children += 1
        parent.types[tag] = parent.types.get(tag, 0) + 1
        node = _Node(tag, {k: v or "" for k, v in attrs}, self_closing, parent.children,
                     parent.types[tag])
        self.stack.append(node)
        if not self._suppressed:
            for selector, handlers in self.rewriter._elements:
                handler = _handler(handlers, "element")
                if handler is not None and selector.matches(self.stack):
                    element = Element(node)
                    node.elements.append(element)
                    await _call(handler, element)
        self._write_start(node, raw)
        if self_closing or tag in VOID:
            await self._close_top()

    def _write_start(self, node: _Node, raw: str) -> None:
        elements = node.elements
        changed = any(e._changed for e in elements)
        start = _start_tag(node) if changed else raw
        before = "".join("".join(e._before) for e in elements)
        replaced = next((e for e in elements if e.removed), None)
        if replaced is not None:
            self._write(before + (replaced._replacement or ""))
            node.suppress = True
            node.drop_tags = True
            return
        if any(e._keep_content for e in elements):
            node.drop_tags = True
            start = ""
        prepend = "".join("".join(e._prepend) for e in elements)
        self._write(before + start + prepend)
        inner = next((e._inner for e in reversed(elements) if e._inner is not None), None)
        if inner is not None:
            self._write(inner)
            node.suppress = True

    async def _on_end(self, tag: str) -> None:
        """Close the innermost open element of that name (and, implicitly, any
        left open inside it); a stray end tag is written as it came."""
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].source_tag == tag:
                while len(self.stack) - 1 > depth:
                    await self._close_top()
                await self._close_top(explicit=True)
                return
        self._write(f"</{tag}>")

    async def _close_top(self, explicit: bool = False) -> None:
        """The top element ends: its end tag if the source had one (``explicit``)."""
        node = self.stack[-1]
        elements = node.elements
        end = EndTag(node.tag)
        for element in elements:
            for handler in element._end_handlers:
                await _call(handler, end)
        self.stack.pop()
        after = "".join("".join(e._after) for e in elements)
        if any(e.removed for e in elements):
            self._write(after)
            return
        append = "".join("".join(e._append) for e in elements)
        closing = f"</{end.name}>" if explicit and not node.drop_tags else ""
        self._write(append + end._wrap(closing) + after)

    async def _on_text(self, text: str) -> None:
        chunk = TextChunk(text)
        if await self._content(chunk, "text"):
            self._write(chunk._wrap(chunk.text))

    async def _on_comment(self, text: str) -> None:
        comment = Comment(text)
        if await self._content(comment, "comments"):
            self._write(comment._wrap(f"<!--{comment.text}-->"))

    async def _content(self, item: _Mutable, kind: str) -> bool:
        """Give a text chunk or comment to the ``kind`` handlers of the selectors
        that match an element it is inside, then to the document's; False when
        it is inside content that is not written."""
        if self._suppressed:
            return False
        for selector, handlers in self.rewriter._elements:
            handler = _handler(handlers, kind)
            if handler is not None and any(selector.matches(self.stack[:i + 1])
                                           for i in range(1, len(self.stack))):
                await _call(handler, item)
        for handlers in self.rewriter._documents:
            await _call(_handler(handlers, kind), item)
        return True

    async def _on_doctype(self, raw: str) -> None:
        doctype = Doctype(raw[2:-1])
        for handlers in self.rewriter._documents:
            await _call(_handler(handlers, "doctype"), doctype)
        self._write(raw)

    async def _on_raw(self, raw: str) -> None:
        self._write(raw)


def _start_tag(node: _Node) -> str:
    """A start tag written anew (its name or attributes changed)."""
    attrs = "".join(f' {k}="{html.escape(v, quote=True)}"' for k, v in node.attrs.items())
    return f"<{node.tag}{attrs}{' /' if node.self_closing else ''}>"


async def _call(handler: Callable[..., Any] | None, *args: Any) -> None:
    if handler is None:
        return
    result = handler(*args)
    if inspect.isawaitable(result):
        await result
