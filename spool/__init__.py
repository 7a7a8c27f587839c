"""The durable message queue (DESIGN §4): an append-only, CRC-framed, group-committed log.

The only code in the project that calls fsync. Imports the standard library only, plus trio in
``spool.aio``.
"""

from spool.aio import Spool
from spool.errors import SpoolError, SpoolFull, SpoolUnavailable
from spool.log import SpoolLog, SpoolStats
from spool.message import Accepted, Envelope, QueuedMessage, RcptState
from spool.recovery import QuarantinedRange, RecoveryReport
from spool.transition import TERMINAL, State, Transition

__all__ = [
    "TERMINAL",
    "Accepted",
    "Envelope",
    "QuarantinedRange",
    "QueuedMessage",
    "RcptState",
    "RecoveryReport",
    "Spool",
    "SpoolError",
    "SpoolFull",
    "SpoolLog",
    "SpoolStats",
    "SpoolUnavailable",
    "State",
    "Transition",
]
