//! The `Pipeline` class: a loaded checkpoint that answers lists of questions.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bertqa::pipeline::Prepared;
use bertqa::{Answer, Error, LoadOptions, Precision, QaParams, QaPipeline, QaRequest};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use rayon::prelude::*;

use crate::{errors, params};

/// Questions answered per model round. Their windows are batched together (enough to fill the
/// batches of every thread); between rounds the GIL is taken back to notice Ctrl-C, and only
/// one round's windows are held in memory.
const ROUND: usize = 64;

/// A question-answering model loaded by bertqa. Use `bertqa.pipeline(...)`, which wraps it
/// with transformers' call conventions.
#[pyclass(frozen, module = "bertqa._native")]
pub struct Pipeline {
    qa: QaPipeline,
    /// A pool of the requested size, or `None` for rayon's global pool (all cores).
    pool: Option<rayon::ThreadPool>,
    model: String,
    quantize: Option<String>,
    threads: usize,
}

impl Pipeline {
    /// Runs `work` on this pipeline's threads, turning a panic into a Python exception.
    fn on_pool<T: Send>(&self, work: impl FnOnce() -> bertqa::Result<T> + Send) -> PyResult<T> {
        on_pool(self.pool.as_ref(), work)
    }

    /// Validates, tokenizes and answers one round of requests. An invalid input is named by
    /// its index in the whole call (`first` is the index of `requests[0]`). Tokenizing and
    /// decoding run on the pool's threads too, one request per task.
    fn answer_round(
        &self,
        requests: &[QaRequest],
        first: usize,
    ) -> bertqa::Result<Vec<Vec<Answer>>> {
        let prepared: Vec<bertqa::Result<Prepared>> =
            requests.par_iter().map(|r| self.qa.prepare(r)).collect();
        // The first invalid input in order, whichever thread found it.
        let prepared = prepared
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                p.map_err(|e| match e {
                    Error::InvalidInput(message) => {
                        Error::InvalidInput(format!("inputs[{}]: {message}", first + i))
                    }
                    other => other,
                })
            })
            .collect::<bertqa::Result<Vec<_>>>()?;
        let logits = self.qa.run_prepared(&prepared, |_| {})?;
        Ok(prepared
            .par_iter()
            .zip(&logits)
            .map(|(p, l)| p.answers(l).answers)
            .collect())
    }
}

#[pymethods]
impl Pipeline {
    /// Loads `model`: a checkpoint directory or a Hugging Face Hub id (looked up in the HF cache
    /// first, downloaded when missing unless `offline`).
    ///
    /// `quantize="int8"` quantizes the encoder's linear layers (answers may move slightly).
    /// `threads` sizes this pipeline's own
    /// thread pool (default: all cores). `batch_size` is the most windows per model call;
    /// `max_context_chars` the longest context accepted.
    #[new]
    // Each parameter is one of Python's keyword arguments.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (model, *, quantize=None, threads=None, offline=false, revision=None,
                        batch_size=8, max_context_chars=bertqa::pipeline::DEFAULT_MAX_CONTEXT_CHARS))]
    fn new(
        py: Python<'_>,
        model: String,
        quantize: Option<String>,
        threads: Option<usize>,
        offline: bool,
        revision: Option<String>,
        batch_size: usize,
        max_context_chars: usize,
    ) -> PyResult<Self> {
        let precision = match quantize.as_deref() {
            None => Precision::F32,
            Some("int8") => Precision::Int8,
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "quantize='{other}' is not supported; use None (f32) or 'int8'"
                )))
            }
        };
        if model.trim().is_empty() {
            return Err(PyValueError::new_err(
                "model is empty; give a checkpoint directory or a Hub id",
            ));
        }
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let pool = match threads {
            None => None,
            Some(0) => return Err(PyValueError::new_err("threads must be at least 1")),
            Some(n) => Some(
                bertqa::fpenv::pool_builder()
                    .num_threads(n)
                    .thread_name(|i| format!("bertqa-{i}"))
                    .build()
                    .map_err(|e| {
                        pyo3::exceptions::PyRuntimeError::new_err(format!(
                            "cannot start {n} threads: {e}"
                        ))
                    })?,
            ),
        };
        let options = LoadOptions {
            hub: bertqa::HubOptions { offline, revision },
            batch_size,
            max_context_chars,
            precision,
            ..LoadOptions::default()
        };
        let qa = py.detach(|| on_pool(pool.as_ref(), || QaPipeline::load(&model, &options)))?;
        let threads = pool.as_ref().map_or_else(
            rayon::current_num_threads,
            rayon::ThreadPool::current_num_threads,
        );
        Ok(Self {
            qa,
            pool,
            model,
            quantize,
            threads,
        })
    }

    /// Answers `questions[i]` about `contexts[i]` for every i, with the pipeline's keyword
    /// arguments in `params` (`None` values take the defaults). Returns one list of answers
    /// per question, best first: dicts `{"score", "start", "end", "answer"}` with character
    /// offsets into the context (`answer == context[start:end]`).
    ///
    /// The GIL is released while questions are tokenized and the model runs.
    #[pyo3(signature = (questions, contexts, params=None))]
    fn answer<'py>(
        &self,
        py: Python<'py>,
        questions: Vec<Bound<'py, PyString>>,
        contexts: Vec<Bound<'py, PyString>>,
        params: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyList>> {
        if questions.len() != contexts.len() {
            return Err(PyValueError::new_err(format!(
                "{} questions but {} contexts; give one context per question",
                questions.len(),
                contexts.len()
            )));
        }
        let params: QaParams = params::from_dict(params)?;
        let out = PyList::empty(py);
        // Texts are copied out of Python one round at a time: many questions about one long
        // context share one Python string, and copying it for all of them at once could take
        // more memory than the machine has.
        for (round, (questions, contexts)) in questions
            .chunks(ROUND)
            .zip(contexts.chunks(ROUND))
            .enumerate()
        {
            let requests = questions
                .iter()
                .zip(contexts)
                .map(|(question, context)| {
                    Ok(QaRequest {
                        question: question.extract()?,
                        context: context.extract()?,
                        params: params.clone(),
                    })
                })
                .collect::<PyResult<Vec<_>>>()?;
            let answers =
                py.detach(|| self.on_pool(|| self.answer_round(&requests, round * ROUND)))?;
            for answers in answers {
                out.append(answer_dicts(py, &answers)?)?;
            }
            // Ctrl-C (and other signal handlers) between rounds.
            py.check_signals()?;
        }
        Ok(out)
    }

    /// The model as it was given (directory or Hub id).
    #[getter]
    fn model(&self) -> &str {
        &self.model
    }

    /// config.json's `model_type`.
    #[getter]
    fn model_type(&self) -> &str {
        self.qa.spec().model_type()
    }

    /// `"int8"` when the linear layers are quantized, else `None`.
    #[getter]
    fn quantize(&self) -> Option<&str> {
        self.quantize.as_deref()
    }

    /// Threads the model runs on.
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// The default window length in tokens (`max_seq_len`): min(model maximum, 384).
    #[getter]
    fn default_max_seq_len(&self) -> usize {
        self.qa.default_max_seq_len()
    }

    /// Whether bertqa's fast CPU engine runs the model (else the reference models do).
    #[getter]
    fn fast_engine(&self) -> bool {
        self.qa.is_fast()
    }

    fn __repr__(&self) -> String {
        format!(
            "Pipeline(model={:?}, model_type={:?}, quantize={:?}, threads={})",
            self.model,
            self.qa.spec().model_type(),
            self.quantize,
            self.threads
        )
    }
}

/// Runs `work` inside `pool` (or on the global pool), a panic becoming a Python exception.
/// Subnormals are flushed meanwhile; the calling Python thread gets its MXCSR back on return.
fn on_pool<T: Send>(
    pool: Option<&rayon::ThreadPool>,
    work: impl FnOnce() -> bertqa::Result<T> + Send,
) -> PyResult<T> {
    if pool.is_none() {
        bertqa::fpenv::ensure_global_pool();
    }
    let _flush = bertqa::fpenv::FlushGuard::new();
    let run = AssertUnwindSafe(|| match pool {
        Some(pool) => pool.install(work),
        None => work(),
    });
    match catch_unwind(run) {
        Ok(result) => result.map_err(errors::to_py),
        Err(payload) => Err(errors::from_panic(payload)),
    }
}

/// Answers as transformers' dicts, keys in its order; the score is the f32 as a Python float.
fn answer_dicts<'py>(py: Python<'py>, answers: &[Answer]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for a in answers {
        let dict = PyDict::new(py);
        dict.set_item("score", f64::from(a.score))?;
        dict.set_item("start", a.start)?;
        dict.set_item("end", a.end)?;
        dict.set_item("answer", &a.answer)?;
        list.append(dict)?;
    }
    Ok(list)
}
