"""Circuit breaker layer: sits inside the retry policy, so it sees every attempt.

Each call to the next layer is admitted by the breaker of ``ex.target.upstream`` (the
retry policy may have switched it to a fallback) or rejected at once with
``CircuitOpen`` (503 + Retry-After), which the retry policy turns into a
failover. The outcome is recorded when it is known: a connect/reset/timeout
failure or a 5xx at once; 4xx is a success (the upstream answered), 408/429 and
the gateway's own rejections (``LocalReply``) are neutral. A 2xx is not yet a
success: the stream may still begin with an error event or stall before its
first token, so its ticket is left on the exchange and the retry policy settles
it at the commit point. A sink settles any ticket still pending when the request
ends, so a half-open probe slot can never leak.
"""
from __future__ import annotations

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.config_model import Config
from gateway.errors import UpstreamFailure
from gateway.exchange import Exchange, StateKey, UpstreamResponse
from policies.resilience.breaker import Ticket
from policies.resilience.registry import Resilience, resilience_of

PENDING_TICKET: StateKey[Ticket] = StateKey("breaker.ticket")  # settled at the commit point


class CircuitBreakerPolicy:
    name = "circuit_breaker"

    def __init__(self, res: Resilience, key_prefix: str = "") -> None:
        self.res = res
        self.prefix = key_prefix

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        ticket = self.res.breaker(
            self.prefix + ex.target.upstream if self.prefix else ex.target.upstream
        ).admit()
        try:
            resp = await next(ex)
        except UpstreamFailure:
            ticket.settle("failure")
            raise
        except BaseException:  # LocalReply (our own rejection), cancellation, bugs: not the upstream's fault
            ticket.settle("ignore")
            raise
        status = resp.status
        if status < 300:
            ex.state.set(PENDING_TICKET, ticket)  # settled at the commit point (resilience/retry_layer.py)
        elif status >= 500:
            ticket.settle("failure")
        elif status in (408, 429):
            ticket.settle("ignore")
        else:
            ticket.settle("success")
        return resp


def take_ticket(ex: Exchange) -> Ticket | None:
    """The ticket of the last attempt, for the commit point to settle."""
    return ex.state.pop(PENDING_TICKET)


def settle_leftover(ex: Exchange) -> None:
    """Finalizer: a ticket nobody settled (no retry policy in the chain) is judged by the final status."""
    ticket = ex.state.pop(PENDING_TICKET)
    if ticket is not None:
        status = ex.record.status
        ticket.settle("ignore" if status in (0, 499) else ("failure" if status >= 500 else "success"))


def install_sink(state: AppState) -> None:
    if settle_leftover not in state.finalizers:
        state.finalizers.append(settle_leftover)


async def factory(state: AppState, config: Config) -> CircuitBreakerPolicy:
    res = resilience_of(state, config)
    install_sink(state)
    return CircuitBreakerPolicy(res)
