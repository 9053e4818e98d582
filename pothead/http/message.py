"""
What pothead's readers of HTTP/1.1 messages share once llhttp has
parsed them (L{pothead.http.llhttp}): the error a malformed one raises, and how
to read their header fields.
"""

from __future__ import annotations

from http import HTTPStatus

#: Statuses whose responses never have a body (RFC 9110 section 6.4.1).
NO_BODY_CODES = (204, 304)

#: Where RFC 9110 renamed a status that Python's L{HTTPStatus} still
#: calls by its RFC 7231 name.
_RFC_9110_PHRASES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


def reason_phrase(code: int) -> bytes:
    """
    The reason phrase pothead sends with a status of its own (RFC 9110's).
    """
    return _RFC_9110_PHRASES.get(code, HTTPStatus(code).phrase).encode("ascii")


class BadMessage(ValueError):
    """
    Bytes that are not a valid HTTP/1.1 message, or one pothead refuses.
    """


def field_values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """
    The values of every field called C{name} (lower case), in order.
    """
    return [value for key, value in fields if key.lower() == name]


def field_tokens(fields: list[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """
    The comma-separated tokens of every C{name} field, lower case.
    """
    return {
        token.strip().lower()
        for value in field_values(fields, name)
        for token in value.split(b",")
        if token.strip()
    }
