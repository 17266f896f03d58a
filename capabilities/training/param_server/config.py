"""What a parameter-server run needs: the consistency modes and :class:`PSConfig`.

:class:`PSConfig` is the one model of a run's settings, each field's default, bounds and
description in one place; the ``ps_straggler`` experiment takes its fields from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MODES = ("bsp", "ssp", "async")


class PSConfig(BaseModel):
    """A parameter-server run; a PSConfig that exists is valid (bad values raise ``ValidationError``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["bsp", "ssp", "async"] = Field("bsp", description="Consistency: bsp, ssp (bounded staleness) or async.")
    staleness: int = Field(2, ge=0, le=100, description="SSP bound s: clocks a worker may run ahead of the slowest.")
    num_servers: int = Field(2, ge=1, le=8, description="Server processes (parameter shards).")
    num_workers: int = Field(3, ge=1, le=8, description="Worker processes; worker 0 is the straggler.")
    steps: int = Field(30, ge=1, le=10_000, description="Clocks (iterations) per worker.")
    lr: float = Field(0.1, gt=0, allow_inf_nan=False, description="SGD learning rate.")
    straggler_delay_s: float = Field(0.0, ge=0, le=10, description="Extra seconds worker 0 sleeps every iteration.")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="RPC timeout and overall deadline (s).")
    heartbeat_s: float = Field(0.2, gt=0, le=60, description="How often servers ping unfinished workers (s).")
    ping_timeout_s: float = Field(10.0, gt=0, le=600, description="How long a ping may go unanswered before its "
                                  "worker counts as lost (a hung process answers nothing, not even an error).")
