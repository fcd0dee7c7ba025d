"""gest-api, both ways: aec's policies as a gest-api generator, and any gest-api generator as an aec policy.

`AecGenerator` (generator) lets Xopt, blop, libEnsemble or optimas drive aec's BoTorch policy (or
any other kind) through suggest/ingest with stable ids; `GestPolicy` (policy, `policy: {kind: gest,
generator: "module:Class"}`) lets an aec campaign run any gest-api generator. `vocs` converts
between a VOCS and aec's unit-cube problem; `loading` finds a generator class.
"""
from policies.gest.generator import AecGenerator
from policies.gest.policy import GestPolicy, generator_problems
from policies.gest.vocs import VocsCodec, problem_vocs

__all__ = ["AecGenerator", "GestPolicy", "VocsCodec", "generator_problems", "problem_vocs"]
