"""Type stubs of ``bertqa._native``, the Rust half of the package."""

from typing import Any, Dict, List, Optional, final

__all__ = ["DEFAULT_MAX_CONTEXT_CHARS", "Pipeline", "__version__"]

__version__: str
DEFAULT_MAX_CONTEXT_CHARS: int
#: config.json `model_type`s bertqa runs, sorted.
SUPPORTED_MODEL_TYPES: list[str]

@final
class Pipeline:
    """A question-answering model loaded by bertqa. Use ``bertqa.pipeline(...)``, which wraps
    it with transformers' call conventions."""

    def __new__(
        cls,
        model: str,
        *,
        quantize: Optional[str] = None,
        threads: Optional[int] = None,
        offline: bool = False,
        revision: Optional[str] = None,
        batch_size: int = 8,
        max_context_chars: int = ...,
    ) -> "Pipeline": ...
    def answer(
        self,
        questions: List[str],
        contexts: List[str],
        params: Optional[Dict[str, Any]] = None,
    ) -> List[List[Dict[str, Any]]]:
        """One list of answers per (question, context), best first; the GIL is released while
        the model runs."""
    @property
    def model(self) -> str: ...
    @property
    def model_type(self) -> str: ...
    @property
    def quantize(self) -> Optional[str]: ...
    @property
    def threads(self) -> int: ...
    @property
    def default_max_seq_len(self) -> int: ...
    @property
    def fast_engine(self) -> bool: ...
