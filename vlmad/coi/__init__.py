"""Chain-of-image (CoI) prompting: a VLM compares a normal template image with the test image step by step
and answers normal / anomalous with an explanation (seeds/004_102cb39b65a4f1cc.txt, training-free part).

- :mod:`vlmad.coi.prompts`: prompt templates as data files (:func:`load_prompt`, :func:`list_prompts`).
- :mod:`vlmad.coi.parse`: reading the verdict and explanation from a model's reply (:func:`parse_verdict`).
- :mod:`vlmad.coi.score`: the verdict table and explanation BERTScore of runs (:func:`verdict_table`,
  :func:`score_explanations`).
- :mod:`vlmad.coi.templates`: the template image of each test image (random, most similar, fixed).
- :mod:`vlmad.coi.recipe`: run recipes (models x prompts x images and every setting; ``eval/coi_*.yaml``).
- :mod:`vlmad.coi.backends`: who answers: OpenAI-compatible APIs and local :mod:`vlmad.vlm` models.
- :mod:`vlmad.coi.runner`: :func:`~vlmad.coi.runner.run_coi`, the resumable, cached, concurrent runner.
- :mod:`vlmad.coi.evaluate`: Table 1 with AUROC, explanation quality and the Holm-corrected A/B table.

Import-light: nothing here imports torch; the scoring functions import their models when called.
"""

from vlmad.coi.parse import ParsedAnswer, parse_verdict
from vlmad.coi.prompts import PromptTemplate, list_prompts, load_prompt

__all__ = ["ParsedAnswer", "PromptTemplate", "list_prompts", "load_prompt", "parse_verdict"]
