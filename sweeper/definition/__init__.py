"""What a search-space file writes: the Sweep (pure data, like Ray Tune's TuneConfig), its options
(TPE, Promotion, ASHA, Resources, FinalEval, Quick, Budget) and search spaces (a dict of ray.tune domains or an Optuna
define-by-run function). No Ray, MLflow or torch: importing it, or building a Sweep, starts nothing.
"""
from sweeper.definition.budget import Budget, parse_budget
from sweeper.definition.options import ASHA, AUTO, TPE, FinalEval, Promotion, Quick, Resources, SweepError
from sweeper.definition.space import suggest_optimizer
from sweeper.definition.sweep import Sweep, parse_overrides

__all__ = ["Sweep", "SweepError", "TPE", "Promotion", "ASHA", "AUTO", "Resources", "FinalEval", "Quick", "Budget",
           "parse_budget", "parse_overrides", "suggest_optimizer"]
