"""transformers' ``pipeline("question-answering")`` call conventions over bertqa's engine.

The argument handling mirrors transformers 4.57's ``QuestionAnsweringArgumentHandler`` and
``QuestionAnsweringPipeline`` (which inputs are accepted, when a dict or a list comes back), so
that code written for transformers runs unchanged; the answers come from the Rust library.
"""

from __future__ import annotations

import numbers
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

#: Keyword arguments that carry the inputs of a call.
INPUT_KEYWORDS = ("question", "context", "X", "data")

#: Keyword arguments of ``transformers.pipeline()`` that mean nothing to bertqa's engine (it
#: reads the model's own files, runs no remote code, has no processors): accepted, ignored.
PIPELINE_IGNORED = (
    "trust_remote_code",
    "feature_extractor",
    "image_processor",
    "processor",
    "binary_output",
    "modelcard",
    "args_parser",
    "use_auth_token",
)

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
        self._defaults: Dict[str, Any] = dict(_answer_params(defaults or {}, where="pipeline()", stacklevel=4))

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
        ``padding``, ``batch_size`` and ``num_workers`` are accepted and change nothing; other
        keywords are ignored, as transformers ignores them, with a warning naming them.

        Returns, as transformers: per input, a dict when it has exactly one answer, else a list
        of dicts (best first; when the context has fewer scored spans than asked for, spans of
        score 0.0 fill the list, as transformers' ``decode_spans`` does, and it is shorter than
        ``top_k`` only when the context has fewer distinct answers);
        a list of those when several inputs were given (one input in a list counts as one).

        Inputs may also be ``SquadExample`` objects (anything with ``question_text`` and
        ``context_text``), in a list or as several positional arguments.

        Raises ``ValueError`` for bad inputs or parameters (a ``KeyError`` too when a dict lacks
        a key; ``Unknown arguments`` when no input is given), ``TypeError`` for a value of the
        wrong type.
        """
        # As transformers: the inputs are read first (``qa(Y=None)`` is a ValueError about the
        # inputs), then the parameters; keywords the pipeline does not know are ignored.
        inputs = _parse_inputs(args, kwargs)
        params = dict(self._defaults)
        call_params = {k: v for k, v in kwargs.items() if k not in INPUT_KEYWORDS}
        params.update(_answer_params(call_params, where="the call", stacklevel=3))
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
        params.update(_answer_params(kwargs, where="answer_batch()", stacklevel=3))
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
    framework: Optional[str] = None,
    config: Optional[str] = None,
    use_fast: bool = True,
    token: Union[str, bool, None] = None,
    device_map: Optional[str] = None,
    dtype: Any = "auto",
    torch_dtype: Any = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    pipeline_class: Any = None,
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
            ``"cpu"``; ``device_map`` likewise ``None``, ``"cpu"`` or ``"auto"``).
        framework: ``None``, ``"pt"`` or ``"tf"``: accepted, the answers are PyTorch's.
        config: ``None`` (or the same value as ``model``): config.json is read from the model.
        use_fast: ``True``: bertqa runs the fast (Rust) tokenizer only.
        token: accepted; the Hub token is read from ``HF_TOKEN`` (a warning says so when
            a string is given).
        dtype, torch_dtype: ``"auto"``, ``None`` or float32: bertqa computes in f32 (see
            ``quantize`` for int8).
        model_kwargs: accepted and ignored (a warning names them when not empty).
        **defaults: default call arguments (``top_k``, ``max_answer_len``, ...), as
            transformers allows; other keywords transformers takes here (``trust_remote_code``,
            ``num_workers``, ``binary_output``, ...) are ignored, as are keywords it does not
            know (``max_seq_length`` is not ``max_seq_len``: transformers ignores it too), with a
            warning naming those.

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
    if device_map not in (None, "cpu", "auto"):
        raise ValueError(
            f"bertqa runs on the CPU; device_map={device_map!r} is not supported (use None, 'cpu' or 'auto')"
        )
    if framework not in (None, "pt", "tf"):
        raise ValueError(f"framework={framework!r} is not one of transformers' frameworks (None, 'pt', 'tf')")
    if config is not None and config != model:
        raise ValueError("bertqa reads config.json from the model; leave config= unset (or equal to model=)")
    if not use_fast:
        raise ValueError(
            "bertqa runs the fast tokenizer only (use_fast=False would make transformers answer "
            "through its slow tokenizer); leave use_fast=True"
        )
    for name, value in (("dtype", dtype), ("torch_dtype", torch_dtype)):
        if value not in (None, "auto", "float32") and str(value) != "torch.float32":
            raise ValueError(
                f"{name}={value!r} is not supported: bertqa computes in float32 (or int8 linear "
                "layers with quantize='int8')"
            )
    if pipeline_class is not None:
        raise ValueError("pipeline_class is not supported: bertqa has one pipeline class")
    if isinstance(token, str):
        warnings.warn("token= is not used: bertqa reads the Hub token from HF_TOKEN", UserWarning, stacklevel=2)
    if model_kwargs:
        warnings.warn(
            f"model_kwargs {sorted(model_kwargs)} ignored: bertqa loads the checkpoint itself",
            UserWarning,
            stacklevel=2,
        )
    defaults = {k: v for k, v in defaults.items() if k not in PIPELINE_IGNORED}
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


def _answer_params(kwargs: Mapping[str, Any], where: str, stacklevel: int = 3) -> Dict[str, Any]:
    """The answer parameters among ``kwargs``, checked as transformers' ``_sanitize_parameters``
    checks them (``top_k`` and ``max_answer_len`` of at least 1; ``True`` is 1, as in Python).

    transformers ignores keyword arguments it does not know; so does bertqa, with a warning that
    names them (a misspelt parameter otherwise changes nothing, silently).
    """
    params: Dict[str, Any] = {}
    unknown = []
    for key, value in kwargs.items():
        if key in ANSWER_PARAMETERS:
            params[key] = value
        elif key == "topk":
            if value is not None and kwargs.get("top_k") is None:
                warnings.warn("topk parameter is deprecated, use top_k instead", UserWarning, stacklevel=stacklevel)
                params["top_k"] = value
        elif key not in ACCEPTED_AND_IGNORED and key not in INPUT_KEYWORDS:
            unknown.append(key)
    for name in ("top_k", "max_answer_len"):
        value = params.get(name)
        if isinstance(value, numbers.Integral) and value < 1:
            raise ValueError(f"{name} parameter should be >= 1 (got {value})")
    if unknown:
        warnings.warn(
            f"{where}: keyword argument(s) {', '.join(map(repr, unknown))} ignored, as transformers "
            f"ignores them; the pipeline's parameters are {', '.join(ANSWER_PARAMETERS)}",
            UserWarning,
            stacklevel=stacklevel,
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
        raise ValueError(
            f"Unknown arguments {sorted(kwargs)}: no input; give question= and context=, or "
            "{'question', 'context'} dicts"
        )

    if isinstance(inputs, types.GeneratorType):
        return inputs
    if isinstance(inputs, Mapping):
        inputs = [inputs]
    elif isinstance(inputs, str) or not isinstance(inputs, Iterable):
        raise ValueError(
            f"Invalid arguments: cannot read a question and a context from {type(inputs).__name__}: "
            "give question= and context=, a {'question', 'context'} dict or a list of them"
        )
    return [_normalize(item) for item in inputs]


def _normalize(item: Any) -> Tuple[str, str]:
    """One input as (question, context), checked as transformers checks it: a dict with
    ``question`` and ``context``, or a ``SquadExample`` (any object with ``question_text`` and
    ``context_text``)."""
    if not isinstance(item, Mapping):
        if hasattr(item, "question_text") and hasattr(item, "context_text"):
            return _text(item.question_text, "question_text"), _text(item.context_text, "context_text")
        raise ValueError(
            f"{_short(item)} argument needs to be of type (SquadExample, dict): a dict with the keys "
            "'question' and 'context'"
        )
    for key in ("question", "context"):
        if key not in item:
            raise MissingInputKeyError(
                "You need to provide a dictionary with keys {question:..., context:...}"
            )
    pair = (_text(item["question"], "question"), _text(item["context"], "context"))
    extra = sorted(str(k) for k in item if k not in ("question", "context"))
    if extra:
        raise TypeError(f"unexpected input keys {extra}; an input has 'question' and 'context' only")
    return pair


def _text(value: Any, key: str) -> str:
    if value is None:
        raise ValueError(f"`{key}` cannot be None")
    if not isinstance(value, str):
        raise ValueError(f"`{key}` must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"`{key}` cannot be empty")
    return value


def _shape(answers: List[Answer]) -> Union[Answer, List[Answer]]:
    """transformers' postprocess: one answer alone is returned as that dict."""
    return answers[0] if len(answers) == 1 else answers


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
