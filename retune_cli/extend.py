"""What a plugin needs to add a physics, a prior, a scheme or a gradient mode: the contracts, the types
they exchange and the registries (``register_*``), in one public namespace.

    from retune_cli.extend import Prior, register_prior

    @register_prior
    class MyPrior(Prior):
        name = "mine"                      # model.prior: mine
        options = {"strength": 1.0}        # model.strength, with its default (and type)
        def prox(self, x, tau): ...

A plugin module is listed in a config (``plugins: [my_prior.py]``, run with ``--trust-code``) or installed
with an entry point in the group ``retune.plugins``; :mod:`retune_cli.testing` checks its mathematics.
"""

from .core.composed import ComposedScheme, ImageContext
from .core.hypergrad import Solution, SolveOptions, register_gradient
from .core.physics import (
    NormBounds,
    Observation,
    Params,
    Physics,
    UserOperator,
    as_observation,
    operator_norm,
    register_physics,
)
from .core.prior import Prior, project_groups, register_prior
from .core.pytree import register_pytree
from .core.scheme import PaddedScheme, Scheme, register_scheme
from .core.schemes import STEP_RULES, contraction_factor

__all__ = [
    "STEP_RULES", "ComposedScheme", "ImageContext", "NormBounds", "Observation", "PaddedScheme", "Params", "Physics",
    "Prior", "Scheme", "Solution", "SolveOptions", "UserOperator", "as_observation", "contraction_factor",
    "operator_norm", "project_groups", "register_gradient", "register_physics", "register_prior", "register_pytree",
    "register_scheme",
]
