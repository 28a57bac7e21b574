"""Chain-of-image (CoI) prompting: a VLM compares a normal template image with the test image step by step
and answers normal / anomalous with an explanation (seeds/004_102cb39b65a4f1cc.txt, training-free part).

- :mod:`vlmad.coi.prompts`: prompt templates as data files (:func:`load_prompt`, :func:`list_prompts`).
- :mod:`vlmad.coi.parse`: reading the verdict and explanation from a model's reply (:func:`parse_verdict`).
- :mod:`vlmad.coi.score`: the verdict table and explanation BERTScore of runs (:func:`verdict_table`,
  :func:`score_explanations`).

Import-light: nothing here imports torch; the scoring functions import their models when called.
"""

from vlmad.coi.parse import ParsedAnswer, parse_verdict
from vlmad.coi.prompts import PromptTemplate, list_prompts, load_prompt

__all__ = ["ParsedAnswer", "PromptTemplate", "list_prompts", "load_prompt", "parse_verdict"]
