"""The lockstep engine's model factories: a single run's backends (`load_backends`), batched by
the seed pair's `ml.batched.BatchedBackends` or, for any other pair, by
`ml.families.batched.FamilyBatchModels` (which builds on the first: so this dispatch lives apart
from both)."""

from __future__ import annotations

from truthloop.config import RunConfig
from truthloop.loop import EventSink
from truthloop.ml.batched import BatchedBackends


def load_batched(config: RunConfig, emit: EventSink, exact: bool = False) -> BatchedBackends:
    """A single run's backends, batched for the run's pair (an sd or clip-interrogator side of
    a mixed pair is batched by FamilyBatchModels as BatchedBackends batches it)."""
    from truthloop.families import DEFAULT_CAPTIONER, DEFAULT_GENERATOR
    from truthloop.ml.backends import load_backends

    backends = load_backends(config, emit)
    models = config.models
    if models.generator == DEFAULT_GENERATOR and models.captioner == DEFAULT_CAPTIONER:
        return BatchedBackends(backends, config, exact=exact)
    from truthloop.ml.families.batched import FamilyBatchModels

    return FamilyBatchModels(backends, config, exact=exact)


def exact_factory(config: RunConfig, emit: EventSink) -> BatchedBackends:
    return load_batched(config, emit, exact=True)


def batched_factory(config: RunConfig, emit: EventSink) -> BatchedBackends:
    return load_batched(config, emit, exact=False)
