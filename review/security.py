"""Passwords, API tokens, session cookies, CSRF tokens and the sign-in rate limit.

- Passwords: argon2id (argon2-cffi's ``PasswordHasher`` defaults, RFC 9106 low-memory profile); hashes
  made with older parameters are re-hashed at the next sign-in (:func:`verify_password`).
- API tokens: 32 random bytes (URL-safe text) shown once; stored as hex SHA-256 (:func:`hash_token`).
- Sessions: a cookie signed with itsdangerous (``URLSafeTimedSerializer``, salt ``fairnode.session``) holding
  the user id, the user's session version and a CSRF token. It is re-signed on every request, and one whose
  signature is older than the idle limit is refused: that is the idle expiry. ``HttpOnly``,
  ``SameSite=Strict``, ``Secure`` under TLS. Bumping the user's session version (sign-out, disable) ends it.
- CSRF: a synchronizer token kept in the signed session and sent back in the ``csrf_token`` form field or the
  ``X-CSRF-Token`` header on every state-changing request made with the cookie (bearer-token calls carry no
  ambient credential and need none). Signing in needs the token of the pre-sign-in session the sign-in page
  sets, so a login cannot be forged either.
- Sign-in rate limit: a moving window per user name and per client address (the ``limits`` package, the one
  slowapi is built on; slowapi's decorators key on the request alone, and the user name is in the form).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, replace

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

__all__ = [
    "COOKIE_NAME",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LoginLimiter",
    "SessionCodec",
    "SessionData",
    "csrf_matches",
    "hash_password",
    "hash_token",
    "new_token",
    "verify_password",
]

logger = logging.getLogger(__name__)

COOKIE_NAME = "fairnode_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
#: Shortest password accepted.
MIN_PASSWORD_LENGTH = 10

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """The argon2id hash of a password (a ``ValueError`` for one shorter than 10 characters)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password has {len(password)} characters; at least {MIN_PASSWORD_LENGTH} are needed")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> tuple[bool, str | None]:
    """Whether ``password`` matches the hash, and a new hash when the stored one should be upgraded."""
    try:
        _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, None
    return True, (_hasher.hash(password) if _hasher.check_needs_rehash(password_hash) else None)


def new_token() -> str:
    """A fresh API token (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """How a token is stored: hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def csrf_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison of the session's CSRF token and the one sent."""
    return bool(expected) and given is not None and hmac.compare_digest(expected.encode(), given.encode())


@dataclass(frozen=True)
class SessionData:
    """What the session cookie holds: no user before sign-in, always a CSRF token."""

    csrf: str
    user_id: int | None = None
    version: int = 0

    @classmethod
    def anonymous(cls) -> SessionData:
        """A pre-sign-in session with a fresh CSRF token."""
        return cls(csrf=secrets.token_urlsafe(24))

    def signed_in(self, user_id: int, version: int) -> SessionData:
        """The session after signing in (a new CSRF token: no fixation)."""
        return replace(self, csrf=secrets.token_urlsafe(24), user_id=user_id, version=version)


class SessionCodec:
    """Signs and reads session cookies.

    Parameters
    ----------
    secret : bytes
        From :func:`review.config.session_secret`.
    idle_seconds : float
        A cookie signed longer ago than this is refused.
    """

    def __init__(self, secret: bytes, idle_seconds: float) -> None:
        if not secret:
            raise ValueError("the session secret is empty; see review.config.session_secret")
        self._serializer = URLSafeTimedSerializer(secret, salt="fairnode.session")
        self.idle_seconds = idle_seconds

    def dumps(self, data: SessionData) -> str:
        """The cookie value."""
        return str(self._serializer.dumps({"c": data.csrf, "u": data.user_id, "v": data.version}))

    def loads(self, value: str | None) -> SessionData | None:
        """The session in a cookie value, or ``None`` when it is missing, forged or idle too long."""
        if not value:
            return None
        try:
            raw = self._serializer.loads(value, max_age=max(1, round(self.idle_seconds)))
        except SignatureExpired:
            logger.info("session cookie refused: idle longer than %.0f s", self.idle_seconds)
            return None
        except BadSignature:
            logger.info("session cookie refused: bad signature")
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("c"), str):
            return None
        user_id, version = raw.get("u"), raw.get("v")
        return SessionData(
            csrf=raw["c"],
            user_id=user_id if isinstance(user_id, int) else None,
            version=version if isinstance(version, int) else 0,
        )


class LoginLimiter:
    """Sign-in attempts allowed per user name and per client address (in memory, per process).

    Parameters
    ----------
    per_user, per_address : str
        Rates in the ``limits`` syntax, e.g. ``"5/minute"``.
    """

    def __init__(self, per_user: str, per_address: str) -> None:
        self._per_user: RateLimitItem = parse(per_user)
        self._per_address: RateLimitItem = parse(per_address)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, *, username: str, address: str) -> int | None:
        """Count one attempt; ``None`` when allowed, else the seconds until the next one is.

        Both windows are checked before either is counted, so a refused attempt does not extend its own wait.
        """
        checks = ((self._per_user, "user", username.lower()), (self._per_address, "address", address))
        for item, kind, key in checks:
            if not self._limiter.test(item, kind, key):
                reset, _remaining = self._limiter.get_window_stats(item, kind, key)
                logger.warning("sign-in refused: too many attempts for this %s", kind)
                return max(1, int(reset - time.time()) + 1)
        for item, kind, key in checks:
            self._limiter.hit(item, kind, key)
        return None
