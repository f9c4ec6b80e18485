"""The random generators' state: saved before a run that must leave no trace, put back after it.

Tracing and ``check`` run the function for real; a random draw advances ``eager.random``'s generators, so
their bit-generator states (and which devices have a generator at all) are saved and restored with everything
else a run may change.

    >>> import eager
    >>> saved = rng_state()
    >>> a = eager.rand(2).tolist()
    >>> set_rng_state(saved)
    >>> eager.rand(2).tolist() == a
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eager import random as er


@dataclass(frozen=True)
class RngState:
    """Each device's generator with its bit-generator state, and the devices that had a generator."""

    states: dict[Any, tuple[Any, dict]]   # device -> (generator, bit-generator state)
    devices: frozenset


def rng_state() -> RngState:
    """The state of every generator in ``eager.random`` now."""
    states = {}
    for device, gen in er._generators.items():
        try:
            states[device] = (gen, gen._rng.bit_generator.state)
        except AttributeError:  # a generator without a readable state (some CuPy versions): left alone
            continue
    return RngState(states, frozenset(er._generators))


def set_rng_state(saved: RngState) -> None:
    """Put the generators back as ``saved`` found them (a generator created since is dropped)."""
    for device in [d for d in er._generators if d not in saved.devices]:
        del er._generators[device]
    for device, (gen, state) in saved.states.items():
        er._generators[device] = gen
        gen._rng.bit_generator.state = state
