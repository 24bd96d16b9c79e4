"""multipart/form-data parsing: binary safety, header quirks, limits, errors."""

import pytest

from supervisor.admin.multipart import MultipartError, Part, encode, parse, parse_boundary, parse_header_params

CT = "multipart/form-data; boundary=XyZ"


def body(*chunks: bytes) -> bytes:
    return b"".join(chunks)


def test_round_trip_with_binary_and_folders():
    binary = bytes(range(256)) * 4 + b"\r\n--not-the-boundary\r\n"
    parts = [
        Part(name="metadata", data=b'{"main_module": "worker.py"}', content_type="application/json"),
        Part(name="worker.py", filename="worker.py", data=b"print('hi')\r\n"),
        Part(name="src/lib/util.py", filename="util.py", data=b"X = 1\n"),
        Part(name="data.bin", data=binary, content_type="application/octet-stream"),
        Part(name="empty.py", data=b""),
    ]
    content_type, raw = encode(parts)
    parsed = parse(content_type, raw)
    assert [p.name for p in parsed] == ["metadata", "worker.py", "src/lib/util.py", "data.bin", "empty.py"]
    assert parsed[1].data == b"print('hi')\r\n"  # trailing CRLF of the content is kept
    assert parsed[2].filename == "util.py"
    assert parsed[3].data == binary
    assert parsed[3].content_type == "application/octet-stream"
    assert parsed[4].data == b""


def test_preamble_epilogue_padding_and_quoted_boundary():
    raw = body(
        b"preamble text\r\n",
        b"--a b\t \r\n",
        b'Content-Disposition: form-data; name="x"\r\n\r\n',
        b"1\r\n",
        b"--a b--\r\nepilogue",
    )
    parts = parse('multipart/form-data; boundary="a b"', raw)
    assert [(p.name, p.data) for p in parts] == [("x", b"1")]


def test_curl_style_headers():
    raw = body(
        b"--XyZ\r\n",
        b'content-disposition: form-data; name="src/a.py"; filename="a.py"\r\n',
        b"Content-Type: text/x-python\r\n\r\n",
        b"A=1\r\n--XyZ--\r\n",
    )
    [part] = parse(CT, raw)
    assert (part.name, part.filename, part.content_type, part.data) == ("src/a.py", "a.py", "text/x-python", b"A=1")


def test_header_params():
    assert parse_header_params('form-data; name="a\\"b"; filename=c.py') == (
        "form-data", {"name": 'a"b', "filename": "c.py"})
    assert parse_header_params("form-data; name=x; filename*=UTF-8''%C3%A9.py")[1]["filename"] == "é.py"
    assert parse_header_params("Multipart/Form-Data; Boundary=abc") == ("multipart/form-data", {"boundary": "abc"})
    with pytest.raises(MultipartError, match="unterminated"):
        parse_header_params('form-data; name="x')


@pytest.mark.parametrize(
    "content_type, fragment",
    [
        ("application/json", "expected Content-Type multipart/form-data"),
        ("", "expected Content-Type"),
        ("multipart/form-data", "no boundary"),
        ("multipart/form-data; boundary=" + "x" * 71, "invalid multipart boundary"),
    ],
)
def test_bad_content_types(content_type, fragment):
    with pytest.raises(MultipartError, match=fragment) as info:
        parse_boundary(content_type)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"nothing here", "does not contain the boundary"),
        (b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nabc", "closing boundary is missing"),
        (b"--XyZ\r\nContent-Disposition: form-data; name=a\r\nabc\r\n--XyZ--", "no blank line"),
        (b"--XyZ\r\nContent-Type: text/plain\r\n\r\nabc\r\n--XyZ--", "no Content-Disposition"),
        (b"--XyZ\r\nContent-Disposition: attachment; name=a\r\n\r\nabc\r\n--XyZ--", "expected form-data"),
        (b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--XyZ--", "no name"),
        (b"--XyZ\r\nbogus\r\n\r\nabc\r\n--XyZ--", "malformed header"),
        (b"--XyZ\r\nContent-Disposition: form-data; name=\xff\r\n\r\nabc\r\n--XyZ--", "not UTF-8"),
        (b"--XyZjunk\r\n", "not followed by CRLF"),
        (
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n2\r\n--XyZ--",
            "two parts named 'a'",
        ),
    ],
)
def test_malformed_bodies(raw, fragment):
    with pytest.raises(MultipartError, match=fragment) as info:
        parse(CT, raw)
    assert info.value.status == 400


def test_limits_are_413():
    content_type, raw = encode([Part(name=f"m{i}.py", data=b"x") for i in range(5)])
    with pytest.raises(MultipartError, match="more than 4 parts") as info:
        parse(content_type, raw, max_parts=4)
    assert info.value.status == 413
    content_type, raw = encode([Part(name="big.py", data=b"x" * 101)])
    with pytest.raises(MultipartError, match="larger than 100 bytes") as info:
        parse(content_type, raw, max_part_bytes=100)
    assert info.value.status == 413
    assert parse(content_type, raw, max_part_bytes=101)[0].data == b"x" * 101


def test_empty_upload_is_no_parts():
    assert parse(CT, b"--XyZ--\r\n") == []


def test_encode_refuses_header_injection():
    with pytest.raises(MultipartError, match="line break"):
        encode([Part(name="a\r\nX-Evil: 1", data=b"")])
