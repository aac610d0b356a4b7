"""The Python client's HTTP side: API keys, the credential of a request to a worker, and
inference over a worker's HTTP endpoint.

A mixin of control.client.Client. A request carries the API key of the settings
(INFERSTREAM_API_KEY) when one is set, else a signature by the acting user's key, else nothing
(an open platform); HTTPS is checked against INFERSTREAM_HTTP_CA_LOCATION (else the system's CAs).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from control.config import secret
from control.registry.api_keys import find_api_key
from control.registry.http_auth import new_api_key, sign_request
from control.registry.state import ApiKey
from schemas.errors import InferstreamError, Rejected

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from control.config import Settings
    from control.registry.events import ControlStatus
    from control.registry.state import Registry


class HttpError(InferstreamError):
    """A worker answered an HTTP request with an error; `status` is the HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status, self.reason = status, reason


class HttpClient:
    """Methods of Client for API keys and HTTP requests to workers."""

    settings: Settings

    if TYPE_CHECKING:
        def send(self, type: str, payload: Mapping[str, Any], **kw: Any) -> ControlStatus: ...
        def registry(self) -> Registry: ...
        def _ws(self, workspace: str | None) -> str: ...
        def _readable(self, workspace: str | None) -> tuple[str, Registry]: ...
        def _actor(self) -> str: ...
        def _signing_key(self) -> Ed25519PrivateKey | None: ...

    # -- API keys ----------------------------------------------------------------------------

    def create_api_key(self, name: str, scopes: Sequence[str] = ("infer",), *,
                       expires_at: datetime | None = None,
                       workspace: str | None = None) -> tuple[ApiKey, str]:
        """Make an API key of the workspace; returns it and the key itself, which nobody can
        see again (the registry keeps only a hash of its secret)."""
        ws = self._ws(workspace)
        key_id, token, digest = new_api_key()
        self.send("CreateApiKey", {"name": name, "key_id": key_id, "secret_sha256": digest,
                                   "scopes": list(scopes), "expires_at": expires_at},
                  workspace=ws)
        return self.registry().api_keys[key_id], token

    def api_keys(self, workspace: str | None = None) -> list[ApiKey]:
        """The workspace's keys, revoked ones too (never their secrets)."""
        ws, registry = self._readable(workspace)
        return sorted((k for k in registry.api_keys.values() if k.workspace == ws),
                      key=lambda k: (k.name, k.created_at))

    def revoke_api_key(self, name: str, workspace: str | None = None) -> ApiKey:
        """Revoke a key: every worker refuses it once it has read the event (seconds)."""
        ws = self._ws(workspace)
        key = find_api_key(self.registry(), ws, name)
        if key is None:
            raise Rejected(f"workspace {ws!r} has no API key {name!r} to revoke")
        self.send("RevokeApiKey", {"name": name}, workspace=ws)
        return self.registry().api_keys[key.key_id]

    # -- requests to workers ---------------------------------------------------------------

    def http_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """The Authorization header of a request to a worker (path with its query string)."""
        if self.settings.api_key is not None:
            return {"Authorization": f"Bearer {secret(self.settings.api_key)}"}
        key = self._signing_key()
        if key is None:
            return {}  # an open platform: nothing to prove
        return {"Authorization": sign_request(key, self._actor(), self.settings.namespace,
                                              method, path, body)}

    def infer_http(self, pipeline: str, record: bytes | Mapping[str, Any], *,
                   workspace: str | None = None, url: str | None = None,
                   timeout: float = 60.0) -> Any:
        """One record through a worker's `POST /pipelines/{name}/infer` (default: the worker
        these settings name, `settings.worker_url`); the result as JSON, or bytes for Avro.

        HttpError says why a request was refused (401, 403, 404, 413, 422, 503 ...).
        """
        body = record if isinstance(record, bytes) else json.dumps(record).encode()
        path = f"/pipelines/{quote(pipeline, safe='')}/infer"
        if workspace or self.settings.workspace:
            path += "?" + urlencode({"workspace": workspace or self.settings.workspace})
        base = (url or self.settings.worker_url).rstrip("/")
        request = urllib.request.Request(
            base + path, data=body, method="POST",
            headers={"Content-Type": "application/octet-stream",
                     **self.http_headers("POST", path, body)})
        tls = self.settings.http_client_tls() if base.startswith("https:") else None
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=tls) as response:
                data = response.read()
                kind = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raise HttpError(exc.code, _reason(exc)) from None
        except OSError as exc:
            raise InferstreamError(f"no worker answers at {base}: {exc}") from exc
        return json.loads(data) if kind.startswith("application/json") else data


def _reason(exc: urllib.error.HTTPError) -> str:
    body = exc.read()
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:500] or str(exc)
