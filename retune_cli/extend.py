"""What a plugin needs to add a physics, a prior, a scheme or a gradient mode: the contracts, the types
they exchange and the registries (``register_*``), in one public namespace.

    from retune_cli.extend import Prior, register_prior

    @register_prior
    class MyPrior(Prior):
        name = "mine"                      # model.prior: mine
        options = {"strength": 1.0}        # model.strength, with its default (and type)
        def prox(self, x, tau): ...

An analysis prior of a plugin takes ``model.colour`` as the built-in ones do: declare ``"colour": "rgb"`` in
its options, call :func:`check_colour` when built, analyse ``to_colour(x, colour)`` and return
``from_colour(·, colour)`` from its adjoint; :func:`colour_noise` gives the noise of each analysed channel.

A plugin module is listed in a config (``plugins: [my_prior.py]``, run with ``--trust-code``) or installed
with an entry point in the group ``retune.plugins``; :mod:`retune_cli.testing` checks its mathematics.
"""

from .core.colour import check_colour, colour_noise, from_colour, to_colour
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
    "Prior", "Scheme", "Solution", "SolveOptions", "UserOperator", "as_observation", "check_colour", "colour_noise",
    "contraction_factor", "from_colour", "operator_norm", "project_groups", "register_gradient", "register_physics",
    "register_prior", "register_pytree", "register_scheme", "to_colour",
]
