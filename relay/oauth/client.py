"""atproto OAuth client (confidential, ``private_key_jwt``): sign in with any atproto handle.

    start(handle)  : resolve identity -> PDS protected-resource metadata -> authorization-server
                     metadata -> PAR (PKCE S256, DPoP, client assertion) -> authorize URL
    callback(query): state (single use, unexpired) -> iss -> token (DPoP, client assertion) -> sub
    refresh(tokens): refresh grant with the session's DPoP key

DPoP nonces (``use_dpop_nonce``) are remembered per origin and retried once with a fresh proof and a
fresh client assertion (the assertion's ``jti`` must never repeat). Every URL the client talks to must be
https and every connection passes relay.net.egress (http only in --dev or to a loopback test peer). Every
answer is read within ``max_bytes`` (``relay.net.fetch``) and each of ``start``/``callback``/``refresh`` has
one overall ``deadline``: the servers involved are chosen by whoever signs in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
from joserfc import jwt
from joserfc.jwk import ECKey

from relay.identity import Identity, IdentityError, IdentityResolver, check_url
from relay.net.egress import Egress
from relay.net.fetch import METADATA_BYTES, Fetched, FetchError, fetch, get_object
from relay.oauth.keys import ClientKeys
from relay.store.aio import AsyncStore

SCOPE = "atproto"
PENDING_TTL = 600.0  # seconds a sign-in may take between PAR and the callback
MAX_PENDING = 10_000
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class OAuthError(Exception):
    """Sign-in failed; ``error`` is the OAuth error code when the server sent one."""

    def __init__(self, message: str, error: str = "oauth_error") -> None:
        super().__init__(message)
        self.error = error


class OAuthStateError(OAuthError):
    """Unknown, expired or already used ``state``: not a callback we are waiting for."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _htu(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass(slots=True)
class PendingAuth:
    state: str
    verifier: str
    issuer: str
    metadata: dict[str, Any]
    dpop_key: ECKey
    expected_did: str | None
    handle: str | None
    created: float


@dataclass(slots=True)
class TokenSet:
    sub: str
    issuer: str
    access_token: str
    refresh_token: str | None
    scope: str
    expires_at: float
    token_endpoint: str
    dpop_key: ECKey = field(repr=False)
    handle: str | None = None


class OAuthClient:
    def __init__(
        self, public_url: str, keys: ClientKeys, identity: IdentityResolver, *, scope: str = SCOPE,
        timeout: float = 10.0, egress: Egress | None = None,
        http: Callable[[], httpx.AsyncClient] | None = None, clock: Callable[[], float] = time.time,
        client_name: str = "Atmosphere Relay", max_bytes: int = METADATA_BYTES, deadline: float = 30.0,
        store: AsyncStore | None = None,
    ) -> None:
        self.public_url = public_url.rstrip("/")
        self.keys = keys
        self.identity = identity
        self.scope = scope
        self.egress = egress or identity.egress
        self.client_name = client_name
        self.max_bytes = max_bytes
        self.deadline = deadline
        self._http = http or self.egress.http_factory(timeout)
        self._clock = clock
        self._pending: dict[str, PendingAuth] = {}  # without a store (tests, tools)
        # With a store, sign-ins in progress live there: a restart between the redirect to the
        # authorization server and the callback no longer loses them (issue 14).
        self._store = store
        self._nonces: dict[str, str] = {}

    # -- what the relay publishes ------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self.public_url + "/oauth/client-metadata.json"

    @property
    def redirect_uri(self) -> str:
        return self.public_url + "/oauth/callback"

    @property
    def jwks_uri(self) -> str:
        return self.public_url + "/oauth/jwks.json"

    def client_metadata(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_name": self.client_name,
            "client_uri": self.public_url,
            "application_type": "web",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": [self.redirect_uri],
            "scope": self.scope,
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "dpop_bound_access_tokens": True,
            "jwks_uri": self.jwks_uri,
        }

    def jwks(self) -> dict[str, Any]:
        return self.keys.jwks()

    # -- sign-in ---------------------------------------------------------------------------------

    async def start(self, handle_or_did: str) -> tuple[str, PendingAuth]:
        """Resolve, discover, push the authorization request; returns (authorize URL, pending)."""
        with trio.move_on_after(self.deadline):
            return await self._start(handle_or_did)
        raise OAuthError(f"sign-in did not finish within {self.deadline:g} s (the PDS or its "
                         "authorization server is too slow)", "temporarily_unavailable")

    async def _start(self, handle_or_did: str) -> tuple[str, PendingAuth]:
        ident = await self.identity.resolve(handle_or_did)
        issuer, meta = await self.discover(ident)
        verifier = b64url(secrets.token_bytes(32))
        pending = PendingAuth(
            state=secrets.token_urlsafe(24), verifier=verifier, issuer=issuer, metadata=meta,
            dpop_key=ECKey.generate_key("P-256", private=True), expected_did=ident.did, handle=ident.handle,
            created=self._clock(),
        )
        form = {
            "client_id": self.client_id, "response_type": "code", "redirect_uri": self.redirect_uri,
            "scope": self.scope, "state": pending.state, "code_challenge_method": "S256",
            "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()),
        }
        if ident.handle:
            form["login_hint"] = ident.handle
        resp = await self._dpop_post(meta["pushed_authorization_request_endpoint"], pending.dpop_key,
                                     lambda: {**form, **self._assertion(issuer)})
        body = self._json(resp, "pushed authorization request")
        request_uri = body.get("request_uri")
        if not isinstance(request_uri, str):
            raise OAuthError("the authorization server returned no request_uri")
        await self._remember(pending)
        url = meta["authorization_endpoint"] + "?" + urllib.parse.urlencode(
            {"client_id": self.client_id, "request_uri": request_uri})
        return url, pending

    async def callback(self, params: Mapping[str, str]) -> TokenSet:
        """Check the redirect's state and iss, redeem the code, check sub. Every state works once."""
        with trio.move_on_after(self.deadline):
            return await self._callback(params)
        raise OAuthError(f"sign-in did not finish within {self.deadline:g} s", "temporarily_unavailable")

    async def _callback(self, params: Mapping[str, str]) -> TokenSet:
        state = params.get("state", "")
        pending = await self._take(state)
        if pending is None or pending.created + PENDING_TTL < self._clock():
            raise OAuthStateError("this sign-in link is unknown, expired or was already used; start again",
                                  "invalid_state")
        if params.get("iss") != pending.issuer:
            raise OAuthError(f"the response came from {params.get('iss')!r}, not from {pending.issuer}",
                             "invalid_issuer")
        if "error" in params:
            raise OAuthError(params.get("error_description") or params["error"], params["error"])
        code = params.get("code")
        if not code:
            raise OAuthError("the response carries no authorization code", "invalid_request")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "code_verifier": pending.verifier, "client_id": self.client_id}
        tokens = await self._token_request(pending.metadata, pending.issuer, pending.dpop_key, form)
        if pending.expected_did is not None and tokens.sub != pending.expected_did:
            raise OAuthError(f"signed in as {tokens.sub}, expected {pending.expected_did}", "invalid_sub")
        # The issuer must be the authority for the DID it vouches for (not just any server we were sent to).
        ident = await self.identity.resolve_did(tokens.sub)
        issuer, _ = await self.discover(ident)
        if issuer != pending.issuer:
            raise OAuthError(f"{tokens.sub}'s PDS uses {issuer}, not {pending.issuer}", "invalid_issuer")
        tokens.handle = pending.handle or ident.handle
        return tokens

    async def refresh(self, tokens: TokenSet) -> TokenSet:
        with trio.move_on_after(self.deadline):
            return await self._refresh(tokens)
        raise OAuthError(f"token refresh did not finish within {self.deadline:g} s", "temporarily_unavailable")

    async def _refresh(self, tokens: TokenSet) -> TokenSet:
        if not tokens.refresh_token:
            raise OAuthError("no refresh token", "invalid_grant")
        meta = await self._as_metadata(tokens.issuer)
        form = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token, "client_id": self.client_id}
        fresh = await self._token_request(meta, tokens.issuer, tokens.dpop_key, form)
        if fresh.sub != tokens.sub:
            raise OAuthError("the refreshed token names a different account", "invalid_sub")
        fresh.handle = tokens.handle
        return fresh

    async def resource_request(self, tokens: TokenSet, method: str, url: str, **kw: Any) -> Fetched:
        """A DPoP-bound call to the member's PDS (``Authorization: DPoP``, proof with ``ath``)."""
        ath = b64url(hashlib.sha256(tokens.access_token.encode()).digest())
        headers = dict(kw.pop("headers", {}) or {})
        headers["authorization"] = f"DPoP {tokens.access_token}"
        return await self._dpop_request(method, url, tokens.dpop_key, headers=headers, ath=ath, **kw)

    # -- discovery -------------------------------------------------------------------------------

    async def discover(self, ident: Identity) -> tuple[str, dict[str, Any]]:
        pds = ident.pds_url
        resource = await self._get_json(f"{pds}/.well-known/oauth-protected-resource", "protected resource metadata")
        servers = resource.get("authorization_servers")
        if not isinstance(servers, list) or not servers or not isinstance(servers[0], str):
            raise OAuthError(f"{pds} names no authorization server")
        issuer = servers[0].rstrip("/")
        return issuer, await self._as_metadata(issuer)

    async def _as_metadata(self, issuer: str) -> dict[str, Any]:
        self._check(issuer, "authorization server")
        meta = await self._get_json(f"{issuer}/.well-known/oauth-authorization-server",
                                    "authorization server metadata")
        if meta.get("issuer") != issuer:
            raise OAuthError(f"authorization server metadata names issuer {meta.get('issuer')!r}, not {issuer}")
        for key in ("authorization_endpoint", "token_endpoint", "pushed_authorization_request_endpoint"):
            if not isinstance(meta.get(key), str):
                raise OAuthError(f"{issuer} metadata lacks {key}")
            self._check(meta[key], key)
        if "ES256" not in (meta.get("dpop_signing_alg_values_supported") or []):
            raise OAuthError(f"{issuer} does not support ES256 DPoP proofs")
        if "private_key_jwt" not in (meta.get("token_endpoint_auth_methods_supported") or []):
            raise OAuthError(f"{issuer} does not accept private_key_jwt clients")
        if meta.get("authorization_response_iss_parameter_supported") is not True:
            raise OAuthError(f"{issuer} does not return iss in authorization responses")
        return meta

    def _check(self, url: str, what: str) -> None:
        try:
            check_url(url, egress=self.egress, what=what)
        except IdentityError as exc:
            raise OAuthError(str(exc)) from None

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        self._check(url, what)
        try:
            async with self._http() as client:
                return await get_object(client, url, headers={"accept": "application/json"},
                                        max_bytes=self.max_bytes, what=what)
        except FetchError as exc:
            raise OAuthError(str(exc)) from None

    # -- tokens, DPoP, client assertions ---------------------------------------------------------

    async def _token_request(
        self, meta: Mapping[str, Any], issuer: str, dpop_key: ECKey, form: dict[str, str]
    ) -> TokenSet:
        resp = await self._dpop_post(meta["token_endpoint"], dpop_key, lambda: {**form, **self._assertion(issuer)})
        body = self._json(resp, "token request")
        sub, token = body.get("sub"), body.get("access_token")
        if body.get("token_type", "").lower() != "dpop" or not isinstance(token, str):
            raise OAuthError("the token is not DPoP-bound", "invalid_token_type")
        if not isinstance(sub, str) or not sub.startswith("did:"):
            raise OAuthError("the token response names no DID (sub)", "invalid_sub")
        scope = str(body.get("scope", ""))
        if "atproto" not in scope.split():
            raise OAuthError(f"granted scope {scope!r} lacks atproto", "invalid_scope")
        refresh = body.get("refresh_token")
        return TokenSet(sub=sub, issuer=issuer, access_token=token,
                        refresh_token=refresh if isinstance(refresh, str) else None, scope=scope,
                        expires_at=self._clock() + float(body.get("expires_in", 0) or 0),
                        token_endpoint=meta["token_endpoint"], dpop_key=dpop_key)

    def _assertion(self, issuer: str) -> dict[str, str]:
        key = self.keys.signing
        now = int(self._clock())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": issuer, "jti": secrets.token_urlsafe(16),
                  "iat": now, "exp": now + 60}
        token = jwt.encode({"alg": "ES256", "typ": "JWT", "kid": key.kid}, claims, key)
        return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": token}

    def _proof(self, key: ECKey, method: str, url: str, ath: str | None) -> str:
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": _htu(url),
                                  "iat": int(self._clock())}
        nonce = self._nonces.get(_origin(url))
        if nonce:
            claims["nonce"] = nonce
        if ath:
            claims["ath"] = ath
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": dict(key.as_dict(private=False))}
        return jwt.encode(header, claims, key)

    async def _dpop_post(
        self, url: str, key: ECKey, form: Callable[[], dict[str, str]]
    ) -> Fetched:
        return await self._dpop_request("POST", url, key, data_fn=form)

    async def _dpop_request(
        self, method: str, url: str, key: ECKey, *, headers: dict[str, str] | None = None, ath: str | None = None,
        data_fn: Callable[[], dict[str, str]] | None = None, **kw: Any,
    ) -> Fetched:
        self._check(url, "endpoint")
        resp: Fetched | None = None
        async with self._http() as client:
            for _ in range(2):
                hdrs = dict(headers or {})
                hdrs["DPoP"] = self._proof(key, method, url, ath)
                if data_fn is not None:
                    kw["data"] = data_fn()
                try:
                    resp = await fetch(client, method, url, headers=hdrs, max_bytes=self.max_bytes,
                                       what="answer", **kw)
                except FetchError as exc:
                    raise OAuthError(str(exc)) from None
                if "dpop-nonce" in resp.headers:
                    self._nonces[_origin(url)] = resp.headers["dpop-nonce"]
                if resp.status_code in (400, 401) and _wants_nonce(resp):
                    continue
                return resp
        assert resp is not None
        return resp

    def _json(self, resp: Fetched, what: str) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise OAuthError(f"{what}: HTTP {resp.status_code}, not a JSON object")
        if resp.status_code not in (200, 201) or "error" in body:
            error = str(body.get("error", "server_error"))
            raise OAuthError(f"{what} refused: {error}: {body.get('error_description', '')}".rstrip(": "), error)
        return body

    async def _take(self, state: str) -> PendingAuth | None:
        if self._store is None:
            return self._pending.pop(state, None)
        found = await self._store.call(lambda s: s.take_oauth_pending(state))
        return None if found is None else _pending_from_json(found[0])

    async def _remember(self, pending: PendingAuth) -> None:
        if self._store is not None:
            blob = _pending_to_json(pending)
            await self._store.call(lambda s: s.put_oauth_pending(pending.state, blob, pending.created))
            return
        now = self._clock()
        if len(self._pending) >= MAX_PENDING:
            self._pending = {k: p for k, p in self._pending.items() if p.created + PENDING_TTL >= now}
            if len(self._pending) >= MAX_PENDING:
                raise OAuthError("too many sign-ins in progress; try again in a few minutes", "temporarily_unavailable")
        self._pending[pending.state] = pending


def _pending_to_json(p: PendingAuth) -> str:
    return json.dumps({"state": p.state, "verifier": p.verifier, "issuer": p.issuer, "metadata": p.metadata,
                       "dpop_key": dict(p.dpop_key.as_dict(private=True)), "expected_did": p.expected_did,
                       "handle": p.handle, "created": p.created})


def _pending_from_json(blob: str) -> PendingAuth:
    d = json.loads(blob)
    return PendingAuth(state=d["state"], verifier=d["verifier"], issuer=d["issuer"], metadata=d["metadata"],
                       dpop_key=ECKey.import_key(d["dpop_key"]), expected_did=d["expected_did"],
                       handle=d["handle"], created=float(d["created"]))


def _wants_nonce(resp: Fetched) -> bool:
    if "use_dpop_nonce" in resp.headers.get("www-authenticate", ""):
        return True
    try:
        body = resp.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("error") == "use_dpop_nonce"
