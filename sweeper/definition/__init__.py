"""What a search-space file writes: the Sweep (pure data, like Ray Tune's TuneConfig), its options
(TPE, ASHA, Resources, FinalEval, Quick) and search spaces (a dict of ray.tune domains or an Optuna
define-by-run function). No Ray, MLflow or torch: importing it, or building a Sweep, starts nothing.
"""
from sweeper.definition.options import ASHA, TPE, FinalEval, Quick, Resources, SweepError
from sweeper.definition.space import suggest_optimizer
from sweeper.definition.sweep import Sweep, parse_overrides

__all__ = ["Sweep", "SweepError", "TPE", "ASHA", "Resources", "FinalEval", "Quick", "parse_overrides",
           "suggest_optimizer"]
