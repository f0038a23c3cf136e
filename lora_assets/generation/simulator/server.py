"""`ClaudeSimulator`: the loopback Anthropic API (start/stop, hold/release, config, stats) with
its request routing, auth, error shape and endpoints, and `serve` for the
`lora-assets simulate-claude` command."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .batches import MessageBatches, describe, results_jsonl, validate_requests
from .content import content_text, tokens
from .contract import (
    MESSAGES_MAX_BYTES,
    Refusal,
    check_batch,
    check_count_tokens,
    check_messages,
    check_size,
    record_refusal,
    warm_validators,
)
from .faults import FaultConfig, message_outcome
from .models import model_spec
from .ratelimit import RateLimits
from .replies import PromptCache, compose_reply, validate_params
from .stats import SimulatorStats
from .transport import Handler, HTTPServer

__all__ = ["ClaudeSimulator", "serve"]

log = logging.getLogger(__name__)

_BATCH_PATH_RE = re.compile(r"^/v1/messages/batches/([^/]+)(/cancel|/results)?$")


def _authenticated(h: Handler) -> bool:
    """Either credential the SDKs send: `x-api-key`, or `Authorization: Bearer` (SDK 2.x)."""
    if (h.headers.get("x-api-key") or "").strip():
        return True
    scheme, _, token = (h.headers.get("Authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


class ClaudeSimulator:
    """A loopback Anthropic API. Use as a context manager or call start()/stop()."""

    def __init__(self, config: FaultConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._config = config or FaultConfig()
        self._host = host
        self._port = port
        self._lock = threading.Lock()  # guards config, attempts and the rate windows
        self._stopping = threading.Event()
        self._released = threading.Event()  # cleared by `hold()`: answers wait, batches do not end
        self._released.set()
        self._server: HTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._base_url: str | None = None
        self.stats = SimulatorStats()
        # Fault selection uses its own attempt counters so reset_stats() does not replay faults.
        self._attempts: Counter[str] = Counter()
        self._rates = RateLimits()
        self._cache = PromptCache()
        self._batches = MessageBatches(self.stats, self._cache, self._released)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def config(self) -> FaultConfig:
        """The active fault configuration (assign a new FaultConfig to change faults mid-test)."""
        with self._lock:
            return self._config

    @config.setter
    def config(self, value: FaultConfig) -> None:
        with self._lock:
            self._config = value

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`; valid after start()."""
        if self._base_url is None:
            raise RuntimeError("ClaudeSimulator.base_url is only known after start()")
        return self._base_url

    def start(self) -> ClaudeSimulator:
        """Bind the socket and serve in background threads. Returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        warm_validators()
        server = HTTPServer((self._host, self._port), self)
        host, port = server.server_address[:2]
        self._base_url = f"http://{host}:{port}"
        self._server = server
        self._threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True, name="claude-sim"),
            threading.Thread(target=self._batch_clock, daemon=True, name="claude-sim-batches"),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, and join all threads. Idempotent."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on latency/slow faults
        server.shutdown()
        server.server_close()
        server.close_connections(timeout=5.0)
        for thread in self._threads:
            thread.join(5.0)
        self._threads = []

    def __enter__(self) -> ClaudeSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def hold(self) -> None:
        """Tests: Messages answers wait (after being counted) and no batch ends until `release()`,
        so a test can hold a run mid-batch for as long as it needs."""
        self._released.clear()

    def release(self) -> None:
        """End a `hold()`: waiting answers go out, due batches end."""
        self._released.set()

    def reset_stats(self) -> None:
        """Zero every counter in `stats` (fault attempt indices are kept)."""
        self.stats._reset()

    def _batch_clock(self) -> None:
        # Batches end on time even if nobody polls (stats then reflect delivered results).
        while not self._stopping.wait(0.02):
            self._batches.advance_all()

    # -- request plumbing -----------------------------------------------------------------

    def _handle(self, h: Handler, method: str) -> None:
        request_id = f"req_sim_{uuid.uuid4().hex[:24]}"
        try:
            self._route(h, method, request_id)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        except Exception as exc:  # a simulator bug must still answer in the API's error shape
            log.exception("claude simulator failed on %s %s", method, h.path)
            self._send_error(h, request_id, 500, "api_error", f"simulator internal error: {exc}")

    def _route(self, h: Handler, method: str, request_id: str) -> None:
        h.sim_model = None  # the model whose rate-limit buckets this answer's headers report
        length = int(h.headers.get("Content-Length") or 0)
        url = urlsplit(h.path)
        path = url.path.rstrip("/") or "/"
        if method == "POST" and (refusal := self._too_large(path, length)) is not None:
            h.close_connection = True  # the body is not read: the connection cannot be reused
            self._refuse(h, request_id, refusal)
            return
        raw = h.rfile.read(length) if length else b""

        if not _authenticated(h):
            self._send_error(
                h, request_id, 401, "authentication_error", "missing credentials: send x-api-key or Authorization: Bearer"
            )
            return
        if not h.headers.get("anthropic-version"):
            self._invalid(h, request_id, "anthropic-version: header is required")
            return
        body: Any = None
        if method == "POST":
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._invalid(h, request_id, "request body is not valid JSON")
                return

        if path == "/v1/messages" and method == "POST":
            self._messages(h, request_id, body, raw)
        elif path == "/v1/messages/count_tokens" and method == "POST":
            self._count_tokens(h, request_id, body, raw)
        elif path == "/v1/messages/batches" and method == "POST":
            self._create_batch(h, request_id, body, raw)
        elif path == "/v1/messages/batches" and method == "GET":
            self._list_batches(h, request_id, parse_qs(url.query))
        elif (match := _BATCH_PATH_RE.match(path)) is not None:
            self._batch_action(h, request_id, method, match.group(1), match.group(2) or "")
        else:
            self._send_error(h, request_id, 404, "not_found_error", f"no route for {method} {path}")

    def _too_large(self, path: str, length: int) -> Refusal | None:
        """413 for a body over the endpoint's size limit (Messages 32 MB, a batch 256 MB)."""
        if path == "/v1/messages/batches":
            return check_size(length, self.config.batch_max_bytes, "requests")
        if path in ("/v1/messages", "/v1/messages/count_tokens"):
            return check_size(length, MESSAGES_MAX_BYTES, "body")
        return None

    def _headers(self, h: Handler, request_id: str) -> dict[str, str]:
        now = time.time()
        with self._lock:
            rate_headers = self._rates.headers(getattr(h, "sim_model", None), now, self._config)
        return {"x-lora-simulator": "true", "request-id": request_id, **rate_headers}

    def _send(
        self,
        h: Handler,
        request_id: str,
        status: int,
        payload: bytes,
        content_type: str = "application/json",
        extra: dict[str, str] | None = None,
        deliver_key: str | None = None,
    ) -> bool:
        """Write one response; True if it reached a still-connected client. `deliver_key` counts a
        delivered conversation *before* the last byte goes out (so a client that has the response
        always sees the count) and takes it back if the write fails."""
        self.stats._response(status)
        if h.client_gone():
            h.close_connection = True
            return False
        if deliver_key is not None:
            self.stats._add("delivered_by_key", deliver_key)
        try:
            h.send_response(status)
            for name, value in {**self._headers(h, request_id), **(extra or {})}.items():
                h.send_header(name, value)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(payload)))
            if self._stopping.is_set() or h.close_connection:
                # Say so when this connection ends after the answer (a body left unread, a
                # stop): a client that pooled it would send its next request into a closed
                # socket ("Server disconnected without sending a response").
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            h.wfile.write(payload)
            h.wfile.flush()
            return True
        except OSError:
            if deliver_key is not None:
                self.stats._add("delivered_by_key", deliver_key, -1)
            h.close_connection = True
            return False

    def _send_json(
        self,
        h: Handler,
        request_id: str,
        status: int,
        obj: Any,
        extra: dict[str, str] | None = None,
        deliver_key: str | None = None,
    ) -> bool:
        payload = json.dumps(obj, ensure_ascii=False).encode()
        return self._send(h, request_id, status, payload, extra=extra, deliver_key=deliver_key)

    def _send_error(
        self, h: Handler, request_id: str, status: int, kind: str, message: str, extra: dict[str, str] | None = None
    ) -> bool:
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
        return self._send_json(h, request_id, status, body, extra)

    def _invalid(self, h: Handler, request_id: str, message: str) -> bool:
        return self._send_error(h, request_id, 400, "invalid_request_error", message)

    def _refuse(self, h: Handler, request_id: str, refusal: Refusal) -> bool:
        """Answer a body the contract refuses; logged, and appended as a JSON line to the file
        named by LORA_SIM_REFUSAL_LOG if set (to audit that a suite's bodies all pass)."""
        self.stats._add("by_outcome", "refused")
        record_refusal(f"{h.command} {h.path}", refusal)
        return self._send_error(h, request_id, refusal.status, refusal.kind, refusal.message)

    def _base_for(self, h: Handler) -> str:
        """The URL the client reached us at (its Host header), for links in answers."""
        host = h.headers.get("Host")
        return f"http://{host}" if host else self.base_url

    # -- Messages -------------------------------------------------------------------------

    def _messages(self, h: Handler, request_id: str, body: Any, raw: bytes) -> None:
        cfg = self.config
        if cfg.strict:
            if (refusal := check_messages(body, raw)) is not None:
                self._refuse(h, request_id, refusal)
                return
        elif (problem := validate_params(body)) is not None:
            self._invalid(h, request_id, problem)
            return
        found = model_spec(body["model"])
        model = found[0] if found else body["model"]
        h.sim_model = model
        key = h.headers.get("x-lora-item-id") or "body:" + hashlib.sha256(raw).hexdigest()[:32]
        metered_input = self._cache.metered_input(body)
        reserved = body["max_tokens"]
        now = time.time()
        with self._lock:
            cfg = self._config
            admission = self._rates.admit(model, now, cfg, metered_input, reserved)
            # Only a request the rate limiter admits reaches the model and draws an outcome: with
            # fixed keys the faults are then the same every run, however the 429s fall.
            attempt = self._attempts[key]
            if admission.admitted:
                self._attempts[key] += 1
        self.stats._add("attempts_by_key", key)

        output_tokens = 0  # what the OTPM reservation settles to (0 unless a message is written)
        try:
            if not admission.admitted:
                self.stats._add("by_outcome", "rate_limited")
                headers = {"retry-after": str(max(1, math.ceil(admission.retry_after_s)))}
                self._send_error(h, request_id, 429, "rate_limit_error", admission.message, headers)
                return
            outcome = message_outcome(cfg, key, attempt)
            if not self._wait_to_answer(h, cfg) or self._answered_with_error(h, request_id, outcome):
                return
            if outcome == "slow":
                self.stats._add("by_outcome", outcome)  # counted now: the client has likely given up by the end
                if self._stopping.wait(cfg.slow_s):
                    h.close_connection = True
                    return

            reply = compose_reply(body, key, attempt, outcome, "standard", self._cache, thinking_scale=cfg.thinking_scale)
            if outcome != "slow":
                self.stats._add("by_outcome", reply.outcome)
            output_tokens = reply.message["usage"]["output_tokens"]
            with self._lock:  # settle first: the answer's headers show the bucket after this request
                self._rates.settle(model, time.time(), cfg, reserved, output_tokens)
                reserved = 0
            self._send_json(h, request_id, 200, reply.message, deliver_key=key if reply.delivers else None)
        finally:
            if admission.admitted and reserved:
                with self._lock:
                    self._rates.settle(model, time.time(), cfg, reserved, output_tokens)

    def _wait_to_answer(self, h: Handler, cfg: FaultConfig) -> bool:
        """Wait out a `hold()` and the configured latency; False if the simulator stops meanwhile."""
        while not self._released.wait(0.02):
            if self._stopping.is_set():
                h.close_connection = True
                return False
        if cfg.latency_s and self._stopping.wait(cfg.latency_s):
            h.close_connection = True
            return False
        return True

    def _answered_with_error(self, h: Handler, request_id: str, outcome: str) -> bool:
        """Answer an overloaded (529) or server-error (500) outcome; False for any other outcome,
        which gets a message."""
        if outcome == "overloaded":
            self.stats._add("by_outcome", outcome)
            self._send_error(h, request_id, 529, "overloaded_error", "Overloaded")
        elif outcome == "server_error":
            self.stats._add("by_outcome", outcome)
            self._send_error(h, request_id, 500, "api_error", "Internal server error")
        else:
            return False
        return True

    def _count_tokens(self, h: Handler, request_id: str, body: Any, raw: bytes) -> None:
        if self.config.strict and (refusal := check_count_tokens(body, raw)) is not None:
            self._refuse(h, request_id, refusal)
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            self._invalid(h, request_id, "model and messages are required")
            return
        system = body.get("system") or ""
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        chars = len(content_text(system)) + sum(len(content_text(m.get("content", ""))) for m in messages)
        chars += len(json.dumps(body["tools"])) if body.get("tools") else 0
        self._send_json(h, request_id, 200, {"input_tokens": tokens(chars)})

    # -- Message Batches ------------------------------------------------------------------

    def _create_batch(self, h: Handler, request_id: str, body: Any, raw: bytes) -> None:
        cfg = self.config
        errored: dict[int, Refusal] = {}
        if cfg.strict:
            refusal, errored = check_batch(body, raw, cfg.batch_max_requests)
            if refusal is not None:
                self._refuse(h, request_id, refusal)
                return
        elif (problem := validate_requests(body)) is not None:
            self._invalid(h, request_id, problem)
            return
        batch = self._batches.create(body["requests"], cfg, errored)
        self._send_json(h, request_id, 200, describe(batch, self._base_for(h)))

    def _list_batches(self, h: Handler, request_id: str, query: dict[str, list[str]]) -> None:
        try:
            limit = int(query.get("limit", ["20"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            self._invalid(h, request_id, "limit: must be between 1 and 1000")
            return
        after, before = query.get("after_id", [None])[0], query.get("before_id", [None])[0]
        self._send_json(h, request_id, 200, self._batches.page(limit, after, before, self._base_for(h)))

    def _batch_action(self, h: Handler, request_id: str, method: str, batch_id: str, action: str) -> None:
        allowed = {"": ("GET", "DELETE"), "/cancel": ("POST",), "/results": ("GET",)}[action]
        if method not in allowed:
            self._send_error(h, request_id, 404, "not_found_error", f"no route for {method} {h.path}")
            return
        snapshot = self._batches.act(batch_id, method, action, self._base_for(h))
        if snapshot is None:
            self._send_error(h, request_id, 404, "not_found_error", f"message batch {batch_id!r} not found")
            return

        if action == "/results":
            if snapshot.status != "ended":
                message = f"message batch {batch_id} is {snapshot.status}: results exist once it has ended"
                self._invalid(h, request_id, message)
                return
            self._send(h, request_id, 200, results_jsonl(snapshot.lines), content_type="application/binary")
        elif method == "DELETE":
            if snapshot.status != "ended":
                message = f"message batch {batch_id} is {snapshot.status}: cancel it and let it end first"
                self._invalid(h, request_id, message)
                return
            self._send_json(h, request_id, 200, {"id": batch_id, "type": "message_batch_deleted"})
        else:  # retrieve, or cancel (idempotent: an ended or canceling batch is returned as is)
            self._send_json(h, request_id, 200, snapshot.json)


def serve(host: str, port: int, config: FaultConfig) -> None:
    """Run a simulator in the foreground until interrupted (Ctrl-C or SIGTERM); for the
    `lora-assets simulate-claude` command."""
    done = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set()) if in_main else None
    try:
        with ClaudeSimulator(config, host=host, port=port) as sim:
            # The bound address (port 0 picks one), on stderr so stdout stays free for the caller.
            print(f"Claude simulator listening on {sim.base_url}", file=sys.stderr, flush=True)
            while not done.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
