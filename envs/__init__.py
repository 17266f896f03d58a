"""The common agent/environment API: policies, capabilities, agents, and the env registry."""

from envs.api import Agent, Capability, Policy, RandomPolicy, agents_for
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
    "Agent",
    "Capability",
    "EnvCheckError",
    "EnvSpec",
    "Policy",
    "RandomPolicy",
    "agents_for",
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
