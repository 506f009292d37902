"""Full-ranking evaluation of retrieval tasks (see :mod:`mtlframe.ranking.evaluate`)."""
from mtlframe.ranking.evaluate import (
    CSR,
    HIGHER_IS_BETTER,
    RANKING_METRICS,
    RankingAccumulator,
    default_ranking_metrics,
    full_ranking,
    higher_is_better,
    parse_ranking_metric,
    top_k,
)

__all__ = ["CSR", "HIGHER_IS_BETTER", "RANKING_METRICS", "RankingAccumulator", "default_ranking_metrics",
           "full_ranking", "higher_is_better", "parse_ranking_metric", "top_k"]
