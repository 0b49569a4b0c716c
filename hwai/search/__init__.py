"""Co-design search: the space of architectures and compression policies, and the loop that searches it under a
target's constraints (hwai optimize / hwai worker); `compress`: the greedy keep-or-roll-back search over a fixed
pass sequence (hwai compress)."""
from hwai.search.constraints import Constraints
from hwai.search.optimize import OptimizeConfig, optimize, worker
from hwai.search.space import Candidate, SpaceConfig
from hwai.search.study import SearchStopped

__all__ = ["Candidate", "Constraints", "OptimizeConfig", "SearchStopped", "SpaceConfig", "optimize", "worker"]
