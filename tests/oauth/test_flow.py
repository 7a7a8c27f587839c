"""The relay's confidential atproto OAuth client against a real local PDS (no browser)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from joserfc.jwk import ECKey

from relay.oauth import ClientKeys, OAuthClient, OAuthError, OAuthStateError, client_from_config
from relay.store import open_store
from relay.store.aio import AsyncStore
from tests.localpds.fixture import LocalPds, ProbeTls
from tests.localpds.signin import SignInRefused, sign_in
from tests.oauth.harness import relay_config, served_client


@pytest.mark.trio
async def test_metadata_documents_are_served(tmp_path: Path, local_pds: LocalPds, probe_tls: ProbeTls) -> None:
    async with served_client(tmp_path, local_pds, probe_tls) as client:
        ctx = ssl.create_default_context(cafile=str(probe_tls.ca_pem))
        port = client.public_url.rsplit(":", 1)[1]
        async with httpx.AsyncClient(verify=ctx) as http:
            # the name does not resolve here; connect to loopback and present the name via SNI/Host
            meta = await http.get(f"https://localhost:{port}/oauth/client-metadata.json")
            keys = await http.get(f"https://localhost:{port}/oauth/jwks.json")
        assert meta.status_code == 200 and meta.headers["content-type"].startswith("application/json")
        body = meta.json()
        assert body["client_id"] == client.client_id
        assert body["token_endpoint_auth_method"] == "private_key_jwt"
        assert body["dpop_bound_access_tokens"] is True
        assert body["redirect_uris"] == [client.redirect_uri]
        jwk = keys.json()["keys"][0]
        assert jwk["kid"] == client.keys.signing.kid and "d" not in jwk
    assert (tmp_path / "oauth/client-keys.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.trio
async def test_full_flow_state_iss_sub_dpop_refresh(tmp_path: Path, local_pds: LocalPds, probe_tls: ProbeTls) -> None:
    async with served_client(tmp_path, local_pds, probe_tls) as client:
        url, pending = await client.start(local_pds.handle)
        assert pending.expected_did == local_pds.did
        params = await sign_in(url, local_pds.handle, local_pds.password)
        assert params["_location"].startswith(client.redirect_uri + "?")
        assert params["state"] == pending.state and params["iss"] == pending.issuer
        tokens = await client.callback(params)
        assert tokens.sub == local_pds.did and tokens.handle == local_pds.handle
        assert "atproto" in tokens.scope.split()
        # the token is DPoP-bound: it works with a proof from the session key (ath, nonce) ...
        resp = await client.resource_request(tokens, "GET", f"{local_pds.pds_url}/xrpc/com.atproto.server.getSession")
        assert resp.status_code == 200, resp.text
        assert resp.json()["did"] == local_pds.did
        # ... and not as a bearer token
        async with httpx.AsyncClient() as http:
            bare = await http.get(f"{local_pds.pds_url}/xrpc/com.atproto.server.getSession",
                                  headers={"authorization": f"Bearer {tokens.access_token}"})
        assert bare.status_code in (400, 401)
        fresh = await client.refresh(tokens)
        assert fresh.sub == tokens.sub and fresh.access_token != tokens.access_token


@pytest.mark.trio
async def test_wrong_password_is_refused_by_the_pds(tmp_path: Path, local_pds: LocalPds, probe_tls: ProbeTls) -> None:
    async with served_client(tmp_path, local_pds, probe_tls) as client:
        url, _ = await client.start(local_pds.handle)
        with pytest.raises(SignInRefused) as info:
            await sign_in(url, local_pds.handle, "not-the-password")
        assert info.value.status == 400
        assert "Invalid identifier or password" in str(info.value.body)


@pytest.mark.trio
async def test_assertion_signed_with_an_unpublished_key(tmp_path: Path, local_pds: LocalPds, probe_tls: ProbeTls) -> None:
    async with served_client(tmp_path, local_pds, probe_tls) as client:
        published_kid = await _published_kid(client.public_url, probe_tls)
        assert published_kid == client.keys.signing.kid
        # same client_id and the published kid, but a key the JWKS does not hold: the signature must fail
        forged = ECKey.generate_key("P-256", parameters={"kid": published_kid}, private=True)
        rogue = OAuthClient(client.public_url, ClientKeys([forged]), client.identity)
        with pytest.raises(OAuthError) as info:
            await rogue.start(local_pds.handle)
        assert info.value.error == "invalid_client"
        assert "signature verification failed" in str(info.value)


async def _published_kid(public_url: str, tls: ProbeTls) -> str:
    port = public_url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(tls.ca_pem))) as http:
        kid: str = (await http.get(f"https://localhost:{port}/oauth/jwks.json")).json()["keys"][0]["kid"]
        return kid


@pytest.mark.trio
async def test_bogus_state_and_forged_issuer(tmp_path: Path, local_pds: LocalPds, probe_tls: ProbeTls) -> None:
    async with served_client(tmp_path, local_pds, probe_tls) as client:
        url, _ = await client.start(local_pds.handle)
        params = await sign_in(url, local_pds.handle, local_pds.password)
        with pytest.raises(OAuthStateError):
            await client.callback({**params, "state": "bogus"})
        with pytest.raises(OAuthError) as info:
            await client.callback({**params, "iss": "https://evil.example"})
        assert info.value.error == "invalid_issuer"
        with pytest.raises(OAuthStateError):  # the forged attempt used the state up
            await client.callback(params)


@pytest.mark.trio
async def test_replayed_code(tmp_path: Path, local_pds: LocalPds, probe_tls: ProbeTls) -> None:
    async with served_client(tmp_path, local_pds, probe_tls) as client:
        url, pending = await client.start(local_pds.handle)
        params = await sign_in(url, local_pds.handle, local_pds.password)
        await client.callback(params)
        with pytest.raises(OAuthStateError):  # the relay refuses a second use of the same redirect ...
            await client.callback(params)
        client._pending[pending.state] = pending  # ... and the PDS refuses a replayed code even if it got through
        with pytest.raises(OAuthError) as info:
            await client.callback(params)
        assert info.value.error == "invalid_grant"


@pytest.mark.trio
async def test_a_sign_in_in_progress_survives_a_restart(tmp_path: Path, local_pds: LocalPds,
                                                        probe_tls: ProbeTls) -> None:
    """Issue 14: pending sign-ins lived only in memory; a restart between redirect and callback lost them."""
    store = AsyncStore(open_store(f"sqlite:///{tmp_path / 'relay.db'}"))
    async with served_client(tmp_path, local_pds, probe_tls, store=store) as client:
        url, _ = await client.start(local_pds.handle)
        params = await sign_in(url, local_pds.handle, local_pds.password)
        # The relay restarts: a new client, same state dir (keys) and store.
        again = client_from_config(relay_config(tmp_path, local_pds, client.public_url), store=store)
        tokens = await again.callback(params)
        assert tokens.sub == local_pds.did
        with pytest.raises(OAuthStateError):  # still good for one use only
            await again.callback(params)
