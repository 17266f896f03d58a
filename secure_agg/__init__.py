"""Bonawitz-style double-masking secure aggregation with real cryptography (no Flower imports).

``simulate`` runs a whole session in one process; :class:`SecAggClient` and
:class:`SecAggServer` are the round-by-round state machines any transport can carry.
"""

from secure_agg.client import SecAggClient, validate_input
from secure_agg.errors import SecAggError
from secure_agg.graph import default_degree, random_harary_graph
from secure_agg.quantize import Quantization, Quantizer
from secure_agg.rounds import ADVERTISE_KEYS, MASKED_INPUT, ROUNDS, SHARE_KEYS, UNMASKING
from secure_agg.server import SecAggServer
from secure_agg.simulate import SimulationResult, simulate

__all__ = [
    "ADVERTISE_KEYS", "MASKED_INPUT", "ROUNDS", "SHARE_KEYS", "UNMASKING", "Quantization", "Quantizer",
    "SecAggClient", "SecAggError", "SecAggServer", "SimulationResult", "default_degree", "random_harary_graph",
    "simulate", "validate_input",
]
