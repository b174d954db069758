"""Backend.AI keypair HMAC: the published test vector, sign/verify round trips, every refusal."""

from __future__ import annotations

import string
from datetime import datetime, timedelta, timezone

import pytest
from multidict import CIMultiDict

from remote_kernel import auth
from remote_kernel.errors import AuthenticationError, InvalidAuthParamsError

ACCESS = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEYPAIR = auth.Keypair(ACCESS, SECRET)
VECTOR_DATE = "2025-01-02T03:04:05.678901+00:00"
VECTOR_SIG = "5841550981a51681db9b76a33d4a3dc8608a414e62f3e62ff0551fcb63364133"
HOST = "127.0.0.1:8091"
VERSION = "v9.20250722"
NOW = datetime.fromisoformat(VECTOR_DATE)


def lookup(access_key: str) -> str | None:
    return {ACCESS: SECRET}.get(access_key)


def signed(
    *,
    method: str = "POST",
    path_qs: str = "/session/mysess-01",
    content_type: str = "application/json",
    keypair: auth.Keypair = KEYPAIR,
    now: datetime = NOW,
) -> CIMultiDict[str]:
    return CIMultiDict(
        auth.sign_headers(
            keypair,
            method=method,
            path_qs=path_qs,
            host=HOST,
            content_type=content_type,
            version=VERSION,
            now=now,
        )
    )


def verify(
    headers: CIMultiDict[str],
    *,
    method: str = "POST",
    path_qs: str = "/session/mysess-01",
    content_type: str = "application/json",
    now: datetime = NOW,
) -> str:
    return auth.verify(
        headers,
        method=method,
        path_qs=path_qs,
        host=HOST,
        content_type=content_type,
        lookup_secret=lookup,
        now=now,
    )


# -- the published vector -------------------------------------------------------------------------
def test_string_to_sign_of_the_vector():
    assert auth.string_to_sign(
        "post", "/session/mysess-01", VECTOR_DATE, HOST, "application/json", VERSION
    ) == (
        "POST\n"
        "/session/mysess-01\n"
        "2025-01-02T03:04:05.678901+00:00\n"
        "host:127.0.0.1:8091\n"
        "content-type:application/json\n"
        "x-backendai-version:v9.20250722\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_signature_of_the_vector():
    to_sign = auth.string_to_sign(
        "POST", "/session/mysess-01", VECTOR_DATE, HOST, "application/json", VERSION
    )
    assert auth.signature(SECRET, NOW, HOST, to_sign) == VECTOR_SIG


def test_sign_headers_reproduce_the_vector():
    assert dict(signed()) == {
        "Date": VECTOR_DATE,
        "X-BackendAI-Version": VERSION,
        "Authorization": f"BackendAI signMethod=HMAC-SHA256, credential={ACCESS}:{VECTOR_SIG}",
    }


def test_verify_accepts_the_vector_as_the_sdk_sends_it():
    headers = CIMultiDict(
        {
            "date": VECTOR_DATE,
            "x-backendai-version": VERSION,
            "authorization": f"BackendAI signMethod=HMAC-SHA256, credential={ACCESS}:{VECTOR_SIG}",
        }
    )
    assert verify(headers) == ACCESS


# -- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path_qs", "content_type"),
    [
        ("POST", "/session/mysess-01", "application/json"),
        ("GET", "/session/mysess-01/logs", "text/plain"),
        ("DELETE", "/session/abc?forced=true&recursive=true", "text/plain"),
        ("POST", "/session/abc/download?files=a.txt&files=sub/b.txt", "text/plain"),
        ("GET", "/stream/session/abc/execute", ""),
    ],
)
def test_sign_then_verify_round_trip(method, path_qs, content_type):
    headers = signed(method=method, path_qs=path_qs, content_type=content_type)
    assert verify(headers, method=method, path_qs=path_qs, content_type=content_type) == ACCESS


def test_missing_content_type_is_signed_as_octet_stream():
    headers = signed(method="GET", path_qs="/events/session", content_type="")
    assert (
        verify(
            headers,
            method="GET",
            path_qs="/events/session",
            content_type="application/octet-stream",
        )
        == ACCESS
    )


def test_content_type_parameters_are_stripped():
    headers = signed(path_qs="/session/s/upload", content_type="multipart/form-data")
    assert (
        verify(
            headers,
            path_qs="/session/s/upload",
            content_type="multipart/form-data; boundary=a1b2c3d4e5",
        )
        == ACCESS
    )
    assert auth.string_to_sign(
        "POST", "/u", VECTOR_DATE, HOST, "Multipart/Form-Data; boundary=xyz", VERSION
    ).splitlines()[4] == ("content-type:multipart/form-data")


def test_x_backendai_date_is_the_fallback_for_date():
    headers = signed()
    headers["X-BackendAI-Date"] = headers.pop("Date")
    assert verify(headers) == ACCESS


def test_date_wins_over_x_backendai_date():
    headers = signed()
    headers["X-BackendAI-Date"] = "2025-01-02T03:04:06.000000+00:00"
    assert verify(headers) == ACCESS


@pytest.mark.parametrize("skew", [timedelta(minutes=14, seconds=59), -timedelta(minutes=14)])
def test_clock_skew_within_15_minutes_is_accepted(skew):
    assert verify(signed(), now=NOW + skew) == ACCESS


@pytest.mark.parametrize("skew", [timedelta(minutes=15, seconds=1), -timedelta(minutes=16)])
def test_clock_skew_over_15_minutes_is_rejected(skew):
    with pytest.raises(InvalidAuthParamsError) as info:
        verify(signed(), now=NOW + skew)
    assert info.value.msg == "Date/time sync error"
    assert info.value.status == 400


# -- refusals -------------------------------------------------------------------------------------
def test_wrong_secret_is_a_signature_mismatch():
    headers = signed(keypair=auth.Keypair(ACCESS, "not-the-secret"))
    with pytest.raises(AuthenticationError) as info:
        verify(headers)
    assert info.value.msg == "HMAC signature mismatch"
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "GET"),
        ("path_qs", "/session/mysess-02"),
        ("content_type", "text/plain"),
    ],
)
def test_any_signed_field_changed_is_a_mismatch(field, value):
    kwargs = {"method": "POST", "path_qs": "/session/mysess-01", "content_type": "application/json"}
    kwargs[field] = value
    with pytest.raises(AuthenticationError) as info:
        verify(signed(), **kwargs)
    assert info.value.msg == "HMAC signature mismatch"


def test_tampered_version_header_is_a_mismatch():
    headers = signed()
    headers["X-BackendAI-Version"] = "v8.20240915"
    with pytest.raises(AuthenticationError) as info:
        verify(headers)
    assert info.value.msg == "HMAC signature mismatch"


def test_unknown_access_key():
    headers = signed(keypair=auth.Keypair("AKIAUNKNOWNUNKNOWN00", SECRET))
    with pytest.raises(AuthenticationError) as info:
        verify(headers)
    assert info.value.msg == "HMAC signature mismatch"  # the same as a wrong signature
    assert info.value.status == 401


def test_missing_authorization_is_unauthorized():
    headers = signed()
    del headers["Authorization"]
    with pytest.raises(AuthenticationError) as info:
        verify(headers)
    assert info.value.msg == "Unauthorized access"


def test_missing_date():
    headers = signed()
    del headers["Date"]
    with pytest.raises(InvalidAuthParamsError) as info:
        verify(headers)
    assert info.value.msg == "Date header is missing"


def test_malformed_date():
    headers = signed()
    headers["Date"] = "yesterday-ish"
    with pytest.raises(InvalidAuthParamsError) as info:
        verify(headers)
    assert info.value.msg == "Malformed Date header 'yesterday-ish'"


@pytest.mark.parametrize(
    ("authorization", "msg"),
    [
        ("Bearer abc", "Invalid authorization type name"),
        (f"Basic {ACCESS}:{VECTOR_SIG}", "Invalid authorization type name"),
        (f"BackendAI credential={ACCESS}:{VECTOR_SIG}", "Malformed authorization header"),
        ("BackendAI signMethod=HMAC-SHA256", "Malformed authorization header"),
        (
            f"BackendAI signMethod=HMAC-SHA256, credential={ACCESS}",
            "Malformed authorization header",
        ),
        (
            f"BackendAI signMethod=HMAC-SHA256, credential=:{VECTOR_SIG}",
            "Malformed authorization header",
        ),
        (
            f"BackendAI signMethod=HMAC-SHA256, credential={ACCESS}:",
            "Malformed authorization header",
        ),
        (
            f"BackendAI signMethod=PLAIN, credential={ACCESS}:{VECTOR_SIG}",
            "Malformed authorization header",
        ),
        (
            f"BackendAI signMethod=HMAC-FOO, credential={ACCESS}:{VECTOR_SIG}",
            "Unsupported signing method 'HMAC-FOO'",
        ),
    ],
)
def test_malformed_authorization_header(authorization, msg):
    headers = signed()
    headers["Authorization"] = authorization
    with pytest.raises(InvalidAuthParamsError) as info:
        verify(headers)
    assert info.value.msg == msg
    assert info.value.status == 400


def test_parse_authorization():
    assert auth.parse_authorization(
        f"BackendAI signMethod=HMAC-SHA256, credential={ACCESS}:{VECTOR_SIG}"
    ) == ("sha256", ACCESS, VECTOR_SIG)
    assert auth.parse_authorization(
        f"Sorna signMethod=HMAC-SHA1,credential={ACCESS}:{VECTOR_SIG}"
    ) == ("sha1", ACCESS, VECTOR_SIG)


def test_legacy_sha1_signature_verifies():
    date_header = VECTOR_DATE
    to_sign = auth.string_to_sign(
        "POST", "/session/mysess-01", date_header, HOST, "application/json", VERSION
    )
    sig = auth.signature(SECRET, NOW, HOST, to_sign, "sha1")
    headers = CIMultiDict(
        {
            "Date": date_header,
            "X-BackendAI-Version": VERSION,
            "Authorization": f"BackendAI signMethod=HMAC-SHA1, credential={ACCESS}:{sig}",
        }
    )
    assert verify(headers) == ACCESS


# -- dates ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (VECTOR_DATE, NOW),
        ("2025-01-02T03:04:05Z", datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("2025-01-02T03:04:05", datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("Thu, 02 Jan 2025 03:04:05 GMT", datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
    ],
)
def test_parse_date(value, expected):
    assert auth.parse_date(value) == expected


# -- keypairs -------------------------------------------------------------------------------------
def test_keypair_repr_hides_the_secret():
    assert repr(KEYPAIR) == "Keypair(access_key='AKIAIOSFODNN7EXAMPLE', secret_key='***')"
    assert SECRET not in repr(KEYPAIR)
    assert SECRET not in str(KEYPAIR)


def test_generate_keypair_shape():
    pair = auth.generate_keypair()
    assert len(pair.access_key) == 20
    assert pair.access_key.startswith("AKIA")
    assert set(pair.access_key) <= set(string.ascii_uppercase + string.digits)
    assert len(pair.secret_key) == 40
    assert set(pair.secret_key) <= set(string.ascii_letters + string.digits + "-_")


def test_generated_keypairs_differ():
    pairs = {auth.generate_keypair() for _ in range(20)}
    assert len({p.access_key for p in pairs}) == 20
    assert len({p.secret_key for p in pairs}) == 20


def test_generated_keypair_signs_and_verifies():
    pair = auth.generate_keypair()
    headers = signed(keypair=pair)
    assert (
        auth.verify(
            headers,
            method="POST",
            path_qs="/session/mysess-01",
            host=HOST,
            content_type="application/json",
            lookup_secret={pair.access_key: pair.secret_key}.get,
            now=NOW,
        )
        == pair.access_key
    )
