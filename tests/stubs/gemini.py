"""A stub of the Gemini API (generativelanguage v1beta) for driving the real Gemini CLI offline.

`GeminiStub()` serves on a free port of 127.0.0.1 from a background thread; point the CLI at
it with `GOOGLE_GEMINI_BASE_URL=stub.url`. It speaks as much of the API as the CLI uses:

- `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`: Server-Sent Events, each
  `data:` line one `GenerateContentResponse` (`candidates[0].content.parts`, `usageMetadata`).
  The script is stateless, read from the request's last content: a user text that names
  `hello.txt` gets a `write_file` functionCall that creates it with "hi"; anything else (the
  function's response, a later turn) gets the final text "done".
- `POST /v1beta/models/{model}:generateContent`: the same script, as one JSON object (the CLI
  uses it for side requests).
- `POST /v1beta/models/{model}:countTokens`: a rough count.
- anything else: 404 with a Google error body (logged, so unexpected calls show up).

`behaviour` can be switched at any time: "ok" (the script), "429" (RESOURCE_EXHAUSTED with a
`RetryInfo` of `retry_delay`), "503" (UNAVAILABLE: the model is overloaded), "hang" (accept
the request and never answer, until the stub stops). `requests` logs every request
(method, path, query, headers, body); `model_requests` counts the generate calls. Each
stub has its own port and state, so several can serve at once.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

Behaviour = Literal["ok", "429", "503", "hang"]

_MODEL_CALL = re.compile(r"^/v1(?:beta|alpha)?/models/(?P<model>[^:/]+):(?P<method>[A-Za-z]+)$")
# Per reply: 100 prompt tokens of which 40 cached, 5 of text and 3 of thinking.
USAGE = {
    "promptTokenCount": 100,
    "cachedContentTokenCount": 40,
    "candidatesTokenCount": 5,
    "thoughtsTokenCount": 3,
    "totalTokenCount": 108,
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: str
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, or None


def _error(code: int, status: str, message: str, details: list[Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return json.dumps({"error": error}).encode()


def _last_content(body: Any) -> dict[str, Any]:
    contents = body.get("contents") if isinstance(body, dict) else None
    return contents[-1] if isinstance(contents, list) and contents else {}


def scripted_reply(body: Any, model: str = "gemini-2.5-flash") -> dict[str, Any]:
    """The next model turn for a request: a write_file call if the newest part is a user
    text naming hello.txt (the CLI puts its session context in earlier parts), else the
    final text."""
    parts = _last_content(body).get("parts") or [{}]
    if "hello.txt" in str(parts[-1].get("text", "")):
        part: dict[str, Any] = {
            "functionCall": {
                "name": "write_file",
                "args": {"file_path": "hello.txt", "content": "hi"},
            }
        }
    else:
        part = {"text": "done"}
    return {
        "candidates": [
            {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": USAGE,
        "modelVersion": model,
    }


@dataclass
class GeminiStub:
    behaviour: Behaviour = "ok"
    retry_delay: str = "1s"  # the RetryInfo a 429 carries
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stub is not running; use `with GeminiStub() as stub:`")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def model_requests(self) -> int:
        """Generate calls received (any behaviour)."""
        with self._lock:
            return sum(1 for r in self.requests if r.path.endswith("GenerateContent"))

    def paths(self) -> list[str]:
        with self._lock:
            return [f"{r.method} {r.path}" for r in self.requests]

    def start(self) -> GeminiStub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> GeminiStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._serve(None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                self._serve(body)

            def _send(self, code: int, payload: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _serve(self, body: Any) -> None:
                url = urlsplit(self.path)
                headers = {name.lower(): value for name, value in self.headers.items()}
                stub._record(Request(self.command, url.path, url.query, headers, body))
                match = _MODEL_CALL.match(url.path)
                if match is None or self.command != "POST":
                    self._send(404, _error(404, "NOT_FOUND", f"{url.path} is not stubbed"))
                    return
                method = match["method"]
                if method == "countTokens":
                    text = json.dumps(body or {})
                    self._send(200, json.dumps({"totalTokens": len(text) // 4}).encode())
                    return
                if method not in {"generateContent", "streamGenerateContent"}:
                    self._send(404, _error(404, "NOT_FOUND", f"{method} is not stubbed"))
                    return
                behaviour = stub.behaviour
                if behaviour == "hang":
                    stub._stopping.wait()
                    self.close_connection = True
                    return
                if behaviour == "429":
                    retry = {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": stub.retry_delay,
                    }
                    message = "Resource has been exhausted (e.g. check quota). (fake)"
                    self._send(429, _error(429, "RESOURCE_EXHAUSTED", message, [retry]))
                    return
                if behaviour == "503":
                    message = "The model is overloaded. Please try again later. (fake)"
                    self._send(503, _error(503, "UNAVAILABLE", message))
                    return
                reply = json.dumps(scripted_reply(body, match["model"]))
                if method == "generateContent":
                    self._send(200, reply.encode())
                else:
                    self._send(200, f"data: {reply}\r\n\r\n".encode(), "text/event-stream")

        return Handler
