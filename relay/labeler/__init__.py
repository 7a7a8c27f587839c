"""The relay's atproto labeler (DESIGN §3): signed ``verified-mail-operator``, ``relay-member`` and
``clean-sender`` labels about members' DIDs, served by web.xrpc (queryLabels, subscribeLabels).

- ``relay.labeler.keys``: the secp256k1 key (``<state>/labeler/key.pem``), multibase, DID document.
- ``relay.labeler.labels``: signing (DAG-CBOR, low-S ECDSA), JSON and event-stream frames.
- ``relay.labeler.conditions``: when each label holds (pure).
- ``relay.labeler.service``: ``Labeler`` (checks, stores, announces; ``run`` is the periodic job).
"""

from relay.labeler.keys import LabelerKey, default_did, did_document
from relay.labeler.labels import CLEAN_SENDER, LABEL_VALUES, RELAY_MEMBER, VERIFIED_MAIL_OPERATOR, sign_label
from relay.labeler.service import AttestationFetch, Labeler, MemberCheck, PdsAttestations

__all__ = [
    "CLEAN_SENDER",
    "LABEL_VALUES",
    "RELAY_MEMBER",
    "VERIFIED_MAIL_OPERATOR",
    "AttestationFetch",
    "Labeler",
    "LabelerKey",
    "MemberCheck",
    "PdsAttestations",
    "default_did",
    "did_document",
    "sign_label",
]
