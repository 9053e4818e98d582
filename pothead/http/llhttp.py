"""
pothead's one door to llhttp, the HTTP/1.1 parser of Node.js, through its
Python binding httptools.

llhttp is strict by default (no lenient flag is ever set here): it refuses
obs-fold, bare CR or LF line ends, control bytes in names and values,
invalid, duplicate or overflowing ``Content-Length``, ``Transfer-Encoding``
beside ``Content-Length``, and malformed chunks and trailers, which are
what request smuggling is built from.  pothead's parsers are thin
protocols around it (see docs/architecture.md, "What parses what", for
what it does and does not do): its callbacks build heads and hand on
bodies, and may refuse with a L{BadMessage} of their own; L{feed} turns
either kind of refusal into that one exception.
"""

from __future__ import annotations

from typing import Callable, Union

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
    HttpResponseParser,
)

from pothead.http.message import BadMessage

Parser = Union[HttpRequestParser, HttpResponseParser]


def feed(parser: Parser, data: bytes, refused: Callable[[HttpParserError], BadMessage]) -> int:
    """
    Parse C{data}.

    :param refused: makes the exception raised for bytes llhttp refuses.
    :return: C{-1}, or, when a message switched protocols (an upgrade, a
        C{CONNECT}), where in C{data} the bytes after it start: llhttp
        stopped there, and parses what it is fed next as a new message.
    :raise BadMessage: for a message llhttp refuses (made by C{refused}),
        or the one a callback raised.
    """
    try:
        parser.feed_data(data)
    except HttpParserUpgrade as upgrade:
        return upgrade.args[0]
    except HttpParserCallbackError as failed:
        # A callback raised: llhttp stopped, and httptools keeps what was
        # raised as the context.
        if failed.__context__ is None:
            raise
        raise failed.__context__ from None
    except HttpParserError as error:
        raise refused(error) from None
    return -1
