"""DKIM signing for outbound mail (RFC 6376 with RSA-SHA256, RFC 8463 Ed25519-SHA256; DESIGN §5).

    from relay.dkim import SigningKey, domain_signing_keys, sign

    member_rsa, member_ed = domain_signing_keys(domain_keys)         # parse once, keep
    operator = SigningKey("relay.example", "pool1", "rsa-sha256", operator_rsa_key)
    signed = sign(message, [member_rsa, member_ed, operator])         # 3 DKIM-Signature fields on top

``sign`` normalizes line ends to CRLF (see ``canon.normalize``) and returns the bytes to send.
Verification is not part of the relay; the tests verify with dkimpy and OpenDKIM.
"""

from relay.dkim.signer import (
    DEFAULT_HEADERS,
    MUST_NOT_ADD,
    Algorithm,
    SigningKey,
    body_hash,
    domain_signing_keys,
    sign,
)

__all__ = ["DEFAULT_HEADERS", "MUST_NOT_ADD", "Algorithm", "SigningKey", "body_hash", "domain_signing_keys", "sign"]
