"""What a search-space file writes: the Sweep (pure data, like Ray Tune's TuneConfig), its options
(TPE, Promotion, ASHA, PBT, PB2, Resources, FinalEval, Quick, Budget) and search spaces (a dict of ray.tune domains or an Optuna
define-by-run function). No Ray, MLflow or torch: importing it, or building a Sweep, starts nothing.
"""
from sweeper.definition.budget import Budget, parse_budget
from sweeper.definition.options import (
    ASHA,
    AUTO,
    PB2,
    PBT,
    POPULATION,
    TPE,
    FinalEval,
    Promotion,
    Quick,
    Range,
    Resources,
    SweepError,
)
from sweeper.definition.space import suggest_optimizer
from sweeper.definition.sweep import GENERATION_KEY, Sweep, parse_overrides, without_generation

__all__ = ["Sweep", "SweepError", "TPE", "Promotion", "ASHA", "PBT", "PB2", "Range", "POPULATION", "AUTO", "Resources", "FinalEval", "Quick", "Budget",
           "parse_budget", "parse_overrides", "GENERATION_KEY", "without_generation", "suggest_optimizer"]
