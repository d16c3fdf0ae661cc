"""The tracking-server probe tells refused credentials from an unreachable server (fast tier:
a stdlib HTTP server in a thread stands in for MLflow's basic-auth app)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ecgtune.search.errors import TrackingError
from ecgtune.search.tracking import check_tracking_uri, probe_tracking_server

USER, PASSWORD, READER, SLOW = "alice", "s3cret", "bob", "carol"


class _BasicAuthHandler(BaseHTTPRequestHandler):
    """401 without valid credentials, 403 for the user without permission, 200 otherwise."""

    def do_GET(self) -> None:
        if self.path == "/health":  # open to everyone, as in MLflow's basic-auth app
            self.server.paths.append(self.path)  # type: ignore[attr-defined]
            self._answer(200)
            return
        header = self.headers.get("Authorization", "")
        user, password = "", ""
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        if user == SLOW:
            time.sleep(0.6)
            status = 200
        elif user == READER:
            status = 403
        elif (user, password) == (USER, PASSWORD):
            status = 200
        else:
            status = 401
        self._answer(status)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_server() -> Iterator[tuple[str, list[str]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BasicAuthHandler)
    server.paths = []  # type: ignore[attr-defined]
    # The slow user's client has hung up by the time it answers: not worth a traceback.
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.paths  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _login(monkeypatch: pytest.MonkeyPatch, user: str | None, password: str | None) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def test_right_credentials_pass_on_an_authenticated_api_call(auth_server, monkeypatch):
    uri, paths = auth_server
    _login(monkeypatch, USER, PASSWORD)
    check_tracking_uri(uri + "/")
    # Not /health: MLflow's basic-auth app answers that one without a login.
    assert paths == ["/health", "/api/2.0/mlflow/experiments/search?max_results=1"]


@pytest.mark.parametrize(("user", "password", "expected"), [
    (None, None, "requires a login (HTTP 401) and none was given"),
    (USER, "wrong", "refused the credentials of 'alice'"),
    (READER, "anything", "gave no permission (HTTP 403)"),
])
def test_refused_credentials_say_so(auth_server, monkeypatch, user, password, expected):
    uri, _ = auth_server
    _login(monkeypatch, user, password)
    with pytest.raises(TrackingError) as info:
        check_tracking_uri(uri)
    message = str(info.value)
    assert message.startswith("tracking server refused the credentials")
    assert expected in message and "\n" not in message
    assert "unreachable" not in message
    if password:
        assert password not in message


def test_unreachable_server_is_not_a_credentials_problem(monkeypatch):
    _login(monkeypatch, USER, PASSWORD)
    with pytest.raises(TrackingError, match="unreachable") as info:
        check_tracking_uri("http://127.0.0.1:9", timeout=2)
    assert "credentials" not in str(info.value)


def test_a_server_that_answers_health_but_not_its_api_says_so(auth_server, monkeypatch):
    uri, _ = auth_server
    _login(monkeypatch, SLOW, PASSWORD)
    with pytest.raises(TrackingError, match=r"answers /health but not its API") as info:
        probe_tracking_server(uri, api_timeout=0.2)
    assert "credentials" not in str(info.value)
