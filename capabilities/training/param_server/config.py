"""What a parameter-server run needs: the consistency modes and :class:`PSConfig`."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("bsp", "ssp", "async")


@dataclass
class PSConfig:
    """What a parameter-server run needs (validated by :func:`run_parameter_server`).

    Args:
        mode: "bsp", "ssp" or "async".
        staleness: SSP bound s >= 0 (ignored by the other modes).
        num_servers: S >= 1 server processes.
        num_workers: W >= 1 worker processes.
        steps: Clocks (iterations) per worker.
        lr: Learning rate.
        straggler_delay_s: Extra seconds worker 0 sleeps every iteration (the straggler).
        timeout_s: RPC timeout and overall deadline.
        heartbeat_s: How often servers ping unfinished workers to notice a dead one.
        ping_timeout_s: How long a ping may go unanswered before its worker counts as lost (a
            hung or stopped process answers nothing, not even an error). Default 10.
    """

    mode: str = "bsp"
    staleness: int = 2
    num_servers: int = 2
    num_workers: int = 3
    steps: int = 20
    lr: float = 0.1
    straggler_delay_s: float = 0.0
    timeout_s: float = 60.0
    heartbeat_s: float = 0.2
    ping_timeout_s: float = 10.0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name, low in (("staleness", 0), ("num_servers", 1), ("num_workers", 1), ("steps", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ValueError(f"{name} must be an int >= {low}, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.straggler_delay_s < 0 or self.timeout_s <= 0 or self.heartbeat_s <= 0:
            raise ValueError(f"need lr > 0, straggler_delay_s >= 0, timeout_s > 0, heartbeat_s > 0; got "
                             f"{self.lr}, {self.straggler_delay_s}, {self.timeout_s}, {self.heartbeat_s}")
        if not 0 < self.ping_timeout_s:
            raise ValueError(f"ping_timeout_s must be > 0, got {self.ping_timeout_s}")
