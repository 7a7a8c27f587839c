"""The retry policy (DESIGN §5, seed docs "Retries"): table-driven cases and Hypothesis properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.retry import (
    DEFAULT_POLICY,
    DEFAULT_SCHEDULE,
    Decision,
    Outcome,
    OutcomeKind,
    RetryPolicy,
    classify_reply,
    decide,
    reply_verbatim,
)
from relay.smtp.reply import Reply

T0 = 1_700_000_000.0
TEMPORARY_KINDS = [
    OutcomeKind.TEMPORARY,
    OutcomeKind.CONNECTION_FAILED,
    OutcomeKind.TIMEOUT,
    OutcomeKind.TLS_FAILED,
    OutcomeKind.DNS_TEMPORARY,
]
PERMANENT_KINDS = [OutcomeKind.PERMANENT, OutcomeKind.DNS_PERMANENT]

TEMP = Outcome(OutcomeKind.TEMPORARY, "451 4.3.0 try again later", "4.3.0", 451)
PERM = Outcome(OutcomeKind.PERMANENT, "550 5.1.1 <bob@dest.example>: user unknown", "5.1.1", 550)
OK = Outcome(OutcomeKind.DELIVERED, "250 2.0.0 Ok: queued as 4Xyz", "2.0.0", 250)


# ---------------------------------------------------------------- classify_reply


@pytest.mark.parametrize(
    ("code", "enhanced", "command", "kind"),
    [
        (250, "2.0.0", None, OutcomeKind.DELIVERED),
        (251, None, "RCPT", OutcomeKind.DELIVERED),
        (421, "4.7.0", None, OutcomeKind.TEMPORARY),
        (450, "4.2.1", "RCPT", OutcomeKind.TEMPORARY),
        (451, "4.3.0", None, OutcomeKind.TEMPORARY),
        (452, "4.5.3", "RCPT", OutcomeKind.TEMPORARY),
        (550, "5.1.1", "RCPT", OutcomeKind.PERMANENT),
        (551, None, "RCPT", OutcomeKind.PERMANENT),
        (553, "5.1.3", "RCPT", OutcomeKind.PERMANENT),
        (554, "5.7.1", None, OutcomeKind.PERMANENT),
        (556, "5.1.10", "RCPT", OutcomeKind.PERMANENT),
        # RFC 5321 §4.5.3.1.10: 552 to RCPT is really 452 "too many recipients".
        (552, "5.5.3", "RCPT", OutcomeKind.TEMPORARY),
        (552, "5.2.2", "rcpt", OutcomeKind.TEMPORARY),
        # ...but 552 after the data (message too big) stays permanent.
        (552, "5.3.4", "DATA", OutcomeKind.PERMANENT),
        (552, "5.3.4", None, OutcomeKind.PERMANENT),
        # The class comes from the basic code, never from the enhanced code or the text.
        (450, "5.1.1", "RCPT", OutcomeKind.TEMPORARY),
        (550, "4.2.2", "RCPT", OutcomeKind.PERMANENT),
        # A code where no final reply belongs is a remote protocol error: retried.
        (354, None, None, OutcomeKind.TEMPORARY),
        (199, None, None, OutcomeKind.TEMPORARY),
    ],
)
def test_classify_reply(code: int, enhanced: str | None, command: str | None, kind: OutcomeKind) -> None:
    assert classify_reply(code, enhanced, "some text", command=command) is kind


def test_classify_reply_ignores_the_text() -> None:
    assert classify_reply(450, None, "user unknown, permanent, do not retry") is OutcomeKind.TEMPORARY
    assert classify_reply(550, None, "try again later") is OutcomeKind.PERMANENT


def test_outcome_from_reply_keeps_the_reply_verbatim() -> None:
    reply = Reply(550, "5.1.1", "The email account that you tried to reach does not exist.", ("Learn more",))
    outcome = Outcome.from_reply(reply, command="RCPT")
    assert outcome == Outcome(
        OutcomeKind.PERMANENT,
        "550 5.1.1 The email account that you tried to reach does not exist. Learn more",
        "5.1.1",
        550,
    )
    assert reply_verbatim(Reply(421, None, "mx.example closing")) == "421 mx.example closing"
    assert Outcome.from_reply(Reply(552, "5.2.2", "mailbox full"), command="RCPT").kind is OutcomeKind.TEMPORARY


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (OK, "2.0.0"),
        (TEMP, "4.3.0"),
        (PERM, "5.1.1"),
        (Outcome(OutcomeKind.TEMPORARY, "451 local error"), "4.0.0"),
        (Outcome(OutcomeKind.PERMANENT, "554 no"), "5.0.0"),
        # A retried 552 5.2.2 reads 4.2.2, its class set from the kind (as in Postfix).
        (Outcome(OutcomeKind.TEMPORARY, "552 5.2.2 mailbox full", "5.2.2", 552), "4.2.2"),
        (Outcome(OutcomeKind.CONNECTION_FAILED, "connection refused"), "4.4.1"),
        (Outcome(OutcomeKind.TIMEOUT, "timed out after DATA"), "4.4.2"),
        (Outcome(OutcomeKind.TLS_FAILED, "handshake failed"), "4.7.5"),
        (Outcome(OutcomeKind.DNS_TEMPORARY, "SERVFAIL"), "4.4.3"),
        (Outcome(OutcomeKind.DNS_PERMANENT, "NXDOMAIN"), "5.4.4"),
        (Outcome(OutcomeKind.DNS_PERMANENT, "null MX", "5.1.10"), "5.1.10"),
        (Outcome(OutcomeKind.TEMPORARY, "451 junk", "junk"), "4.0.0"),
    ],
)
def test_outcome_status(outcome: Outcome, status: str) -> None:
    assert outcome.status == status


# ---------------------------------------------------------------- decide: the table


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(1, 60.0), (2, 300.0), (3, 900.0), (4, 1800.0), (5, 3600.0)],
)
@pytest.mark.parametrize("kind", TEMPORARY_KINDS)
def test_temporary_failures_follow_the_schedule(attempts: int, delay: float, kind: OutcomeKind) -> None:
    now = T0 + 12_345.5
    decision = decide(Outcome(kind, "x"), attempts=attempts, now=now, arrival=T0)
    assert decision.state == "deferred"
    assert decision.next_attempt_at == now + delay
    assert f"attempt {attempts} of 6" in decision.reason and "x" in decision.reason


@pytest.mark.parametrize("kind", TEMPORARY_KINDS)
def test_the_sixth_temporary_failure_bounces(kind: OutcomeKind) -> None:
    decision = decide(Outcome(kind, "451 4.3.0 still busy", "4.3.0"), attempts=6, now=T0 + 7000, arrival=T0)
    assert decision == Decision(
        "bounced", None, "gave up after 6 attempts; last temporary failure: 451 4.3.0 still busy", "4.3.0"
    )


@pytest.mark.parametrize("attempts", [1, 2, 6, 7, 20])
@pytest.mark.parametrize("kind", PERMANENT_KINDS)
def test_permanent_failures_bounce_at_once(attempts: int, kind: OutcomeKind) -> None:
    decision = decide(Outcome(kind, "550 5.1.1 user unknown", "5.1.1"), attempts=attempts, now=T0, arrival=T0)
    assert decision == Decision("bounced", None, "permanent failure: 550 5.1.1 user unknown", "5.1.1")


@pytest.mark.parametrize("attempts", [1, 3, 6, 20])
def test_delivered_is_sent(attempts: int) -> None:
    decision = decide(OK, attempts=attempts, now=T0, arrival=T0)
    assert decision == Decision("sent", None, "delivered: 250 2.0.0 Ok: queued as 4Xyz", "2.0.0")


def test_reasons_read_well() -> None:
    assert decide(TEMP, attempts=1, now=T0, arrival=T0).reason == (
        "temporary failure on attempt 1 of 6: 451 4.3.0 try again later; next attempt in 1 minute"
    )
    assert decide(TEMP, attempts=5, now=T0, arrival=T0).reason.endswith("next attempt in 1 hour")
    assert decide(Outcome(OutcomeKind.TIMEOUT), attempts=2, now=T0, arrival=T0).reason == (
        "temporary failure on attempt 2 of 6: timeout; next attempt in 5 minutes"
    )
    quick = RetryPolicy(schedule=(1.5,))
    assert decide(TEMP, attempts=1, now=T0, arrival=T0, policy=quick).reason.endswith("next attempt in 1.5 seconds")


def test_the_whole_default_timeline() -> None:
    """Arrival, six attempts, five waits, then the bounce: 1 h 51 min of waiting plus the attempts."""
    now, planned = T0, []
    for attempts in range(1, 7):
        now += 2.0  # each attempt takes two seconds
        decision = decide(TEMP, attempts=attempts, now=now, arrival=T0)
        if decision.state == "bounced":
            break
        assert decision.next_attempt_at is not None
        planned.append(decision.next_attempt_at - now)
        now = decision.next_attempt_at
    assert (attempts, decision.state) == (6, "bounced")
    assert tuple(planned) == DEFAULT_SCHEDULE == (60, 300, 900, 1800, 3600)
    assert DEFAULT_POLICY.max_attempts == 6


def test_a_custom_schedule() -> None:
    policy = RetryPolicy(schedule=(10.0, 20.0))
    assert decide(TEMP, attempts=1, now=T0, arrival=T0, policy=policy).next_attempt_at == T0 + 10
    assert decide(TEMP, attempts=2, now=T0, arrival=T0, policy=policy).next_attempt_at == T0 + 20
    assert decide(TEMP, attempts=3, now=T0, arrival=T0, policy=policy).state == "bounced"
    no_retries = RetryPolicy(schedule=())
    assert no_retries.max_attempts == 1
    assert decide(TEMP, attempts=1, now=T0, arrival=T0, policy=no_retries).state == "bounced"


def test_max_lifetime_caps_the_plan_and_then_bounces() -> None:
    policy = RetryPolicy(max_lifetime=1000.0)
    # Early on the schedule fits inside the lifetime.
    assert decide(TEMP, attempts=1, now=T0 + 5, arrival=T0, policy=policy).next_attempt_at == T0 + 65
    # The 15-minute wait would overshoot: the last try is planned at the deadline itself.
    capped = decide(TEMP, attempts=3, now=T0 + 400, arrival=T0, policy=policy)
    assert (capped.state, capped.next_attempt_at) == ("deferred", T0 + 1000)
    assert capped.reason.endswith("next attempt in 10 minutes")
    # Failing at or after the deadline bounces, whatever the schedule still offers.
    late = decide(TEMP, attempts=4, now=T0 + 1000, arrival=T0, policy=policy)
    assert late == Decision(
        "bounced",
        None,
        "gave up: queued longer than 1000 seconds; last temporary failure: 451 4.3.0 try again later",
        "4.3.0",
    )
    # The lifetime never turns a success or a permanent failure into something else.
    assert decide(OK, attempts=4, now=T0 + 5000, arrival=T0, policy=policy).state == "sent"
    assert decide(PERM, attempts=1, now=T0 + 5000, arrival=T0, policy=policy).reason.startswith("permanent")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"schedule": (60.0, 0.0)},
        {"schedule": (-1.0,)},
        {"schedule": (math.inf,)},
        {"schedule": (math.nan,)},
        {"max_lifetime": 0.0},
        {"max_lifetime": -5.0},
        {"max_lifetime": math.inf},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attempts", "now"),
    [(0, T0), (-1, T0), (1, math.nan), (1, math.inf)],
)
def test_bad_inputs_are_refused(attempts: int, now: float) -> None:
    with pytest.raises(ValueError):
        decide(TEMP, attempts=attempts, now=now, arrival=T0)


def test_it_is_deterministic() -> None:
    for attempts in range(1, 8):
        first = decide(TEMP, attempts=attempts, now=T0 + attempts, arrival=T0)
        assert all(decide(TEMP, attempts=attempts, now=T0 + attempts, arrival=T0) == first for _ in range(5))


# ---------------------------------------------------------------- properties

outcome_kinds = st.sampled_from(list(OutcomeKind))
policies = st.builds(
    RetryPolicy,
    schedule=st.lists(st.floats(min_value=0.001, max_value=1e6), max_size=8).map(tuple),
    max_lifetime=st.none() | st.floats(min_value=0.001, max_value=1e7),
)


@given(attempts=st.integers(1, 20), kind=outcome_kinds, now=st.floats(0, 4e9), age=st.floats(0, 1e6))
def test_one_decision_per_attempt(attempts: int, kind: OutcomeKind, now: float, age: float) -> None:
    decision = decide(Outcome(kind, "t"), attempts=attempts, now=now, arrival=now - age)
    if kind is OutcomeKind.DELIVERED:
        assert decision.state == "sent"
    elif kind.is_permanent:
        assert decision.state == "bounced"
    else:
        assert decision.state == ("deferred" if attempts <= len(DEFAULT_SCHEDULE) else "bounced")
    assert (decision.next_attempt_at is not None) == (decision.state == "deferred")
    assert (
        decision.status[0]
        == {"sent": "2", "deferred": "4", "bounced": "4" if kind.is_temporary else "5"}[decision.state]
    )


@given(
    kinds=st.lists(outcome_kinds, min_size=1, max_size=20),
    durations=st.lists(st.floats(min_value=0, max_value=600), min_size=20, max_size=20),
    lateness=st.lists(st.floats(min_value=0, max_value=100_000), min_size=20, max_size=20),
    policy=policies,
    arrival=st.floats(min_value=0, max_value=4e9),
)
def test_every_recipient_reaches_exactly_one_terminal_state(
    kinds: list[OutcomeKind],
    durations: list[float],
    lateness: list[float],
    policy: RetryPolicy,
    arrival: float,
) -> None:
    """Run attempts with any outcomes until a terminal state; each attempt starts at or after its planned time."""
    start, planned, temporary_failures = arrival, [], 0
    terminal: Decision | None = None
    for i, kind in enumerate(kinds):
        now = start + durations[i]
        decision = decide(Outcome(kind, f"attempt {i + 1}"), attempts=i + 1, now=now, arrival=arrival, policy=policy)
        if kind.is_temporary:
            temporary_failures += 1
        if decision.state != "deferred":
            terminal = decision
            break
        assert decision.next_attempt_at is not None and decision.next_attempt_at > now
        planned.append(decision.next_attempt_at)
        start = decision.next_attempt_at + lateness[i]
    assert temporary_failures <= len(policy.schedule) + 1
    assert all(a < b for a, b in itertools.pairwise(planned))  # strictly increasing
    if terminal is None:  # ran out of outcomes while still deferred: all were temporary
        assert all(k.is_temporary for k in kinds) and len(kinds) <= len(policy.schedule)
        return
    last = kinds[len(planned)]
    if last is OutcomeKind.DELIVERED:
        assert terminal.state == "sent"
    elif last.is_permanent:
        assert terminal.state == "bounced" and terminal.reason.startswith("permanent failure")
    else:
        assert terminal.state == "bounced" and "gave up" in terminal.reason
    assert terminal.next_attempt_at is None


@given(policy=policies, arrival=st.floats(min_value=0, max_value=4e9), duration=st.floats(0, 600))
def test_only_temporary_failures_bounce_after_at_most_max_attempts(
    policy: RetryPolicy, arrival: float, duration: float
) -> None:
    now = arrival
    for attempts in range(1, policy.max_attempts + 1):
        now += duration
        decision = decide(TEMP, attempts=attempts, now=now, arrival=arrival, policy=policy)
        if decision.state == "bounced":
            break
        assert decision.next_attempt_at is not None
        now = decision.next_attempt_at
    assert decision.state == "bounced"
    assert attempts <= policy.max_attempts
    if policy.max_lifetime is None:
        assert attempts == policy.max_attempts
