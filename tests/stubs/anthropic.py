"""A local stand-in for the Anthropic Messages API, enough for Claude Code to run offline.

    with AnthropicStub() as stub:            # listens on 127.0.0.1:<free port>
        env = {"ANTHROPIC_BASE_URL": stub.url, "ANTHROPIC_API_KEY": "sk-test"}
        ...                                   # run `claude -p ...` against it
        stub.behaviour = "429"                # from now on every model call is refused
        assert stub.count == 2                # model calls (POST /v1/messages) so far

Scripted like the recorded samples: a model turn that has not written yet answers with one
`Write` tool call (`hello.txt` = "hi" in the agent's working directory, which it reads
from the system prompt; or `write_to`, an absolute path); a turn that gets
a tool result back answers "done"; a later prompt in a conversation that already holds a
tool call (a resumed session) answers "ok (turn without tool)". Calls without tools (the
CLI's own helper requests) get a short text.

`behaviour`, switchable while CLIs are talking to it:
- "ok": the script above, streamed as SSE (message_start, content_block_start/delta/stop,
  message_delta with usage, message_stop);
- "429": `rate_limit_error` with `retry-after: <retry_after>`; with `unified_reset` set
  (epoch seconds) it also sends the subscription headers `anthropic-ratelimit-unified-*`
  (status rejected, reset, representative claim five_hour);
- "529": `overloaded_error`;
- "hang": accepts the request and never answers (until the stub closes).

Every request is recorded in `requests` (method, path, headers, JSON body). Several stubs
can run at once, each on its own port and thread.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

BEHAVIOURS = ("ok", "429", "529", "hang")
RESUMED_TEXT = "ok (turn without tool)"
_CWD = re.compile(r"Primary working directory: (\S+)")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any = None  # the parsed JSON body, or the raw text if it was not JSON

    @property
    def is_model_call(self) -> bool:
        return self.method == "POST" and self.path.split("?")[0] == "/v1/messages"

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or []) if isinstance(self.body, dict) else []


@dataclass
class AnthropicStub:
    behaviour: str = "ok"
    retry_after: float | None = 1.0  # seconds, sent with "429"
    unified_reset: float | None = None  # epoch seconds: also send the subscription headers
    model: str | None = None  # the model to report; None: the one asked for
    file_name: str = "hello.txt"  # written in the agent's working directory...
    write_to: str | None = None  # ...unless this absolute path is set
    file_content: str = "hi"
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> AnthropicStub:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()  # releases hanging requests
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AnthropicStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stub is not started; use `with AnthropicStub() as stub:`")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- what it saw -----------------------------------------------------------------------

    @property
    def model_calls(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.is_model_call]

    @property
    def count(self) -> int:
        """Model calls (POST /v1/messages) received so far, answered or not."""
        return len(self.model_calls)

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    # --- the script ------------------------------------------------------------------------

    def reply(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        """The content blocks and stop reason of the next model turn."""
        messages = body.get("messages") or []
        if not body.get("tools"):
            return [{"type": "text", "text": "stub"}], "end_turn"
        last = messages[-1] if messages else {}
        if last.get("role") == "user" and _has_block(last, "tool_result"):
            return [{"type": "text", "text": "done"}], "end_turn"
        if any(m.get("role") == "assistant" and _has_block(m, "tool_use") for m in messages):
            return [{"type": "text", "text": RESUMED_TEXT}], "end_turn"
        # The last one: a session resumed from another checkout (another node) holds the
        # old working directory in its first turn, and the CLI states the new one after it.
        cwd = next(filter(None, map(_CWD.search, reversed(_texts(body)))), None)
        path = f"{cwd.group(1)}/{self.file_name}" if cwd else self.file_name
        path = self.write_to or path
        tool_use = {
            "type": "tool_use",
            "id": f"toolu_stub_{self._next_id()}",
            "name": "Write",
            "input": {"file_path": path, "content": self.file_content},
        }
        return [{"type": "text", "text": "I'll create the file."}, tool_use], "tool_use"


def _texts(body: dict[str, Any]) -> list[str]:
    """Every text of the request: the system prompt and the messages' text blocks."""
    texts: list[str] = []
    for part in [body.get("system"), *(m.get("content") for m in body.get("messages") or [])]:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, list):
            texts.extend(b["text"] for b in part if isinstance(b, dict) and "text" in b)
    return texts


def _has_block(message: dict[str, Any], kind: str) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == kind for block in content
    )


def _handler_for(stub: AnthropicStub) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.stub = stub
    return Handler


class _Handler(BaseHTTPRequestHandler):
    stub: AnthropicStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read(self) -> Request:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        request = Request(self.command, self.path, dict(self.headers.items()), body)
        self.stub._record(request)
        return request

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_stub_{uuid.uuid4().hex[:12]}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, message: str, headers: dict[str, str]) -> None:
        payload = {"type": "error", "error": {"type": kind, "message": message}}
        self._json(status, payload, headers)

    def do_HEAD(self) -> None:  # the CLI's connectivity check (HEAD /api/hello)
        self._read()
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._read()
        self._error(404, "not_found_error", f"the stub has no {self.path}", {})

    def do_POST(self) -> None:
        request = self._read()
        path = self.path.split("?")[0]
        if path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": 100})
        elif path != "/v1/messages":
            self._error(404, "not_found_error", f"the stub has no {self.path}", {})
        elif not isinstance(request.body, dict):
            self._error(400, "invalid_request_error", "expected a JSON body", {})
        else:
            self._messages(request.body)

    def _messages(self, body: dict[str, Any]) -> None:
        stub = self.stub
        behaviour = stub.behaviour
        if behaviour == "hang":
            stub._closed.wait()
            self.close_connection = True
            return
        if behaviour == "429":
            headers = {"x-should-retry": "true"}
            if stub.retry_after is not None:
                headers["retry-after"] = f"{stub.retry_after:g}"
            if stub.unified_reset is not None:
                headers.update(
                    {
                        "anthropic-ratelimit-unified-status": "rejected",
                        "anthropic-ratelimit-unified-reset": str(int(stub.unified_reset)),
                        "anthropic-ratelimit-unified-representative-claim": "five_hour",
                    }
                )
            message = "Number of request tokens has exceeded your per-minute rate limit (stub)"
            self._error(429, "rate_limit_error", message, headers)
            return
        if behaviour == "529":
            self._error(529, "overloaded_error", "Overloaded (stub)", {})
            return
        if behaviour != "ok":
            self._error(500, "api_error", f"unknown stub behaviour {behaviour!r}", {})
            return
        self._stream(body, *stub.reply(body))

    def _stream(self, body: dict[str, Any], blocks: list[dict[str, Any]], stop: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", f"req_stub_{uuid.uuid4().hex[:12]}")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        model = self.stub.model or body.get("model") or "claude-stub"
        message: dict[str, Any] = {
            "id": f"msg_stub_{self.stub._next_id()}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 100,
                "output_tokens": 1,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
        self._event("message_start", {"type": "message_start", "message": message})
        for index, block in enumerate(blocks):
            start: dict[str, Any]
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                delta = {"type": "text_delta", "text": block["text"]}
            else:
                start = {**block, "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            self._event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            self._event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
        )
        self._event("message_stop", {"type": "message_stop"})

    def _event(self, name: str, data: dict[str, Any]) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


def wait_for(predicate: Any, timeout_s: float = 10.0, poll_s: float = 0.05) -> bool:
    """Poll `predicate()` until it is true or `timeout_s` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
