"""A stub of the OpenAI API, enough for `codex exec` and `aider` to run offline.

`OpenAIStub()` serves, on a free port of 127.0.0.1 from a background thread, `POST
/v1/responses` (the Responses API, `stream: true`, server-sent events: Codex) and `POST
/v1/chat/completions` (Chat Completions, plain JSON or, with `stream: true`, server-sent
chunks: Aider, through LiteLLM); `url` is the base URL a client is given
(`http://127.0.0.1:<port>/v1`). Each instance has its own port, so several run at once.

The Responses script, decided from each request's `input` (so that a resumed thread works
too):
- the last item is a tool's output: answer with the final message "done";
- the last user message mentions `hello.txt`: call the shell tool the client offers
  (`exec_command`, or the older `shell`) with `command` (default `printf hi > hello.txt`);
- anything else: answer with the message "ok".
Every completed response reports `usage` of `input_tokens` / `output_tokens` (100 / 5).

The Chat Completions script, from the last user message: one that mentions `hello.txt`
gets `edit` (default: `hello.txt` = "hi" in Aider's "whole" edit format, a path line and
the whole file fenced), anything else "ok". `usage` reports `prompt_tokens` /
`completion_tokens` (the same `input_tokens` / `output_tokens`), with `cached_tokens` in
`prompt_tokens_details`.

`behaviour` (changeable at any time) is what the next requests get:
- "ok": the script above;
- "429": `429 Too Many Requests` with an OpenAI error body, plus `retry-after: <s>` when
  `retry_after` is set (and then, from Chat Completions, a message that says "Please try
  again in <s>s.", as the real API's do);
- "500": `500 Internal Server Error`;
- "overloaded": `503 Service Unavailable`, the API's "server is overloaded" error;
- "429-stream" (Responses only): `200`, then a `response.failed` event with the API's
  rate-limit error, whose message says "Please try again in <retry_after, default 20>s"
  (as the real API does mid-stream);
- "hang": the request is read, then never answered (until `stop()`).
`queue` holds behaviours for the next model calls, one each, before `behaviour` applies
again: `stub.queue = ["429"]` answers one call with a 429, then as `behaviour` says.

`requests` records every request (method, path, headers, JSON body); `request_count`
counts the model calls (`POST .../responses` and `.../chat/completions`). `cached_tokens` /
`cache_write_tokens` are reported as parts of `input_tokens`, as the API does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

Behaviour = Literal["ok", "429", "500", "overloaded", "429-stream", "hang"]
MODEL_PATHS = ("/responses", "/chat/completions")
LATER = "Please try again later."

ERRORS: dict[str, tuple[int, str, dict[str, Any]]] = {
    "429": (
        429,
        "Too Many Requests",
        {
            "message": "Rate limit reached for requests. Please try again later.",
            "type": "requests",
            "code": "rate_limit_exceeded",
        },
    ),
    "500": (
        500,
        "Internal Server Error",
        {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
        },
    ),
    "overloaded": (
        503,
        "Service Unavailable",
        {
            "message": "The server is overloaded. Please try again later.",
            "type": "server_error",
            "code": "server_is_overloaded",
        },
    ),
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _Counter:
    value: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> int:
        with self.lock:
            self.value += 1
            return self.value


class OpenAIStub:
    def __init__(
        self,
        behaviour: Behaviour = "ok",
        *,
        retry_after: float | None = None,
        input_tokens: int = 100,
        output_tokens: int = 5,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> None:
        self.behaviour: Behaviour = behaviour
        self.retry_after = retry_after
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cached_tokens = cached_tokens  # of input_tokens: read from the prompt cache
        self.cache_write_tokens = cache_write_tokens  # of input_tokens: written to it
        self.command = "printf hi > hello.txt"
        self.edit = "hello.txt\n```\nhi\n```\n"  # a chat completion's answer: Aider's "whole"
        self.queue: list[Behaviour] = []
        self.requests: list[Request] = []
        self._ids = _Counter()
        self._released = threading.Event()  # set on stop(): hanging requests end
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> OpenAIStub:
        stub = self

        class Handler(_Handler):
            owner = stub

        self._released.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"openai-stub-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stub is not running; use `with OpenAIStub() as stub:`")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        return sum(1 for r in self.requests if r.method == "POST" and r.path.endswith(MODEL_PATHS))

    def next_behaviour(self) -> Behaviour:
        """What the model call being answered gets: the queue's first, else `behaviour`."""
        with self._ids.lock:
            return self.queue.pop(0) if self.queue else self.behaviour

    # --- the script ------------------------------------------------------------------------

    def respond(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The server-sent events that answer one `POST /responses` in the "ok" behaviour."""
        n = self._ids.next()
        response: dict[str, Any] = {
            "id": f"resp_{n}",
            "object": "response",
            "status": "in_progress",
            "model": body.get("model", "gpt-fake"),
            "output": [],
        }
        item = self._next_item(body, n)
        done = {**response, "status": "completed", "output": [item]}
        done["usage"] = {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {
                "cached_tokens": self.cached_tokens,
                "cache_write_tokens": self.cache_write_tokens,
            },
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        return [
            ("response.created", {"response": response}),
            ("response.in_progress", {"response": response}),
            ("response.output_item.added", {"output_index": 0, "item": _in_progress(item)}),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": done}),
        ]

    def rate_limited(self) -> list[tuple[str, dict[str, Any]]]:
        """A stream that fails with the API's rate-limit error (the "429-stream" behaviour)."""
        n = self._ids.next()
        response = {"id": f"resp_{n}", "object": "response", "status": "in_progress", "output": []}
        wait = self.retry_after if self.retry_after is not None else 20
        error = {
            "code": "rate_limit_exceeded",
            "message": "Rate limit reached for gpt-fake in organization org-stub on tokens per "
            f"min (TPM): Limit 30000, Used 30000, Requested 900. Please try again in {wait:g}s.",
        }
        failed = {**response, "status": "failed", "error": error}
        return [
            ("response.created", {"response": response}),
            ("response.failed", {"response": failed}),
        ]

    def chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The answer to one `POST /chat/completions` in the "ok" behaviour."""
        n = self._ids.next()
        users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
        last = _chat_text(users[-1]) if users else ""
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 1_700_000_000 + n,
            "model": body.get("model", "gpt-fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self.edit if "hello.txt" in last else "ok",
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": self.input_tokens,
                "completion_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            },
        }

    def _next_item(self, body: dict[str, Any], n: int) -> dict[str, Any]:
        items = body.get("input") or []
        last = items[-1] if items else {}
        if last.get("type") in {"function_call_output", "custom_tool_call_output"}:
            return _message(n, "done")
        if "hello.txt" in _text(last):
            tools = {tool.get("name") for tool in body.get("tools") or []}
            if "exec_command" in tools or "shell" not in tools:
                return _call(n, "exec_command", {"cmd": self.command})
            return _call(n, "shell", {"command": ["bash", "-lc", self.command]})
        return _message(n, "ok")


def _text(item: dict[str, Any]) -> str:
    if item.get("type") != "message" or item.get("role") != "user":
        return ""
    content = item.get("content")
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def _chat_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def _chunks(completion: dict[str, Any]) -> Iterator[bytes]:
    """A chat completion as the server-sent chunks of `stream: true`, usage in the last."""
    head = {k: completion[k] for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk"
    message = completion["choices"][0]["message"]
    deltas = [
        {"role": "assistant", "content": ""},
        {"content": message["content"]},
    ]
    for delta in deltas:
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    last = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield f"data: {json.dumps({**last, 'usage': completion['usage']})}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _message(n: int, text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{n}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call(n: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{n}",
        "status": "completed",
        "call_id": f"call_{n}",
        "name": name,
        "arguments": json.dumps(arguments),
    }


def _in_progress(item: dict[str, Any]) -> dict[str, Any]:
    started = {**item, "status": "in_progress"}
    if item["type"] == "message":
        started["content"] = []
    else:
        started["arguments"] = ""
    return started


def _sse(events: list[tuple[str, dict[str, Any]]]) -> Iterator[bytes]:
    for seq, (kind, data) in enumerate(events):
        payload = json.dumps({"type": kind, "sequence_number": seq, **data})
        yield f"event: {kind}\ndata: {payload}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _record(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.owner.requests.append(Request(self.command, self.path, headers, body))
        return body

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._record()
        self._send(404, b'{"error":{"message":"not found"}}', "application/json")

    def do_POST(self) -> None:
        body = self._record()
        owner = self.owner
        if not self.path.endswith(MODEL_PATHS) or not isinstance(body, dict):
            self._send(404, b'{"error":{"message":"not found"}}', "application/json")
            return
        behaviour = owner.next_behaviour()
        if behaviour == "hang":
            owner._released.wait()
            self.close_connection = True
            return
        if behaviour in ERRORS:
            status, _, error = ERRORS[behaviour]
            extra = {}
            if owner.retry_after is not None:
                extra["retry_after"] = f"{owner.retry_after:g}"
                if behaviour == "429" and self.path.endswith("/chat/completions"):
                    wait = f"Please try again in {owner.retry_after:g}s."
                    error = {**error, "message": error["message"].replace(LATER, wait)}
            payload = json.dumps({"error": {"param": None, **error}}).encode()
            self._send(status, payload, "application/json", x_request_id="req_stub", **extra)
            return
        if self.path.endswith("/chat/completions"):
            completion = owner.chat_completion(body)
            if body.get("stream"):
                stream = b"".join(_chunks(completion))
                self._send(200, stream, "text/event-stream", cache_control="no-cache")
            else:
                self._send(200, json.dumps(completion).encode(), "application/json")
            return
        events = owner.rate_limited() if behaviour == "429-stream" else owner.respond(body)
        stream = b"".join(_sse(events))
        self._send(200, stream, "text/event-stream", cache_control="no-cache")
