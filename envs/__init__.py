"""The common agent/environment API: policies, capabilities, agents, and the env registry."""

from envs.api import (
    CAPABILITY_KINDS,
    Agent,
    Aggregator,
    Communicator,
    DataSource,
    Learner,
    Masker,
    ParameterStore,
    Policy,
    RandomPolicy,
    Scheduler,
)
from envs.check import EnvCheckError, check_env, check_state, check_trainable
from envs.registry import (
    EnvSpec,
    make,
    make_vec,
    register,
    register_vec,
    registered,
    registered_vec,
    spec,
)

__all__ = [
    "CAPABILITY_KINDS",
    "Agent",
    "Aggregator",
    "Communicator",
    "DataSource",
    "Learner",
    "Masker",
    "ParameterStore",
    "Scheduler",
    "EnvCheckError",
    "EnvSpec",
    "Policy",
    "RandomPolicy",
    "check_env",
    "check_state",
    "check_trainable",
    "make",
    "make_vec",
    "register",
    "register_vec",
    "registered",
    "registered_vec",
    "spec",
]
