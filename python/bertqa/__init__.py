"""bertqa: extractive question answering with BERT-family models.

The call of transformers' ``pipeline("question-answering")``, answered by bertqa's Rust engine::

    import bertqa

    qa = bertqa.pipeline("question-answering", model="deepset/roberta-base-squad2")
    qa(question="Where do I live?", context="My name is Wolfgang and I live in Berlin.")
    # {'score': ..., 'start': ..., 'end': ..., 'answer': 'Berlin'}

Same arguments, same dicts and lists back, the same answers, scores and offsets as transformers.
"""

from ._native import __version__
from ._pipeline import (
    DEFAULT_MODEL,
    Answer,
    MissingInputKeyError,
    QuestionAnsweringPipeline,
    pipeline,
)

__all__ = [
    "Answer",
    "DEFAULT_MODEL",
    "MissingInputKeyError",
    "QuestionAnsweringPipeline",
    "pipeline",
    "__version__",
]
