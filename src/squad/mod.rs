//! SQuAD v1.1 / v2.0 data and the official evaluation.
//!
//! - [`data`]: [`SquadDataset`] reads the SQuAD JSON format into flat [`SquadExample`]s (one per
//!   question, with every field training needs); the file's own shape ([`SquadFile`]) serves
//!   the document index too.
//! - [`metric`]: [`evaluate`] scores predictions as the official scripts do.

pub mod data;
pub mod metric;

pub use data::{
    SquadAnswer, SquadArticle, SquadDataset, SquadExample, SquadFile, SquadParagraph, SquadVersion,
};
pub use metric::{
    evaluate, evaluate_v1, evaluate_v2, exact_match, f1_score, f1_score_v2, normalize_answer,
    SquadMetrics, SubsetScores, V1Metrics, V2Metrics,
};
