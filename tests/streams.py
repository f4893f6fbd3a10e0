"""Stream helpers for Amaranth testbenches (the valid/ready handshake of ``amaranth.lib.stream``)."""

from __future__ import annotations

__all__ = ["stream_get", "stream_put"]


async def stream_put(ctx, stream, payload) -> None:
    """Offer ``payload`` on ``stream`` until the sink takes it.

    An integer payload for a structured layout is taken as the flattened bits.
    """
    target = stream.payload
    if isinstance(payload, int) and hasattr(target, "as_value"):
        target = target.as_value()
    ctx.set(stream.valid, 1)
    ctx.set(target, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream):
    """Take one payload from ``stream``."""
    ctx.set(stream.ready, 1)
    (payload,) = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload
