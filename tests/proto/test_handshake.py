"""roost.proto.handshake: HTTP/1.1 request parsing and the RFC 6455 §4
opening handshake."""

from __future__ import annotations

import base64
import json

import pytest

from roost.errors import HandshakeError, RemoteError
from roost.proto.handshake import (
    Request,
    accept_key,
    check_upgrade,
    http_response,
    json_error,
    parse_request,
    switching_protocols,
)

UPGRADE = (
    b"GET /ws?token=abc.def.ghi HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8080\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def handshake_error(status: int, *args, **kwargs) -> HandshakeError:
    func = kwargs.pop("func", parse_request)
    with pytest.raises(HandshakeError) as info:
        func(*args, **kwargs)
    assert info.value.status == status, info.value.reason
    assert isinstance(info.value, RemoteError)
    return info.value


def parsed(data: bytes, **kwargs) -> Request:
    result = parse_request(data, **kwargs)
    assert result is not None
    request, used = result
    assert used == len(data)
    return request


def upgrade_request(**headers: str | None) -> Request:
    """The RFC example request with headers replaced (a value) or removed (None)."""
    base = {
        "Host": "127.0.0.1:8080",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    for name, value in headers.items():
        name = name.replace("_", "-")
        match = next((k for k in base if k.lower() == name.lower()), name)
        base.pop(match, None)
        if value is not None:
            base[match] = value
    head = "GET /ws HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in base.items()) + "\r\n"
    return parsed(head.encode("latin-1"))


# ---- parse_request: complete and incomplete ------------------------------------------


def test_parse_the_upgrade_request_of_protocol_md():
    request = parsed(UPGRADE)
    assert request.method == "GET"
    assert request.target == "/ws?token=abc.def.ghi"
    assert request.path == "/ws"
    assert request.query == {"token": "abc.def.ghi"}
    assert request.headers == {
        "host": "127.0.0.1:8080",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-version": "13",
    }
    assert request.body == b""


def test_request_with_no_headers():
    request = parsed(b"GET / HTTP/1.1\r\n\r\n")
    assert (request.method, request.target, request.path, request.headers) == ("GET", "/", "/", {})


def test_http_1_0_is_accepted():
    assert parsed(b"GET /health HTTP/1.0\r\n\r\n").path == "/health"


def test_incomplete_head_needs_more():
    assert parse_request(b"") is None
    assert parse_request(UPGRADE[:-1]) is None
    assert parse_request(UPGRADE[:-2]) is None


def test_split_at_every_byte():
    for i in range(len(UPGRADE)):
        assert parse_request(UPGRADE[:i]) is None, i
    assert parse_request(UPGRADE) == (parsed(UPGRADE), len(UPGRADE))


def test_body_split_at_every_byte():
    data = b"POST /api/send HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world"
    for i in range(len(data)):
        assert parse_request(data[:i]) is None, i
    request = parsed(data)
    assert request.method == "POST" and request.body == b"hello world"


def test_bytes_after_the_request_are_not_consumed():
    extra = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a first frame, sent early
    result = parse_request(UPGRADE + extra)
    assert result is not None
    request, used = result
    assert used == len(UPGRADE)
    assert request.body == b""
    data = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"
    result = parse_request(data)
    assert result is not None
    assert result[0].body == b"abc" and result[1] == data.index(b"GET")


def test_bytearray_input():
    request = parsed(bytearray(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok"))
    assert request.body == b"ok" and type(request.body) is bytes


# ---- parse_request: bodies ------------------------------------------------------------


def test_content_length_zero():
    assert parsed(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body == b""


def test_body_exactly_at_max_body():
    data = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n" + b"b" * 10
    assert parsed(data, max_body=10).body == b"b" * 10


def test_body_over_max_body_is_413_before_it_arrives():
    head = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n"
    exc = handshake_error(413, head, max_body=10)
    assert "11" in exc.reason and "10" in exc.reason
    handshake_error(413, b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n")


@pytest.mark.parametrize("encoding", ["chunked", "gzip, chunked", "identity"])
def test_transfer_encoding_is_411(encoding):
    data = f"POST / HTTP/1.1\r\nTransfer-Encoding: {encoding}\r\n\r\n0\r\n\r\n".encode()
    exc = handshake_error(411, data)
    assert "Content-Length" in exc.reason


def test_transfer_encoding_wins_over_content_length():
    # RFC 9112 §6.3: both present is a smuggling risk; never trust the length.
    data = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc"
    handshake_error(411, data)


@pytest.mark.parametrize("value", ["abc", "-1", "+5", "1.0", "0x10", "", "5, 5", "1 2"])
def test_malformed_content_length_is_400(value):
    data = f"POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n".encode()
    exc = handshake_error(400, data)
    assert "Content-Length" in exc.reason


@pytest.mark.parametrize("value", [b"\xb2", b"\xb9", b"1\xb3"])
def test_content_length_of_latin1_digits_is_400(value):
    # "²" (0xB2) decodes from latin-1 and str.isdigit() says True, but int()
    # refuses it: the request is malformed, not a server crash.
    handshake_error(400, b"POST / HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\n")


def test_content_length_with_thousands_of_digits_is_413_or_400():
    # int() refuses strings over 4300 digits (CVE-2020-10735 mitigation).
    data = b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"
    with pytest.raises(HandshakeError) as info:
        parse_request(data)
    assert info.value.status in (400, 413)


def test_content_length_header_name_is_case_insensitive():
    assert parsed(b"PUT / HTTP/1.1\r\ncontent-LENGTH: 2\r\n\r\nhi").body == b"hi"


# ---- parse_request: the head size cap (431) --------------------------------------------


def pad_to(size: int) -> bytes:
    """A complete head of exactly ``size`` bytes, terminator excluded."""
    start = b"GET / HTTP/1.1\r\nX-Pad: "
    return start + b"p" * (size - len(start))


@pytest.mark.parametrize("cap", [64, 100, 8192])
def test_head_exactly_at_the_cap_is_accepted(cap):
    head = pad_to(cap)
    assert len(head) == cap
    request = parsed(head + b"\r\n\r\n", max_header_bytes=cap)
    assert request.headers["x-pad"].startswith("ppp")


@pytest.mark.parametrize("cap", [64, 100, 8192])
def test_head_one_byte_over_the_cap_with_a_terminator_is_431(cap):
    exc = handshake_error(431, pad_to(cap + 1) + b"\r\n\r\n", max_header_bytes=cap)
    assert exc.reason == "request header too large"


@pytest.mark.parametrize("cap", [64, 100, 8192])
def test_head_over_the_cap_without_a_terminator_is_431(cap):
    head = pad_to(cap + 10)
    # Not yet: the terminator could still come within the cap.
    assert parse_request(head[: cap + 3], max_header_bytes=cap) is None
    handshake_error(431, head[: cap + 4], max_header_bytes=cap)
    handshake_error(431, head, max_header_bytes=cap)


def test_431_does_not_wait_for_the_whole_head():
    handshake_error(431, b"G" * 100_000, max_header_bytes=8192)


def test_body_does_not_count_towards_the_head_cap():
    head = b"POST / HTTP/1.1\r\nContent-Length: 200\r\n\r\n"
    request = parsed(head + b"b" * 200, max_header_bytes=len(head) - 4)
    assert len(request.body) == 200


# ---- parse_request: malformed requests (400) ---------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"",  # no request line at all
        b"GET",
        b"GET /",
        b"GET / HTTP/1.1 extra",
        b"GET  / HTTP/1.1",  # two spaces
        b"GET / HTTP/2.0",
        b"GET / HTTP/1.1 ",
        b"GET / http/1.1",
        b"GET / FTP/1.1",
        b"G(T / HTTP/1.1",  # "(" is not a token character
        b"G\xc9T / HTTP/1.1",
        b" GET / HTTP/1.1",
        b"GET\t/ HTTP/1.1",
    ],
)
def test_malformed_request_line(line):
    exc = handshake_error(400, line + b"\r\nHost: x\r\n\r\n")
    assert exc.reason == "malformed request line"


def test_request_line_without_a_target_is_400():
    # RFC 9112 §3.2: the request-target is never empty.
    handshake_error(400, b"GET  HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize(
    "header",
    [
        b"NoColon",
        b": empty name",
        b"Bad Name: x",
        b"Bad\tName: x",
        b"Host : space before the colon",  # RFC 9112 §5.1: MUST be rejected
        b"Na\xefme: x",
        b"Name(: x",
    ],
)
def test_malformed_header_line(header):
    exc = handshake_error(400, b"GET / HTTP/1.1\r\n" + header + b"\r\n\r\n")
    assert exc.reason == "malformed header line"


@pytest.mark.parametrize("fold", [b" folded", b"\tfolded"])
def test_obs_fold_is_400(fold):
    # RFC 9112 §5.2: obsolete line folding may be rejected with 400.
    data = b"GET / HTTP/1.1\r\nX-Long: first\r\n" + fold + b"\r\n\r\n"
    handshake_error(400, data)


def test_lf_only_line_endings_are_not_a_head():
    # Without CRLF CRLF there is no end of head: more is awaited, then 431.
    data = b"GET / HTTP/1.1\nHost: x\n\n"
    assert parse_request(data) is None
    handshake_error(431, data + b"x" * 9000)


def test_header_values_are_stripped_and_latin1():
    request = parsed(b"GET / HTTP/1.1\r\nX-A: \t  value with  spaces \t \r\nX-B: caf\xe9\r\n\r\n")
    assert request.headers["x-a"] == "value with  spaces"
    assert request.headers["x-b"] == "café"


def test_empty_header_value():
    assert parsed(b"GET / HTTP/1.1\r\nX-Empty:\r\n\r\n").headers == {"x-empty": ""}


def test_value_with_colons():
    assert parsed(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").headers == {"host": "[::1]:8080"}


def test_header_names_are_lowercased():
    request = parsed(b"GET / HTTP/1.1\r\nSEC-WEBSOCKET-KEY: k\r\nX-Mixed-Case: v\r\n\r\n")
    assert request.headers == {"sec-websocket-key": "k", "x-mixed-case": "v"}


def test_repeated_headers_are_joined():
    data = (
        b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nX-A: 1\r\nconnection: Upgrade\r\n"
        b"X-A: 2\r\nX-A: 3\r\n\r\n"
    )
    request = parsed(data)
    assert request.headers == {"connection": "keep-alive, Upgrade", "x-a": "1, 2, 3"}


def test_method_is_case_sensitive_and_any_token():
    assert parsed(b"get / HTTP/1.1\r\n\r\n").method == "get"
    assert parsed(b"M-SEARCH * HTTP/1.1\r\n\r\n").method == "M-SEARCH"


@pytest.mark.parametrize("target", [b"//[", b"http://[::1/", b"http://[bad]/", b"//[::1"])
def test_unparsable_target_is_400_not_a_crash(target):
    # urllib raises ValueError("Invalid IPv6 URL") on these.
    handshake_error(400, b"GET " + target + b" HTTP/1.1\r\n\r\n")


# ---- parse_request: the target and its query ---------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/ws", "/ws", {}),
        ("/ws?", "/ws", {}),
        ("/ws?token=a.b.c", "/ws", {"token": "a.b.c"}),
        ("/ws?token=a&x=1", "/ws", {"token": "a", "x": "1"}),
        ("/ws?token=", "/ws", {"token": ""}),
        ("/ws?flag", "/ws", {"flag": ""}),
        ("/ws?token=a%2Eb%20c+d", "/ws", {"token": "a.b c d"}),
        ("/ws?t=%E2%82%AC", "/ws", {"t": "€"}),
        ("/ws?t=1&t=2", "/ws", {"t": "2"}),
        ("/a/b%20c?x=1#frag", "/a/b%20c", {"x": "1"}),
        ("http://example.com/ws?token=t", "/ws", {"token": "t"}),
        ("*", "*", {}),
    ],
)
def test_target_path_and_query(target, path, query):
    request = parsed(f"GET {target} HTTP/1.1\r\n\r\n".encode())
    assert (request.target, request.path, request.query) == (target, path, query)


# ---- check_upgrade ----------------------------------------------------------------------


def test_check_upgrade_returns_the_key():
    assert check_upgrade(parsed(UPGRADE)) == "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Upgrade": None}, "missing Upgrade: websocket"),
        ({"Upgrade": "h2c"}, "missing Upgrade: websocket"),
        ({"Upgrade": ""}, "missing Upgrade: websocket"),
        ({"Connection": None}, "missing Connection: Upgrade"),
        ({"Connection": "keep-alive"}, "missing Connection: Upgrade"),
        ({"Connection": "upgraded"}, "missing Connection: Upgrade"),
        ({"Sec-WebSocket-Key": None}, "missing Sec-WebSocket-Key"),
    ],
)
def test_missing_headers_are_400_naming_them(headers, reason):
    exc = handshake_error(400, upgrade_request(**headers), func=check_upgrade)
    assert exc.reason == reason
    assert exc.headers == ()


def test_not_a_get_is_400():
    request = parsed(UPGRADE.replace(b"GET", b"POST", 1))
    exc = handshake_error(400, request, func=check_upgrade)
    assert "GET" in exc.reason


def test_header_tokens_are_case_insensitive_lists():
    request = upgrade_request(Upgrade="WebSocket", Connection="keep-alive, UPGRADE")
    assert check_upgrade(request) == "dGhlIHNhbXBsZSBub25jZQ=="
    request = upgrade_request(Upgrade="foo/1, websocket", Connection="Upgrade ,keep-alive")
    assert check_upgrade(request) == "dGhlIHNhbXBsZSBub25jZQ=="


def test_connection_header_repeated_is_joined_and_accepted():
    data = UPGRADE.replace(
        b"Connection: Upgrade\r\n", b"Connection: keep-alive\r\nConnection: Upgrade\r\n"
    )
    assert check_upgrade(parsed(data)) == "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", " ", "thirteen"])
def test_other_version_is_426_with_the_version_header(version):
    exc = handshake_error(426, upgrade_request(Sec_WebSocket_Version=version), func=check_upgrade)
    assert exc.reason == "unsupported websocket version"
    assert exc.headers == (("Sec-WebSocket-Version", "13"),)


def test_missing_version_is_426():
    exc = handshake_error(426, upgrade_request(Sec_WebSocket_Version=None), func=check_upgrade)
    assert exc.headers == (("Sec-WebSocket-Version", "13"),)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "not base64!",
        "dGhlIHNhbXBsZSBub25jZQ",  # missing padding
        "dGhlIHNhbXBsZSBub25j",  # 15 bytes decoded... not a multiple of 4 chars: invalid
        "dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ==",  # two keys
        base64.b64encode(b"x" * 15).decode(),
        base64.b64encode(b"x" * 17).decode(),
        base64.b64encode(b"x" * 32).decode(),
        "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==",  # repeated header, joined
        "dGhlIHNhbXBs ZSBub25jZQ==",
    ],
)
def test_bad_keys_are_400(key):
    exc = handshake_error(400, upgrade_request(Sec_WebSocket_Key=key), func=check_upgrade)
    assert exc.reason == "invalid Sec-WebSocket-Key"


def test_non_ascii_key_is_400_not_a_crash():
    # Header values are latin-1 text; base64 refuses non-ASCII str with a
    # ValueError that is not a binascii.Error.
    data = UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"\xe9GhlIHNhbXBsZSBub25jZQ==")
    exc = handshake_error(400, parsed(data), func=check_upgrade)
    assert exc.reason == "invalid Sec-WebSocket-Key"


def test_any_16_byte_key_is_accepted():
    for raw in (b"\x00" * 16, b"\xff" * 16, bytes(range(16))):
        key = base64.b64encode(raw).decode()
        assert check_upgrade(upgrade_request(Sec_WebSocket_Key=key)) == key


# ---- accept_key and the 101 -------------------------------------------------------------


def test_accept_key_rfc_6455_example():
    # RFC 6455 §1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_accept_key_matches_websockets():
    from websockets.utils import accept_key as ws_accept_key

    for raw in (b"\x00" * 16, b"\xff" * 16, bytes(range(16))):
        key = base64.b64encode(raw).decode()
        assert accept_key(key) == ws_accept_key(key)


def test_switching_protocols():
    response = switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )
    assert b"Sec-WebSocket-Extensions" not in response


def test_switching_protocols_is_accepted_by_a_websockets_client():
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.uri import parse_uri

    client = ClientProtocol(parse_uri("ws://127.0.0.1:8080/ws"))
    request = client.connect()
    client.send_request(request)
    key = request.headers["Sec-WebSocket-Key"]
    client.receive_data(switching_protocols(key))
    assert client.handshake_exc is None
    assert client.state is State.OPEN


def test_websockets_client_request_passes_check_upgrade():
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    client = ClientProtocol(parse_uri("ws://127.0.0.1:8080/ws?token=t"))
    request = client.connect()
    client.send_request(request)
    [wire] = client.data_to_send()
    req = parsed(wire)
    assert req.query == {"token": "t"}
    assert check_upgrade(req) == request.headers["Sec-WebSocket-Key"]


# ---- http_response and json_error -------------------------------------------------------


def split_response(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, sep, body = response.partition(b"\r\n\r\n")
    assert sep
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert len(headers) == len(lines)
    return status, headers, body


def test_http_response_format():
    response = http_response(200, b'{"ok":true}')
    assert response == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 11\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b'{"ok":true}'
    )


def test_http_response_extra_headers_and_content_type():
    response = http_response(
        200, b"<html>", "text/html; charset=utf-8", (("X-A", "1"), ("X-B", "2"))
    )
    status, headers, body = split_response(response)
    assert status == "HTTP/1.1 200 OK"
    assert headers == {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Length": "6",
        "X-A": "1",
        "X-B": "2",
        "Connection": "close",
    }
    assert body == b"<html>"


def test_http_response_without_a_body():
    assert http_response(204) == b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    # Other statuses state their (empty) length so the client knows the end.
    assert http_response(404) == (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (101, "Switching Protocols"),
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (404, "Not Found"),
        (408, "Request Timeout"),
        (411, "Length Required"),
        (413, "Content Too Large"),
        (426, "Upgrade Required"),
        (431, "Request Header Fields Too Large"),
        (500, "Internal Server Error"),
        (503, "Service Unavailable"),
        (299, "Unknown"),
    ],
)
def test_http_response_reason_phrases(status, reason):
    assert http_response(status).startswith(f"HTTP/1.1 {status} {reason}\r\n".encode())


def test_content_length_counts_bytes_not_characters():
    _, headers, body = split_response(http_response(200, "é€😀".encode()))
    assert headers["Content-Length"] == str(len(body)) == "9"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "missing token"),
        (431, "request header too large"),
        (408, "handshake timeout"),
        (503, "too many pending handshakes"),
        (400, 'a "quoted" \\ message é'),
    ],
)
def test_json_error(status, message):
    status_line, headers, body = split_response(json_error(status, message))
    assert status_line.startswith(f"HTTP/1.1 {status} ")
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(body))
    assert headers["Connection"] == "close"
    assert json.loads(body) == {"error": message}


def test_json_error_of_a_handshake_error_carries_its_headers():
    exc = handshake_error(426, upgrade_request(Sec_WebSocket_Version="8"), func=check_upgrade)
    response = json_error(exc.status, exc.reason, exc.headers)
    status, headers, body = split_response(response)
    assert status == "HTTP/1.1 426 Upgrade Required"
    assert headers["Sec-WebSocket-Version"] == "13"
    assert json.loads(body) == {"error": "unsupported websocket version"}


def test_responses_parse_with_an_independent_http_parser():
    import http.client
    import io

    class FakeSock:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def makefile(self, mode: str) -> io.BytesIO:
            return io.BytesIO(self.data)

    for raw in (json_error(404, "not found"), http_response(204), http_response(200, b"x" * 300)):
        resp = http.client.HTTPResponse(FakeSock(raw))  # type: ignore[arg-type]
        resp.begin()
        status, _headers, body = split_response(raw)
        assert resp.status == int(status.split()[1])
        assert resp.read() == body
        assert resp.getheader("Connection") == "close"
