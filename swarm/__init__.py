"""Swarm emergence on Mesa: Reynolds, Vicsek and Couzin rules, order metrics, the flock env."""
