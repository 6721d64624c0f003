"""CORS for pages on other origins (`CORS_ORIGINS`), with refusals as JSON errors.

Starlette's middleware answers a preflight it refuses with a plain-text 400; every other
refusal pgcast makes is a JSON body naming the problem, so this one is too.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from backend.interface.http.errors import RequestError, error_response

REFUSED = "Disallowed CORS "


class JsonCorsMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = bytes(response.body).decode().removeprefix(REFUSED)
        answer = error_response(
            RequestError(
                400,
                "invalid_request",
                f"CORS preflight refused: its {refused} not allowed here (CORS_ORIGINS)",
            )
        )
        for name, value in response.headers.items():
            if name not in ("content-type", "content-length"):
                answer.headers[name] = value
        return answer
