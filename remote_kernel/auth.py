"""Backend.AI keypair HMAC authentication: signing (client) and verifying (server).

Pure: no I/O, no clock unless one is passed in. Both halves of remote_kernel use this module, so
the string to sign is built in exactly one place (protocol.md §1.2).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .errors import AuthenticationError, InvalidAuthParamsError

HASH_TYPE = "sha256"
SIGN_METHOD = "HMAC-SHA256"
MAX_CLOCK_SKEW = timedelta(minutes=15)
EMPTY_BODY_HASH = hashlib.sha256(b"").hexdigest()
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: The one 401 message for an unknown access key and a wrong signature (no key enumeration).
CREDENTIAL_MISMATCH = "HMAC signature mismatch"
#: Signs in place of an unknown key's secret, so that refusing one takes the usual time.
_NO_SECRET = secrets.token_urlsafe(30)


@dataclass(frozen=True)
class Keypair:
    """An access key and its secret. ``repr`` never shows the secret."""

    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return f"Keypair(access_key={self.access_key!r}, secret_key='***')"


def generate_keypair() -> Keypair:
    """A new random keypair shaped like Backend.AI's (20-char access key, 40-char secret)."""
    alphabet = string.ascii_uppercase + string.digits
    access = "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16))
    secret = secrets.token_urlsafe(30)[:40]
    return Keypair(access, secret)


def string_to_sign(
    method: str, path_qs: str, date_header: str, host: str, content_type: str, version: str
) -> str:
    """The seven lines Backend.AI signs; the body is never signed (API ≥ v4.20181215)."""
    ctype = (content_type or DEFAULT_CONTENT_TYPE).split(";", 1)[0].strip().lower()
    return "\n".join(
        [
            method.upper(),
            path_qs,
            date_header,
            f"host:{host}",
            f"content-type:{ctype}",
            f"x-backendai-version:{version}",
            EMPTY_BODY_HASH,
        ]
    )


def signature(
    secret_key: str, date: datetime, host: str, to_sign: str, hash_type: str = HASH_TYPE
) -> str:
    """``hex(HMAC(HMAC(HMAC(secret, YYYYMMDD), host), to_sign))``."""
    digest = getattr(hashlib, hash_type)
    k1 = hmac.new(_utf8(secret_key), date.strftime("%Y%m%d").encode(), digest).digest()
    k2 = hmac.new(k1, _utf8(host), digest).digest()
    return hmac.new(k2, _utf8(to_sign), digest).hexdigest()


def _utf8(text: str) -> bytes:
    """UTF-8; header bytes that were not UTF-8 (decoded with surrogateescape) come back as is."""
    return text.encode("utf-8", "surrogateescape")


def sign_headers(
    keypair: Keypair,
    *,
    method: str,
    path_qs: str,
    host: str,
    content_type: str,
    version: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """The ``Date``, ``X-BackendAI-Version`` and ``Authorization`` headers for one request."""
    date = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    date_header = date.isoformat()
    to_sign = string_to_sign(method, path_qs, date_header, host, content_type, version)
    sig = signature(keypair.secret_key, date, host, to_sign)
    credential = f"{keypair.access_key}:{sig}"
    return {
        "Date": date_header,
        "X-BackendAI-Version": version,
        "Authorization": f"BackendAI signMethod={SIGN_METHOD}, credential={credential}",
    }


def parse_authorization(value: str) -> tuple[str, str, str]:
    """Split ``BackendAI signMethod=HMAC-SHA256, credential=AK:SIG`` into (hash, access, sig)."""
    scheme, _, params = value.strip().partition(" ")
    if scheme not in ("BackendAI", "Sorna"):
        raise InvalidAuthParamsError("Invalid authorization type name")
    fields: dict[str, str] = {}
    for part in params.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key.strip()] = val.strip()
    method = fields.get("signMethod", "")
    credential = fields.get("credential", "")
    access, sep, sig = credential.partition(":")
    if not method.upper().startswith("HMAC-") or not sep or not access or not sig:
        raise InvalidAuthParamsError("Malformed authorization header")
    hash_type = method[5:].lower().replace("-", "")
    if hash_type not in hashlib.algorithms_guaranteed or hash_type.startswith("shake"):
        raise InvalidAuthParamsError(f"Unsupported signing method {method!r}")
    return hash_type, access, sig


def parse_date(value: str) -> datetime:
    """Parse a Date header: ISO 8601 as the SDK sends it, or RFC 1123; naive means UTC."""
    from email.utils import parsedate_to_datetime

    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            raise InvalidAuthParamsError(f"Malformed Date header {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed  # keep its own offset: the signing key uses the date as written


def verify(
    headers: Mapping[str, str],
    *,
    method: str,
    path_qs: str,
    host: str,
    content_type: str,
    lookup_secret: Callable[[str], str | None],
    now: datetime | None = None,
) -> str:
    """Check a signed request; return the access key, or raise the Backend.AI error for it.

    ``headers`` must be case-insensitive (aiohttp's CIMultiDict is). The checks follow the
    manager: date within ±15 minutes (400), known access key and matching signature (401),
    compared in constant time. An unknown access key and a wrong signature are the same
    error, with the same message, after the same work (a signature is computed either way), so
    a caller cannot tell which access keys exist.
    """
    authorization = headers.get("Authorization")
    if not authorization:
        raise AuthenticationError("Unauthorized access")
    date_header = headers.get("Date") or headers.get("X-BackendAI-Date")
    if not date_header:
        raise InvalidAuthParamsError("Date header is missing")
    date = parse_date(date_header)
    current = now or datetime.now(timezone.utc)
    if abs(current - date) > MAX_CLOCK_SKEW:
        raise InvalidAuthParamsError("Date/time sync error")
    hash_type, access_key, sig = parse_authorization(authorization)
    secret = lookup_secret(access_key)
    version = headers.get("X-BackendAI-Version", "")
    to_sign = string_to_sign(method, path_qs, date_header, host, content_type, version)
    expected = signature(secret if secret is not None else _NO_SECRET, date, host, to_sign,
                         hash_type)  # fmt: skip
    if not secrets.compare_digest(expected.encode(), _utf8(sig)) or secret is None:
        raise AuthenticationError(CREDENTIAL_MISMATCH)
    return access_key
