"""Content negotiation for views whose success is not JSON (SSE, downloads, JSONL exports)."""

from collections.abc import Iterable

from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request


class FirstRenderer(BaseContentNegotiation):
    """Never a 406: the view's first renderer (JSON) serves its errors whatever `Accept` says.

    An EventSource sends `Accept: text/event-stream`, a download client may send
    `application/octet-stream`, and `?format=` names an export format rather than a renderer.
    """

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, str(renderer.media_type)
