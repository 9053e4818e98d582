"""
C{--log-format json}: every log event, the access log's lines among them,
written as one JSON object per line for log shippers, through
C{twisted.logger}'s JSON observer.

twistd picks its log observer after the plugin has made its service, from
an L{ILogObserver} component on the application if there is one (as a
``.tac`` file sets it): L{LogFormatChoice} is how a plugin's service sets it.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import ILogObserver, LogEvent, eventAsText, jsonFileLogObserver
from twisted.python import usage
from twisted.python.components import Componentized
from zope.interface import provider

#: The values of C{--log-format}.
FORMATS = ("text", "json")


def log_format(value: str) -> str:
    """C{--log-format}'s coercer: one of L{FORMATS}."""
    if value not in FORMATS:
        raise usage.UsageError(f"--log-format must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


def json_observer(out: IO[str]) -> ILogObserver:
    """
    An observer writing each event to C{out} as a line of JSON: its
    fields as C{twisted.logger} serializes them, plus C{text}, the event's
    message as the text log would write it (a failure's traceback
    included), and C{level}, its level's name.
    """
    write = jsonFileLogObserver(out, recordSeparator="")

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        level = event.get("log_level")
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        write({**event, "text": text, "level": level.name if level else None})

    return observe


class LogFormatChoice:
    """
    A mixin for the service a plugin makes: with C{log_format} C{"json"},
    twistd logs through L{json_observer} to standard output.
    """

    log_format = "text"

    def setServiceParent(self, parent: Componentized) -> None:
        super().setServiceParent(parent)
        if self.log_format == "json" and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, json_observer(sys.stdout))
