"""Texts and a stand-in scorer shared by the tiny-model evaluation tests (sweeps, executors)."""

import numpy as np

from steerinterp.evaluate.generation import GenerationSettings
from steerinterp.evaluate.harness import EvalSettings

PROMPTS = ["the weather today is", "my neighbour said that", "in the beginning", "so I told"]
PPL = ["the cat sat on the mat and looked at the door",
       "activation steering edits what a model computes on each token",
       "a short sentence about nothing in particular",
       "rivers run to the sea and the sea is never full"]
SOURCE = ["you are a stupid idiot", "shut up you moron", "what a dumb thing to say",
          "I hate you so much"]
TARGET = ["have a nice day", "the museum opens at nine", "rain is expected tomorrow",
          "the river flows to the sea"]
SETTINGS = EvalSettings(generation=GenerationSettings(max_new_tokens=4, samples=2, batch_size=4))


def length_scorer(texts):
    """A deterministic stand-in classifier: longer continuations look 'more toxic'."""
    return np.array([min(len(t) / 40, 1.0) for t in texts])
