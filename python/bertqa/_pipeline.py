"""transformers' ``pipeline("question-answering")`` call conventions over bertqa's engine.

The argument handling mirrors transformers 4.57's ``QuestionAnsweringArgumentHandler`` and
``QuestionAnsweringPipeline`` (which inputs are accepted, when a dict or a list comes back), so
that code written for transformers runs unchanged; the answers come from the Rust library.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Dict, List, Optional, Tuple, TypedDict, Union, cast

from . import _native

__all__ = [
    "Answer",
    "QuestionAnsweringPipeline",
    "pipeline",
    "DEFAULT_MODEL",
    "MissingInputKeyError",
]

#: The model transformers' ``pipeline("question-answering")`` loads when none is given.
DEFAULT_MODEL = "distilbert/distilbert-base-cased-distilled-squad"

#: The keyword arguments that change answers, as transformers names them.
ANSWER_PARAMETERS = (
    "top_k",
    "doc_stride",
    "max_answer_len",
    "max_seq_len",
    "max_question_len",
    "handle_impossible_answer",
    "align_to_words",
)

#: Keyword arguments transformers takes that do not change answers here: bertqa never pads
#: windows and batches them by itself (``batch_size`` of ``pipeline()`` sets windows per call).
ACCEPTED_AND_IGNORED = ("padding", "batch_size", "num_workers")

#: Questions taken from a generator per model round (answers are yielded as rounds finish).
GENERATOR_ROUND = 64


class Answer(TypedDict):
    """One answer, as transformers returns it."""

    score: float
    """Probability of the span (for the empty "no answer": the null score)."""
    start: int
    """Start of the answer in the context, in characters."""
    end: int
    """End (exclusive) in characters: ``answer == context[start:end]``."""
    answer: str
    """The answer text; empty for "no answer" (``handle_impossible_answer``)."""


class MissingInputKeyError(KeyError, ValueError):
    """An input dict without ``question`` or ``context``.

    A ``KeyError``, as transformers raises, and a ``ValueError``, as for every other bad input.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class QuestionAnsweringPipeline:
    """Answers questions about contexts as transformers' ``QuestionAnsweringPipeline`` does.

    Create it with :func:`bertqa.pipeline`. Calling it takes transformers' arguments and
    returns transformers' results: for one input, a dict ``{"score", "start", "end", "answer"}``
    when there is one answer, else a list of them, best first; for several inputs, a list with
    one such result per input. The GIL is released while the model runs.
    """

    task = "question-answering"

    def __init__(self, native: _native.Pipeline, defaults: Optional[Mapping[str, Any]] = None):
        self._native = native
        self._defaults: Dict[str, Any] = dict(_answer_params(defaults or {}, where="pipeline()"))

    @property
    def model(self) -> str:
        """The model as it was given (directory or Hub id)."""
        return self._native.model

    @property
    def model_type(self) -> str:
        """config.json's ``model_type``."""
        return self._native.model_type

    @property
    def threads(self) -> int:
        """Threads the model runs on."""
        return self._native.threads

    @property
    def quantize(self) -> Optional[str]:
        """``"int8"`` when the linear layers are quantized, else ``None``."""
        return self._native.quantize

    def __repr__(self) -> str:
        return f"QuestionAnsweringPipeline({self._native!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Answers the question(s) using the context(s).

        Inputs, as in transformers: ``question=`` and ``context=`` (strings, a list of
        questions about one context, or two lists of the same length); a dict
        ``{"question", "context"}`` or a list of them; two positional strings (question,
        context); a generator of dicts (answers are then yielded one by one).

        Keyword arguments, as in transformers: ``top_k`` (answers per question, default 1),
        ``doc_stride`` (overlap of windows in tokens, default min(max_seq_len // 2, 128)),
        ``max_answer_len`` (tokens, default 15), ``max_seq_len`` (window length in tokens,
        default min(model maximum, 384)), ``max_question_len`` (accepted; fast tokenizers ignore
        it in transformers too), ``handle_impossible_answer`` (also offer the empty answer,
        default False), ``align_to_words`` (widen spans to whole words, default True).
        ``padding``, ``batch_size`` and ``num_workers`` are accepted and change nothing.

        Returns, as transformers: per input, a dict when it has exactly one answer, else a list
        of dicts (best first; fewer than ``top_k`` when the context has fewer distinct answers);
        a list of those when several inputs were given (one input in a list counts as one).

        Raises ``ValueError`` for bad inputs or parameters (a ``KeyError`` too when a dict lacks
        a key), ``TypeError`` for an unknown keyword argument or a value of the wrong type.
        """
        params = dict(self._defaults)
        call_params = {k: v for k, v in kwargs.items() if k not in ("question", "context", "X", "data")}
        params.update(_answer_params(call_params, where="the call"))
        inputs = _parse_inputs(args, kwargs)
        if isinstance(inputs, types.GeneratorType):
            return self._answer_stream(inputs, params)
        answers = self._answer(inputs, params)
        results = [_shape(a) for a in answers]
        if len(results) == 1:
            return results[0]
        return results

    def answer_batch(self, questions: List[str], contexts: List[str], **kwargs: Any) -> List[List[Answer]]:
        """Answers ``questions[i]`` about ``contexts[i]``: always one list of answers per
        question, best first, whatever their number (for batch jobs that want one shape).

        Takes the same keyword arguments as a call, and checks inputs as a call does.
        """
        if not isinstance(questions, list) or not isinstance(contexts, list):
            raise ValueError("answer_batch takes a list of questions and a list of contexts")
        if len(questions) != len(contexts):
            raise ValueError("Questions and contexts don't have the same lengths")
        params = dict(self._defaults)
        params.update(_answer_params(kwargs, where="answer_batch()"))
        pairs = [_normalize({"question": q, "context": c}) for q, c in zip(questions, contexts)]
        return self._answer(pairs, params)

    def _answer(self, pairs: List[Tuple[str, str]], params: Mapping[str, Any]) -> List[List[Answer]]:
        if not pairs:
            return []
        questions = [q for q, _ in pairs]
        contexts = [c for _, c in pairs]
        return cast(List[List[Answer]], self._native.answer(questions, contexts, dict(params)))

    def _answer_stream(
        self, inputs: Iterator[Any], params: Mapping[str, Any]
    ) -> Iterator[Union[Answer, List[Answer]]]:
        round_: List[Tuple[str, str]] = []
        for item in inputs:
            round_.append(_normalize(item))
            if len(round_) == GENERATOR_ROUND:
                yield from (_shape(a) for a in self._answer(round_, params))
                round_ = []
        yield from (_shape(a) for a in self._answer(round_, params))


def pipeline(
    task: Optional[str] = "question-answering",
    model: Union[str, "os.PathLike[str]", None] = None,
    *,
    quantize: Optional[str] = None,
    threads: Optional[int] = None,
    offline: bool = False,
    revision: Optional[str] = None,
    batch_size: int = 8,
    max_context_chars: int = _native.DEFAULT_MAX_CONTEXT_CHARS,
    tokenizer: Optional[str] = None,
    device: Union[int, str, None] = None,
    **defaults: Any,
) -> QuestionAnsweringPipeline:
    """Loads a question-answering pipeline, as ``transformers.pipeline`` does.

    Args:
        task: ``"question-answering"`` (or ``None``); bertqa runs no other task.
        model: a checkpoint directory (``config.json``, tokenizer files, ``model.safetensors``
            or ``pytorch_model.bin``) or a Hugging Face Hub id, looked up in the Hugging Face
            cache (``HF_HUB_CACHE`` / ``HF_HOME``) first and downloaded when missing. Default:
            transformers' default, ``distilbert/distilbert-base-cased-distilled-squad``.
        quantize: ``None`` (f32, transformers' answers) or ``"int8"`` (int8 linear layers:
            faster, answers may move slightly; every supported architecture).
        threads: threads for this pipeline (default: all cores).
        offline: never touch the network (also ``HF_HUB_OFFLINE=1``).
        revision: Hub revision (branch, tag or commit).
        batch_size: most windows per model call.
        max_context_chars: longest context accepted, in characters (windows are built all at
            once, so this bounds memory).
        tokenizer: accepted for compatibility: only the model's own tokenizer (``None`` or the
            same value as ``model``).
        device: accepted for compatibility: bertqa runs on the CPU (``None``, ``-1`` or
            ``"cpu"``).
        **defaults: default call arguments (``top_k``, ``max_answer_len``, ...), as
            transformers allows.

    Raises:
        ValueError: an unsupported task, model type or option.
        OSError: the model cannot be found or its files cannot be read.
    """
    if task not in (None, "question-answering"):
        raise ValueError(f"bertqa runs the 'question-answering' task only, not {task!r}")
    if model is None:
        model = DEFAULT_MODEL
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a directory or a Hub id (str), not {type(model).__name__}; "
            "bertqa loads checkpoints itself"
        )
    if tokenizer is not None and tokenizer != model:
        raise ValueError(
            "bertqa uses the model's own tokenizer; leave tokenizer= unset (or equal to model=)"
        )
    if device not in (None, -1, "cpu"):
        raise ValueError(f"bertqa runs on the CPU; device={device!r} is not supported (use None, -1 or 'cpu')")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a whole number of at least 1, got {threads!r}")
    for name, value in (("batch_size", batch_size), ("max_context_chars", max_context_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    native = _native.Pipeline(
        model,
        quantize=quantize,
        threads=threads,
        offline=bool(offline),
        revision=revision,
        batch_size=batch_size,
        max_context_chars=max_context_chars,
    )
    return QuestionAnsweringPipeline(native, defaults)


def _answer_params(kwargs: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """The answer parameters among ``kwargs``; an unknown keyword is a ``TypeError``."""
    params: Dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in ANSWER_PARAMETERS:
            params[key] = value
        elif key == "topk":
            warnings.warn("topk parameter is deprecated, use top_k instead", UserWarning, stacklevel=3)
            if kwargs.get("top_k") is None:
                params["top_k"] = value
        elif key not in ACCEPTED_AND_IGNORED:
            raise TypeError(
                f"{where} got an unexpected keyword argument {key!r}; the pipeline takes "
                f"{', '.join(ANSWER_PARAMETERS)}"
            )
    return params


def _parse_inputs(args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """(question, context) pairs from the call's arguments, as transformers reads them; a
    generator is returned as it is (its items are read as they are answered)."""
    if args:
        if len(args) == 1:
            inputs = args[0]
        elif len(args) == 2 and all(type(a) is str for a in args):
            inputs = [{"question": args[0], "context": args[1]}]
        else:
            inputs = list(args)
    elif "X" in kwargs or "data" in kwargs:
        key = "X" if "X" in kwargs else "data"
        warnings.warn(
            f"Passing the `{key}` argument to the pipeline is deprecated; use question= and context=",
            FutureWarning,
            stacklevel=3,
        )
        inputs = kwargs[key]
    elif "question" in kwargs and "context" in kwargs:
        question, context = kwargs["question"], kwargs["context"]
        if isinstance(question, list) and isinstance(context, str):
            inputs = [{"question": q, "context": context} for q in question]
        elif isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise ValueError("Questions and contexts don't have the same lengths")
            inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
        elif isinstance(question, str) and isinstance(context, str):
            inputs = [{"question": question, "context": context}]
        else:
            raise ValueError(
                "Arguments can't be understood: question= and context= take strings, a list of "
                "questions with one context, or two lists of the same length"
            )
    else:
        given = sorted(k for k in kwargs if k not in ANSWER_PARAMETERS)
        raise ValueError(
            f"no input: give question= and context=, or {{'question', 'context'}} dicts "
            f"(keyword arguments given: {given})"
        )

    if isinstance(inputs, types.GeneratorType):
        return inputs
    if isinstance(inputs, Mapping):
        inputs = [inputs]
    elif isinstance(inputs, str) or not isinstance(inputs, Iterable):
        raise ValueError(
            f"cannot read a question and a context from {type(inputs).__name__}: give "
            "question= and context=, a {'question', 'context'} dict or a list of them"
        )
    return [_normalize(item) for item in inputs]


def _normalize(item: Any) -> Tuple[str, str]:
    """One input as (question, context), checked as transformers checks it."""
    if not isinstance(item, Mapping):
        raise ValueError(
            f"{_short(item)} argument needs to be of type dict with the keys 'question' and 'context'"
        )
    pair = []
    for key in ("question", "context"):
        if key not in item:
            raise MissingInputKeyError(
                "You need to provide a dictionary with keys {question:..., context:...}"
            )
        value = item[key]
        if value is None:
            raise ValueError(f"`{key}` cannot be None")
        if not isinstance(value, str):
            raise ValueError(f"`{key}` must be a string, not {type(value).__name__}")
        if not value:
            raise ValueError(f"`{key}` cannot be empty")
        pair.append(value)
    extra = sorted(str(k) for k in item if k not in ("question", "context"))
    if extra:
        raise TypeError(f"unexpected input keys {extra}; an input has 'question' and 'context' only")
    return pair[0], pair[1]


def _shape(answers: List[Answer]) -> Union[Answer, List[Answer]]:
    """transformers' postprocess: one answer alone is returned as that dict."""
    return answers[0] if len(answers) == 1 else answers


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
