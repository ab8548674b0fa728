"""What a serving process does beside its requests to keep the ledger right across servers and crashes.

``keep_lease`` runs for the server's life (started by the app's lifespan): it renews this server's lease, settles
the holds of servers whose lease expired (the crash rule, ``ledger/leases.py``) and retries settlements that
failed (``settlement.py``). ``progress_hook`` gives a stream the hook that records its delivered-token
high-water mark on its hold. Every ledger call goes through ``Service.db``, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .errors import LedgerError

log = logging.getLogger("reverb.service")

PROGRESS_SECONDS = 1.0   # a stream's delivered-token mark is written at most this often (and at its first token)


async def keep_lease(service) -> None:
    """Every third of the lease: heartbeat, sweep, retries. Runs until cancelled; a ledger that cannot be reached
    is tried again next time. A process without a lease (``build(serve=False)``) returns at once."""
    period = service.settings.lease_seconds / 3
    ledger = service.ledger
    while ledger.lease.instance_id is not None:
        await asyncio.sleep(period)
        try:
            await service.db(ledger.lease.heartbeat)
            await service.db(ledger.lease.sweep)
            await service.db(service.settlement.retry)
        except LedgerError as e:
            log.warning("lease upkeep failed (retrying in %.1f s): %s", period, e.message)
        except Exception:   # never let a bug stop the heartbeat: other servers would settle our holds
            log.exception("lease upkeep failed (retrying in %.1f s)", period)


def progress_hook(service, ctx):
    """The stream's progress hook: records its delivered-token high-water mark on its hold, off the event loop,
    at its first token and then at most every PROGRESS_SECONDS, one write in flight at a time."""
    state = {"at": None, "busy": False}

    def on_progress(delivered: int) -> None:
        t = time.monotonic()
        if state["busy"] or (state["at"] is not None and t - state["at"] < PROGRESS_SECONDS):
            return
        state.update(at=t, busy=True)

        async def write():
            try:
                await service.db(service.ledger.progress, ctx.request_id, delivered)
            except LedgerError:
                pass  # a mark is advice for a sweeper; the settlement is what counts
            finally:
                state["busy"] = False
        service._spawn(write())
    return on_progress
