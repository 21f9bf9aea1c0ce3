"""The generator families' denoisers under `GraphedForward` (issue 29): the pipeline's own call,
the same pixels. On a GPU the steps replay from CUDA graphs (tests/test_cuda_graphs.py checks the
images there); on the CPU the wrapper takes every call apart into tensors and the rest, and puts it
back together, which these tests check against the plain pipeline for every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from family_helpers import PROMPT, generate_config

FAMILIES = ("sdxl", "flux2-klein", "z-image")


def test_a_call_taken_apart_is_put_back_together_exactly():
    from truthloop.ml.cudagraph import _join, _split

    a, b, c = torch.ones(2), torch.zeros(3), torch.arange(4)
    call = ((a, [b, c], None), (("added", {"text_embeds": b, "time_ids": c}),
                                ("return_dict", False), ("scale", 0.5)))
    tensors: list = []
    structure = _split(call, tensors)
    hash(structure)  # the key of a graph per call structure
    assert [t.data_ptr() for t in tensors] == [x.data_ptr() for x in (a, b, c, b, c)]
    rebuilt = _join(structure, iter(tensors))
    assert rebuilt[0][0] is a and rebuilt[0][1] == [b, c] and rebuilt[0][2] is None
    assert dict(rebuilt[1])["added"]["time_ids"] is c and dict(rebuilt[1])["scale"] == 0.5
    # a different flag or number is another structure: another graph, never a stale one
    other: list = []
    assert _split((call[0], (("return_dict", True),)), other) != structure


@pytest.mark.parametrize("family", FAMILIES)
def test_the_wrapped_denoiser_draws_the_plain_pipelines_image(family, truthloop_cache):
    from truthloop.ml.cudagraph import GraphedForward
    from truthloop.ml.families.painting import FamilyPainter, denoiser, load_generator
    from truthloop.ml.tiny import tiny_family_model

    pipe, _ = load_generator(family, tiny_family_model("generator", family), "cpu")
    config = generate_config(family, steps=2, width=64, height=64)
    plain = np.asarray(FamilyPainter(pipe, family, config, "cpu").paint(PROMPT, lambda s, t: None))
    model = denoiser(pipe)
    wrapper = GraphedForward.on(model)
    calls = []
    original = wrapper.original
    wrapper.original = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        wrapped = np.asarray(FamilyPainter(pipe, family, config, "cpu").paint(
            PROMPT, lambda s, t: None))
    finally:
        wrapper.uninstall()
    assert calls, "the pipeline's steps did not go through the wrapper"
    assert np.array_equal(plain, wrapped)


def test_a_model_output_taken_apart_is_put_back_of_its_own_class():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from truthloop.ml.cudagraph import _join, _split

    last, pooled, hidden = torch.ones(1, 3, 2), torch.zeros(1, 2), (torch.ones(1), torch.zeros(1))
    output = BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                        hidden_states=hidden)
    tensors: list = []
    structure = _split(output, tensors)
    hash(structure)
    rebuilt = _join(structure, iter(tensors))
    # What diffusers' encode_prompt reads of it: [0], and hidden_states by attribute.
    assert type(rebuilt) is BaseModelOutputWithPooling and rebuilt[0] is last
    assert rebuilt.pooler_output is pooled and rebuilt.hidden_states[-2] is hidden[0]
    assert rebuilt.attentions is None


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoders_without_a_mask_go_through_the_graph_wrapper_with_the_same_image(
        family, truthloop_cache):
    """graph_text_encoders, as a CUDA painter installs it: SDXL's two CLIPs (no mask, one shape)
    are taken apart and put back by the wrapper, ModelOutput and hidden states included, and the
    image is the plain pipeline's; FLUX.2's and Z-Image's masked Qwen3 calls stay eager."""
    from truthloop.ml.families.painting import FamilyPainter, load_generator
    from truthloop.ml.generate import graph_text_encoders, text_encoders
    from truthloop.ml.tiny import tiny_family_model

    pipe, _ = load_generator(family, tiny_family_model("generator", family), "cpu")
    config = generate_config(family, steps=2, width=64, height=64)
    plain = np.asarray(FamilyPainter(pipe, family, config, "cpu").paint(PROMPT, lambda s, t: None))
    wrappers = graph_text_encoders(pipe)
    try:
        assert [wrapper.module for wrapper in wrappers] == text_encoders(pipe)
        wrapped = np.asarray(FamilyPainter(pipe, family, config, "cpu").paint(
            PROMPT, lambda s, t: None))
    finally:
        for wrapper in wrappers:
            wrapper.uninstall()
    assert np.array_equal(plain, wrapped)
    through = [bool(wrapper._graphs) for wrapper in wrappers]
    assert through == ([True, True] if family == "sdxl" else [False])
    assert all("forward" not in vars(encoder) for encoder in text_encoders(pipe))


def test_the_seed_pairs_text_encoder_goes_through_the_graph_wrapper_with_the_same_image(
        tiny_models):
    """sd's Painter installs graph_text_encoders on CUDA: its OpenCLIP text encoder (no mask,
    77 tokens) taken apart and put back by the wrapper gives the same image, the negative
    prompt's embeddings included."""
    from truthloop.config import GenerateConfig
    from truthloop.ml.generate import Painter, graph_text_encoders

    pipe = tiny_models.pipe
    config = GenerateConfig(steps=2, width=64, height=64)

    def draw():
        return np.asarray(Painter(pipe, config, "cpu").paint(PROMPT, lambda s, t: None))

    plain = draw()
    wrappers = graph_text_encoders(pipe)
    try:
        wrapped = draw()
    finally:
        for wrapper in wrappers:
            wrapper.uninstall()
    assert [wrapper.module for wrapper in wrappers] == [pipe.text_encoder]
    assert wrappers[0]._graphs and np.array_equal(plain, wrapped)
