"""
Bearer tokens for the worker port.

Whoever can attach to a hub receives every consumer's requests, so a hub
reachable by anyone but its own workers must require a token.  The token
comes from a file (``--token-file``) or the ``POTHEAD_TOKEN`` environment
variable, never from the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import hmac
import os

#: The environment variable both commands read the token from.
TOKEN_ENV = "POTHEAD_TOKEN"


class TokenError(Exception):
    """
    A token file that cannot be used.
    """


def load_token(path: str | None, environ: dict[str, str] = os.environ) -> str | None:
    """
    The configured token: the file's first line if C{path} is given, else
    C{POTHEAD_TOKEN}, else L{None} (no token).

    :raise TokenError: if the file cannot be read or holds no token.
    """
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            raise TokenError(f"cannot read token file {path}: {e.strerror}") from None
        if not token:
            raise TokenError(f"token file {path} is empty")
        return token
    return environ.get(TOKEN_ENV, "").strip() or None


class TokenCheck:
    """
    The hub's token policy: accept everyone when no token is set,
    otherwise exactly ``Authorization: Bearer <token>``.
    """

    def __init__(self, token: str | None) -> None:
        self._expected = b"Bearer " + token.encode("utf-8") if token else None

    @property
    def required(self) -> bool:
        return self._expected is not None

    def accepts(self, authorization: bytes) -> bool:
        """
        Whether an ``Authorization`` header value carries the token.  The
        comparison takes the same time wherever the first difference is.
        """
        if self._expected is None:
            return True
        return hmac.compare_digest(authorization.strip(), self._expected)
