"""Popular packages real tenants use, imported and put to work in the jail.

SPEC section 3: any wheel for the host's Python may be imported; the jail,
not the import system, is the boundary. Each tenant below is deployed as
wrangler uploads it (``text/x-python-requirement`` parts, through
``tests.test_django_cf.deploy``), so the supervisor resolves the set with the
real pip and the set's zygote pre-imports it; each route does one package's
basic job and answers what came out, or the traceback if it broke. Outbound
calls go to a local upstream (``tests/upstream.py``) and can only have gone
through the brokered fetch: a child has no sockets.

Two package sets keep the install small: one of the common web-service
libraries (one tenant, one route per package), and numpy + pandas.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Corral
from tests.test_django_cf import deploy
from tests.upstream import Upstream

WEB_SET = ["pydantic", "pyyaml", "orjson", "python-dateutil", "pytz", "tzdata", "jinja2",
           "beautifulsoup4", "lxml", "pillow", "cryptography", "pyjwt", "regex", "markdown",
           "certifi", "httpx", "requests", "openai", "anthropic"]
DATA_SET = ["numpy", "pandas"]

TEMPLATE = "<h1>Hello {{ name|upper }}</h1>{% for i in items %}<li>{{ i }}</li>{% endfor %}"

WEB = '''
import json
import os
import traceback
from urllib.parse import urlsplit

from workers import Response, WorkerEntrypoint


def pydantic_case(env):
    import pydantic

    class Order(pydantic.BaseModel):
        id: int
        tags: list[str] = []
        price: float

    order = Order.model_validate({"id": "7", "price": "2.5", "tags": ["a"]})
    try:
        Order.model_validate({"id": "x", "price": 1})
        bad = None
    except pydantic.ValidationError as e:
        bad = e.errors()[0]["loc"]
    return {"dump": order.model_dump(), "json": order.model_dump_json(), "bad": list(bad),
            "version": pydantic.VERSION}


def yaml_case(env):
    import yaml

    data = yaml.load("a: 1\\nb: [x, y]\\n", Loader=yaml.CSafeLoader)
    return {"data": data, "dumped": yaml.dump(data, Dumper=yaml.CSafeDumper),
            "libyaml": yaml.__with_libyaml__}


def orjson_case(env):
    import datetime

    import orjson

    raw = orjson.dumps({"when": datetime.datetime(2024, 1, 2, 3, 4, 5), "n": [1, 2]})
    return {"raw": raw.decode(), "back": orjson.loads(raw)}


def time_case(env):
    import zoneinfo

    import pytz
    from dateutil import parser, relativedelta

    when = parser.isoparse("2024-07-01T12:00:00+00:00")
    ny = when.astimezone(zoneinfo.ZoneInfo("America/New_York"))
    tokyo = when.astimezone(pytz.timezone("Asia/Tokyo"))
    later = when + relativedelta.relativedelta(months=+1, day=31)
    return {"ny": ny.isoformat(), "tokyo": tokyo.isoformat(), "later": later.date().isoformat(),
            "parsed": parser.parse("March 5 2021 4pm").isoformat()}


def jinja_case(env):
    import jinja2

    here = os.path.dirname(os.path.abspath(__file__))
    jenv = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(here, "templates")),
                              autoescape=True)
    return {"html": jenv.get_template("hello.html").render(name="tea", items=[1, "<b>"])}


def bs4_case(env):
    from bs4 import BeautifulSoup

    soup = BeautifulSoup("<ul><li class=x>one</li><li>two</li></ul><a href='/h'>h</a>",
                         "html.parser")
    return {"items": [li.get_text() for li in soup.find_all("li")], "x": soup.select_one(".x").text,
            "href": soup.a["href"]}


def lxml_case(env):
    from lxml import etree, html

    import os

    root = etree.fromstring(b"<r><i n='1'>a</i><i n='2'>b</i></r>")
    doc = html.fromstring("<div><p>one</p><p>two</p></div>")
    # By path, as lxml is mostly used: libxml2 dup()s the file's descriptor.
    bundled = html.parse(os.path.join(os.path.dirname(__file__), "templates", "hello.html"))
    return {"xpath": root.xpath("//i[@n='2']/text()"), "p": [p.text for p in doc.iter("p")],
            "libxml": list(etree.LIBXML_VERSION), "h1": bundled.findtext(".//h1")}


def pillow_case(env):
    import io

    from PIL import Image

    src = io.BytesIO()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(src, "PNG")
    image = Image.open(io.BytesIO(src.getvalue())).resize((10, 5))
    out = io.BytesIO()
    image.save(out, "PNG")
    back = Image.open(io.BytesIO(out.getvalue()))
    return {"size": list(back.size), "format": back.format, "pixel": list(back.getpixel((0, 0))),
            "png": out.getvalue()[:8].hex()}


def crypto_case(env):
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
    from cryptography.hazmat.primitives import hashes

    f = Fernet(Fernet.generate_key())
    plain = f.decrypt(f.encrypt(b"secret")).decode()
    ed = ed25519.Ed25519PrivateKey.generate()
    sig = ed.sign(b"msg")
    ed.public_key().verify(sig, b"msg")
    rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsig = rk.sign(b"msg", padding.PKCS1v15(), hashes.SHA256())
    rk.public_key().verify(rsig, b"msg", padding.PKCS1v15(), hashes.SHA256())
    return {"fernet": plain, "ed25519": len(sig), "rsa": len(rsig)}


def jwt_case(env):
    import jwt

    token = jwt.encode({"sub": "u1", "n": 2}, "k3y", algorithm="HS256")
    try:
        jwt.decode(token, "wrong", algorithms=["HS256"])
        forged = "accepted"
    except jwt.InvalidSignatureError:
        forged = "rejected"
    return {"claims": jwt.decode(token, "k3y", algorithms=["HS256"]), "forged": forged}


def regex_case(env):
    import regex

    return {"words": regex.findall(r"\\p{L}+", "héllo wörld 42"),
            "fuzzy": bool(regex.fullmatch(r"(?:colour){e<=1}", "color"))}


def markdown_case(env):
    import markdown

    return {"html": markdown.markdown("# T\\n\\n*em* and `code`\\n\\n| a |\\n|---|\\n| 1 |",
                                      extensions=["tables"])}


def certifi_case(env):
    import ssl

    import certifi

    path = certifi.where()
    with open(path) as f:
        text = f.read()
    ctx = ssl.create_default_context(cafile=path)
    return {"exists": os.path.isfile(path), "certs": text.count("BEGIN CERTIFICATE"),
            "loaded": ctx.cert_store_stats()["x509_ca"]}


def requests_case(env):
    import requests

    r = requests.post(env.UPSTREAM + "/echo/requests", json={"a": 1}, headers={"x-t": "1"})
    return {"status": r.status_code, "path": r.json()["path"], "body": r.json()["body"]}


def httpx_case(env):
    import httpx

    with httpx.Client() as client:
        r = client.get(env.UPSTREAM + "/echo/httpx-sync", params={"q": "1"})
    # httpx's own socket transport, given explicitly (as for retries=)
    with httpx.Client(transport=httpx.HTTPTransport(retries=1)) as client:
        given = client.get(env.UPSTREAM + "/echo/httpx-given")
    return {"status": r.status_code, "path": r.json()["path"], "given": given.json()["path"]}


async def httpx_async_case(env):
    import httpx

    async with httpx.AsyncClient() as client:
        r = await client.post(env.UPSTREAM + "/echo/httpx-async", content=b"xyz")
    return {"status": r.status_code, "path": r.json()["path"], "body": r.json()["body"]}


def openai_case(env):
    import openai

    client = openai.OpenAI(api_key="sk-test", base_url=env.UPSTREAM + "/echo/v1", max_retries=0)
    raw = client.models.with_raw_response.list()
    return {"status": raw.http_response.status_code, "path": raw.http_response.json()["path"]}


async def openai_async_case(env):
    import openai

    client = openai.AsyncOpenAI(api_key="sk-test", base_url=env.UPSTREAM + "/echo/av1",
                                max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}])
    return {"status": raw.http_response.status_code, "path": raw.http_response.json()["path"]}


def anthropic_case(env):
    import anthropic

    client = anthropic.Anthropic(api_key="k-test", base_url=env.UPSTREAM + "/echo/anth",
                                 max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    return {"status": raw.http_response.status_code, "path": raw.http_response.json()["path"]}


def devnull_case(env):
    import contextlib

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        print("quiet")
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        wrote = os.write(fd, b"quiet")
    finally:
        os.close(fd)
    with open(os.devnull, "rb") as f:
        read = f.read()
    return {"wrote": wrote, "read": read.decode()}


async def run(case, env):
    out = case(env)
    if hasattr(out, "__await__"):
        out = await out
    return out


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = urlsplit(request.url).path.strip("/")
        try:
            return Response.json({"ok": True, "value": await run(globals()[name + "_case"], self.env)})
        except BaseException as exc:  # noqa: BLE001 - the test reports what broke
            return Response.json({"ok": False, "error": traceback.format_exc()})
'''

DATA = '''
import traceback

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        try:
            import numpy as np
            import pandas as pd

            df = pd.DataFrame({"k": ["a", "b", "a", "c"], "v": [1, 2, 3, 4]})
            sums = df.groupby("k")["v"].sum().to_dict()
            arr = np.arange(12).reshape(3, 4)
            return Response.json({"ok": True, "sums": {k: int(v) for k, v in sums.items()},
                                  "dot": int((arr @ arr.T).trace()),
                                  "mean": float(df["v"].mean()),
                                  "csv": df.head(2).to_csv(index=False)})
        except BaseException:  # noqa: BLE001
            return Response.json({"ok": False, "error": traceback.format_exc()})
'''


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Corral]:
    server = Corral(tmp_path_factory.mktemp("popular")).start()
    try:
        server.deploy_dispatcher()
        deploy(server, "web", {"worker.py": WEB, "templates/hello.html": TEMPLATE}, WEB_SET,
               [{"type": "plain_text", "name": "UPSTREAM", "text": upstream.url("").rstrip("/")}])
        deploy(server, "data", {"worker.py": DATA}, DATA_SET)
        yield server
    finally:
        server.stop()


def internal_errors(c: Corral) -> list[dict[str, Any]]:
    """The supervisor's own error lines: a package's trouble must stay the tenant's."""
    return [e for e in c.log_events() if e.get("level") in ("error", "critical")]


def run(c: Corral, case: str) -> Any:
    r = c.request(f"/{case}", host="web.localhost", timeout=120)
    assert r.status == 200, f"{r!r} {r.text}\n{c.log()}"
    out = r.json()
    assert out["ok"], out["error"]
    assert internal_errors(c) == [], c.log()
    return out["value"]


def test_pydantic_v2_validates_and_dumps(c: Corral) -> None:
    out = run(c, "pydantic")
    assert out["dump"] == {"id": 7, "tags": ["a"], "price": 2.5}
    assert out["json"] == '{"id":7,"tags":["a"],"price":2.5}'
    assert out["bad"] == ["id"] and out["version"].startswith("2.")


def test_pyyaml_with_the_c_loader(c: Corral) -> None:
    out = run(c, "yaml")
    assert out == {"data": {"a": 1, "b": ["x", "y"]}, "dumped": "a: 1\nb:\n- x\n- y\n",
                   "libyaml": True}


def test_orjson(c: Corral) -> None:
    out = run(c, "orjson")
    assert out["raw"] == '{"when":"2024-01-02T03:04:05","n":[1,2]}'
    assert out["back"] == {"when": "2024-01-02T03:04:05", "n": [1, 2]}


def test_dateutil_pytz_and_zoneinfo_from_tzdata(c: Corral) -> None:
    out = run(c, "time")
    assert out == {"ny": "2024-07-01T08:00:00-04:00", "tokyo": "2024-07-01T21:00:00+09:00",
                   "later": "2024-08-31", "parsed": "2021-03-05T16:00:00"}


def test_jinja2_renders_a_bundled_template(c: Corral) -> None:
    assert run(c, "jinja") == {"html": "<h1>Hello TEA</h1><li>1</li><li>&lt;b&gt;</li>"}


def test_beautifulsoup4_with_html_parser(c: Corral) -> None:
    assert run(c, "bs4") == {"items": ["one", "two"], "x": "one", "href": "/h"}


def test_lxml_native(c: Corral) -> None:
    out = run(c, "lxml")
    assert out["xpath"] == ["b"] and out["p"] == ["one", "two"]
    assert out["libxml"][0] == 2 and out["h1"].startswith("Hello"), out


def test_pillow_resizes_in_memory(c: Corral) -> None:
    assert run(c, "pillow") == {"size": [10, 5], "format": "PNG", "pixel": [255, 0, 0],
                                "png": "89504e470d0a1a0a"}


def test_cryptography_fernet_rsa_ed25519(c: Corral) -> None:
    assert run(c, "crypto") == {"fernet": "secret", "ed25519": 64, "rsa": 256}


def test_pyjwt_hs256(c: Corral) -> None:
    assert run(c, "jwt") == {"claims": {"sub": "u1", "n": 2}, "forged": "rejected"}


def test_regex(c: Corral) -> None:
    assert run(c, "regex") == {"words": ["héllo", "wörld"], "fuzzy": True}


def test_markdown(c: Corral) -> None:
    html = run(c, "markdown")["html"]
    assert html.startswith("<h1>T</h1>\n<p><em>em</em> and <code>code</code></p>"), html
    assert "<table>" in html and "<td>1</td>" in html


def test_certifi_bundle_is_readable(c: Corral) -> None:
    out = run(c, "certifi")
    assert out["exists"] is True
    assert out["certs"] > 100 and out["loaded"] == out["certs"], out


def test_requests_through_the_brokered_fetch(c: Corral, upstream: Upstream) -> None:
    assert run(c, "requests") == {"status": 200, "path": "/echo/requests", "body": '{"a": 1}'}
    assert upstream.seen("/echo/requests")[-1]["headers"].get("x-t") == "1"


def test_httpx_sync_and_async_through_the_brokered_fetch(c: Corral, upstream: Upstream) -> None:
    assert run(c, "httpx") == {"status": 200, "path": "/echo/httpx-sync?q=1",
                              "given": "/echo/httpx-given"}
    assert run(c, "httpx_async") == {"status": 200, "path": "/echo/httpx-async", "body": "xyz"}
    assert upstream.seen("/echo/httpx-sync") and upstream.seen("/echo/httpx-async")


def test_openai_clients_reach_a_local_base_url(c: Corral, upstream: Upstream) -> None:
    assert run(c, "openai") == {"status": 200, "path": "/echo/v1/models"}
    assert run(c, "openai_async") == {"status": 200, "path": "/echo/av1/chat/completions"}
    seen = upstream.seen("/echo/v1/models")[-1]["headers"]
    assert seen.get("authorization") == "Bearer sk-test"


def test_anthropic_client_reaches_a_local_base_url(c: Corral, upstream: Upstream) -> None:
    assert run(c, "anthropic") == {"status": 200, "path": "/echo/anth/v1/messages"}
    seen = upstream.seen("/echo/anth/v1/messages")[-1]["headers"]
    # this SDK version sends the key as a bearer token (older ones as x-api-key)
    assert "k-test" in (seen.get("x-api-key"), seen.get("authorization", "").removeprefix("Bearer ")), seen


def test_writing_to_dev_null(c: Corral) -> None:
    """The usual sink for unwanted output (sandbox.stdlib_shims._patch_io)."""
    assert run(c, "devnull") == {"wrote": 5, "read": ""}


def test_numpy_and_pandas_groupby(c: Corral) -> None:
    r = c.request("/", host="data.localhost", timeout=120)
    assert r.status == 200, f"{r!r} {r.text}\n{c.log()}"
    out = r.json()
    assert out["ok"], out["error"]
    assert out["sums"] == {"a": 4, "b": 2, "c": 4}
    assert out["dot"] == sum(i * i for i in range(12))
    assert out["mean"] == 2.5 and out["csv"] == "k,v\na,1\nb,2\n"
    assert internal_errors(c) == [], c.log()
