"""Each private name that sweeper/compat.py and trainables/compat.py wrap, checked on the installed
Ray, Optuna and torch. Every check uses real objects. A failure names the library, its version and the
private name that changed. When a new release fails here, fix the wrapper (or drop it, if a public API
now does the job), then raise the cap in pyproject.toml."""
import ast
import inspect
import sys
import textwrap
import threading
import time
from importlib.metadata import version

import optuna
import pytest
import ray
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from ray import tune
from ray.train._internal.session import _TrainingResult
from ray.train._internal.storage import StorageContext
from ray.tune import CLIReporter
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from torch import nn

from sweeper import compat
from sweeper.search.console import StatusTable
from sweeper.search.searcher import SweepSearch
from trainables import compat as torch_compat
from trainables.models.norms import FP32SpectralNorm, spectral


def changed(library: str, private: str) -> str:
    return (f"{library} {version(library)} changed {private}, which sweeper relies on: "
            f"update its wrapper in sweeper/compat.py or trainables/compat.py")


def held(library: str, private: str, read):
    """`read()`, or a test failure naming the private name, where reading it raises."""
    try:
        return read()
    except (AttributeError, TypeError, KeyError, IndexError) as e:
        pytest.fail(f"{changed(library, private)} ({type(e).__name__}: {e})")


def own_names(cls: type) -> set[str]:
    """What `cls` defines itself: its class attributes and methods, and every attribute its methods
    set on an instance (`self.x = ...`, `self.__dict__.setdefault("x", ...)`), dunders aside."""
    names = set(vars(cls))
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(cls)))):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and ast.unparse(node.value) == "self":
            names.add(node.attr)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "self.__dict__.setdefault":
            names.add(node.args[0].value)
    return {name for name in names if not (name.startswith("__") and name.endswith("__"))}


def shadowed(subclass: type, base_instance, overrides: set[str]) -> set[str]:
    """The names of `subclass`'s own that its base (`base_instance`: one set up as Tune sets it up)
    also uses, apart from the methods it overrides on purpose. Any such name means a new release of
    the base now uses one of sweeper's own names, and the two would overwrite each other."""
    return (own_names(subclass) - overrides) & (set(dir(type(base_instance))) | set(vars(base_instance)))


# --- Ray Tune: the Tuner ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    yield
    ray.shutdown()


def reports_x(config):
    tune.report({"fid": config["x"], "eval_period": 1})


class Results(tune.Callback):
    def __init__(self):
        self.seen = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.seen.append(result["fid"])


def _optuna_search(**kwargs) -> OptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0), **kwargs)


def test_a_tuners_tune_config_and_run_config_are_those_fit_uses_and_restore_rebuilds(ray_local, tmp_path):
    searcher = _optuna_search()
    tuner = tune.Tuner(reports_x, param_space={"x": tune.uniform(0.0, 1.0)},
                       tune_config=tune.TuneConfig(metric="fid", mode="min", search_alg=searcher, num_samples=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="compat", verbose=0))
    private = "Tuner._local_tuner._tune_config"
    assert held("ray", private, lambda: compat.tune_config_of(tuner)).search_alg is searcher, changed("ray", private)
    # A callback set on run_config_of's object after construction is one that fit calls.
    results = Results()
    private = "Tuner._local_tuner.get_run_config()"
    held("ray", private, lambda: compat.run_config_of(tuner)).callbacks = [results]
    (result,) = tuner.fit()
    assert results.seen == [result.metrics["fid"]], changed("ray", private)

    restored = tune.Tuner.restore(str(tmp_path / "compat"), reports_x)
    again = compat.tune_config_of(restored).search_alg
    # The searcher and the settings Tune pickled (its state comes back in fit, from the searcher's file).
    assert isinstance(again, OptunaSearch) and again is not searcher, changed("ray", "Tuner._local_tuner._tune_config")
    assert compat.tune_config_of(restored).metric == "fid"


# --- Ray Tune: OptunaSearch -----------------------------------------------------------------------

def test_optuna_search_keeps_its_study_its_trials_and_which_it_told():
    searcher = _optuna_search()
    assert searcher.set_search_properties("fid", "min", {"x": tune.uniform(0.0, 1.0)})
    first, second = searcher.suggest("t1"), searcher.suggest("t2")

    study = held("ray", "OptunaSearch._ot_study", lambda: compat.optuna_study_of(searcher))
    assert isinstance(study, optuna.Study), changed("ray", "OptunaSearch._ot_study")
    assert [t.params for t in study.trials] == [first, second], changed("ray", "OptunaSearch._ot_study")
    trials = held("ray", "OptunaSearch._ot_trials", lambda: compat.optuna_trials_of(searcher))
    assert {tid: (t.number, t.params) for tid, t in trials.items()} == {"t1": (0, first), "t2": (1, second)}, \
        changed("ray", "OptunaSearch._ot_trials")

    searcher.on_trial_complete("t1", {"fid": 0.5})
    told = held("ray", "OptunaSearch._completed_trials", lambda: compat.completed_trials_of(searcher))
    assert told == {"t1"}, changed("ray", "OptunaSearch._completed_trials")
    # SweepSearch tells a pruned trial itself and adds it to the set: Ray must then leave it alone.
    study.tell(trials["t2"], state=TrialState.PRUNED)
    told.add("t2")
    searcher.on_trial_complete("t2", {"fid": 0.1})
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED], \
        changed("ray", "OptunaSearch._completed_trials")

    space = held("ray", "OptunaSearch._space", lambda: compat.search_space_of(searcher))
    assert space == {"x": FloatDistribution(0.0, 1.0)}, changed("ray", "OptunaSearch._space")


def test_a_define_by_run_space_is_run_as_optuna_search_runs_it():
    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)
        return {"fixed": 3}

    searcher = _optuna_search(space=space, metric="fid", mode="min")
    assert held("ray", "OptunaSearch._space", lambda: compat.search_space_of(searcher)) is space, \
        changed("ray", "OptunaSearch._space")
    trial = optuna.create_study().ask()
    private = "OptunaSearch._suggest_from_define_by_run_func"
    suggested = held("ray", private, lambda: compat.suggest_define_by_run(searcher, space, trial))
    assert suggested == {"x": trial.params["x"], "fixed": 3}, changed("ray", private)
    with pytest.raises(TypeError, match="define-by-run"):  # the check that calling space(trial) would skip
        compat.suggest_define_by_run(searcher, lambda t: [t.suggest_float("x", 0.0, 1.0)], optuna.create_study().ask())


def test_sweep_search_own_names_shadow_nothing_of_optuna_search():
    # SweepSearch keeps _time_attr, _max_t, _n_startup, ... of its own; OptunaSearch has none of them.
    plain = _optuna_search()
    plain.set_search_properties("fid", "min", {"x": tune.uniform(0.0, 1.0)})
    plain.suggest("t1")
    clash = shadowed(SweepSearch, plain, {"suggest", "on_trial_result", "on_trial_complete"})
    assert not clash, changed("ray", f"OptunaSearch: it now uses SweepSearch's own names {sorted(clash)}")


# --- Ray Tune: schedulers, limiters, reporters ----------------------------------------------------

def test_asha_exposes_its_time_attribute_max_t_and_stop_count():
    asha = ASHAScheduler(time_attr="eval_period", max_t=8, grace_period=1, reduction_factor=2, metric="fid", mode="min")
    assert held("ray", "ASHAScheduler._time_attr", lambda: compat.asha_time_attr(asha)) == "eval_period", \
        changed("ray", "ASHAScheduler._time_attr")
    assert held("ray", "ASHAScheduler._max_t", lambda: compat.asha_max_t(asha)) == 8, changed("ray", "ASHAScheduler._max_t")
    trials = [Trial("__fake", trial_id=f"t{i}", stub=True) for i in range(3)]
    for trial in trials:
        asha.on_trial_add(None, trial)
    actions = [asha.on_trial_result(None, trial, {"fid": fid, "eval_period": 1}) for trial, fid in zip(trials, (1.0, 2.0, 3.0))]
    assert actions == ["CONTINUE", "STOP", "STOP"]  # the rung's best half of the first two, then worse ones
    assert "num_stopped=2" in asha.debug_string(), changed("ray", "ASHAScheduler._num_stopped")
    held("ray", "ASHAScheduler._num_stopped", lambda: compat.uncount_asha_stop(asha))
    assert "num_stopped=1" in asha.debug_string(), changed("ray", "ASHAScheduler._num_stopped")


def test_experiment_state_is_saved_as_often_as_a_twentieth_of_the_drivers_time_allows(ray_local, tmp_path):
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="e")
    manager = _ExperimentCheckpointManager(storage=storage, checkpoint_period="auto")
    private = "_ExperimentCheckpointManager._update_auto_checkpoint_time / _checkpoint_period"
    saves = []

    def save(seconds):
        def save_fn():
            time.sleep(seconds)
            saves.append(time.monotonic())
        held("ray", private, lambda: manager.sync_up_experiment_state(save_fn, wait=True))

    compat.save_state_at_a_cost_share(_ExperimentCheckpointManager)
    save(0.02)
    period = held("ray", private, lambda: manager._checkpoint_period)
    assert 19 * 0.02 <= period < 10.0, changed("ray", private)  # Tune's own auto would wait 10 s
    save(0.0)
    assert len(saves) == 1  # too soon: skipped
    time.sleep(period)
    save(0.0)
    assert len(saves) == 2, changed("ray", private)
    assert held("ray", private, lambda: manager._checkpoint_period) < 0.2  # a cheap save: soon again
    fixed = _ExperimentCheckpointManager(storage=storage, checkpoint_period=5)
    fixed.sync_up_experiment_state(lambda: None, wait=True)
    assert fixed._checkpoint_period == 5.0  # a user's TUNE_GLOBAL_CHECKPOINT_S stands


def test_what_tune_asks_a_trial_to_restore_from_is_read_and_replaced():
    named, left = tune.Checkpoint("/named"), tune.Checkpoint("/left")
    private = "ray.train._internal.session._TrainingResult(checkpoint, metrics)"
    asked = held("ray", private, lambda: _TrainingResult(checkpoint=named, metrics={"eval_period": 2}))
    assert compat.restore_target(asked) is named, changed("ray", private)
    instead = compat.with_restore_target(asked, left)
    assert isinstance(instead, _TrainingResult) and instead.checkpoint is left and instead.metrics == {"eval_period": 2}
    assert compat.restore_target(named) is named and compat.with_restore_target(named, left) is left
    assert compat.restore_target("/a/path") is None


def test_a_concurrency_limiter_says_it_limits():
    searcher = _optuna_search()
    searcher.set_search_properties("fid", "min", {"x": tune.uniform(0.0, 1.0)})
    limiter = ConcurrencyLimiter(searcher, max_concurrent=2)
    private = "ConcurrencyLimiter._limit_concurrency"
    assert held("ray", private, lambda: compat.limits_concurrency(limiter)) is True, changed("ray", private)
    assert [limiter.suggest(f"t{i}") is not None for i in range(3)] == [True, True, False]  # what True means


def test_a_cli_reporter_keeps_its_metric_mode_and_last_report_time():
    reporter = CLIReporter(max_report_frequency=300)
    assert reporter.set_search_properties("fid", "max")
    private = "CLIReporter._metric/_mode"
    assert held("ray", private, lambda: compat.reporter_metric_and_mode(reporter)) == ("fid", "max"), \
        changed("ray", private)
    private = "CLIReporter._last_report_time"
    held("ray", private, lambda: compat.mark_reported(reporter, time.time()))
    assert not reporter.should_report([], done=False), changed("ray", private)
    compat.mark_reported(reporter, time.time() - 301)
    assert reporter.should_report([], done=False), changed("ray", private)


def test_status_table_own_names_shadow_nothing_of_cli_reporter():
    plain = CLIReporter()
    plain.set_search_properties("fid", "min")
    clash = shadowed(StatusTable, plain, {"setup", "report"})
    assert not clash, changed("ray", f"CLIReporter: it now uses StatusTable's own names {sorted(clash)}")


# --- Ray core: the nodes ------------------------------------------------------------------------

@ray.remote(num_cpus=0)
def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def test_ray_nodes_answer_reads_as_this_nodes_address_id_and_cpus(ray_local):
    private = "ray.nodes()'s keys Alive, NodeID, NodeManagerAddress, Resources"
    (node,) = held("ray", private, lambda: compat.alive_nodes(ray.nodes()))
    assert node.address == ray.util.get_node_ip_address(), changed("ray", private)
    assert node.node_id == ray.get_runtime_context().get_node_id(), changed("ray", private)
    assert node.cpus == ray.cluster_resources()["CPU"] == 2, changed("ray", private)
    # The id in the form sweeper.trial.leftovers pins its task with.
    pinned = _node_id.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False))
    assert ray.get(pinned.remote()) == node.node_id


# --- MLflow ---------------------------------------------------------------------------------------

def test_a_system_metrics_monitor_keeps_its_thread_where_sweeper_reads_it():
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor("0" * 32, sampling_interval=1)
    private = "SystemMetricsMonitor._process"
    assert held("mlflow", private, lambda: monitor._process) is None, changed("mlflow", private)
    assert compat.monitor_running(monitor) is False  # not started
    monitor._process = threading.Thread(target=lambda: None)
    monitor._process.start()
    monitor._process.join()
    assert compat.monitor_running(monitor) is False  # its thread ended (a failed call ends it)


# --- Optuna -------------------------------------------------------------------------------------

@pytest.mark.parametrize("distribution, outside", [
    (FloatDistribution(1e-5, 1e-1, log=True), [0.5, 1e-6]),
    (FloatDistribution(0.0, 1.0, step=0.25), [0.3, 1.25, -0.25]),
    (IntDistribution(1, 9, step=2), [4, 11, 0]),
    (CategoricalDistribution(["adam", "sgd", 0.5]), ["rmsprop", 0.25]),
])
def test_a_distribution_contains_what_optuna_draws_from_it_and_nothing_outside(distribution, outside):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [study.ask({"p": distribution}).params["p"] for _ in range(30)]
    private = "BaseDistribution._contains"
    assert all(held("optuna", private, lambda v=v: compat.distribution_contains(distribution, v)) for v in drawn), \
        changed("optuna", private)
    assert not any(compat.distribution_contains(distribution, v) for v in outside), changed("optuna", private)


def test_frozen_and_live_trials_are_the_studys_own():
    study = optuna.create_study()
    asked = [study.ask({"x": FloatDistribution(0.0, 1.0)}) for _ in range(3)]
    study.tell(asked[1], 0.25)
    for trial in asked:
        frozen = compat.frozen_trial(study, trial)
        assert (frozen.number, frozen.params) == (trial.number, trial.params)
    assert compat.frozen_trial(study, asked[1]).value == 0.25
    assert compat.frozen_trial(study, asked[0]) is study.get_trials(deepcopy=False)[0]  # not a copy

    # A trial added whole (SweepSearch.retell), then a live Trial for it.
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=3.0, params={"x": 0.5},
                                 distributions={"x": FloatDistribution(0.0, 1.0)}))
    added = study.get_trials(deepcopy=False)[-1]
    private = "FrozenTrial._trial_id"
    live = held("optuna", private, lambda: compat.live_trial(study, added))
    assert (live.number, live.params) == (3, {"x": 0.5}), changed("optuna", private)
    assert compat.frozen_trial(study, live).value == 3.0
    # A live Trial for a running one reports into the study.
    running = compat.live_trial(study, compat.frozen_trial(study, asked[2]))
    running.report(0.75, 4)
    assert compat.frozen_trial(study, asked[2]).intermediate_values == {4: 0.75}, changed("optuna", private)


# --- torch --------------------------------------------------------------------------------------

class _Ops(torch_compat.DispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_aten_ops_of_forward_and_backward():
    x = torch.ones(3, requires_grad=True)
    with _Ops() as seen:
        (x * 2).sum().backward()
    private = "torch.utils._python_dispatch.TorchDispatchMode"
    assert "aten.mul" in seen.ops and "aten.sum" in seen.ops, changed("torch", private)
    assert len(seen.ops) > 2, changed("torch", private)  # backward's ops too (expand, mul, ...)
    assert torch.equal(x.grad, torch.full((3,), 2.0))


def test_leaves_are_the_tensors_of_a_nested_output_in_order():
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    found = torch_compat.leaves((a, [b, {"k": c}], 4))
    assert [id(x) for x in found[:3]] == [id(a), id(b), id(c)] and found[3] == 4, \
        changed("torch", "torch.utils._pytree.tree_leaves")


@pytest.mark.parametrize("make, dim", [(lambda: nn.Conv2d(3, 4, 3), 0), (lambda: nn.ConvTranspose2d(4, 3, 3), 1)])
def test_fp32_spectral_norm_keeps_torchs_buffers_keys_and_values(make, dim):
    torch.manual_seed(0)
    theirs = nn.utils.parametrizations.spectral_norm(make())  # torch's public API: the reference
    ours = spectral(make(), enabled=True)
    parametrization = ours.parametrizations.weight[0]
    private = "torch.nn.utils.parametrizations._SpectralNorm"
    assert isinstance(parametrization, FP32SpectralNorm)
    assert (parametrization.dim, parametrization.eps, parametrization.n_power_iterations) == (dim, 1e-12, 1), \
        changed("torch", f"{private}'s dim, eps, n_power_iterations")
    assert set(ours.state_dict()) == set(theirs.state_dict()), changed("torch", f"{private}'s _u/_v buffers")
    weight = theirs.parametrizations.weight.original
    expected = weight.movedim(dim, 0).reshape(weight.shape[dim], -1)
    assert torch.equal(held("torch", f"{private}._reshape_weight_to_matrix",
                            lambda: parametrization._reshape_weight_to_matrix(weight)), expected), \
        changed("torch", f"{private}._reshape_weight_to_matrix")
    # Same weight and singular-vector estimates: the same normalised weight, in eval and in training.
    ours.load_state_dict(theirs.state_dict())
    for training in (False, True):
        theirs.train(training), ours.train(training)
        assert torch.allclose(ours.weight, theirs.weight, rtol=1e-5, atol=1e-6), changed("torch", private)


def test_fp32_spectral_norm_leaves_a_1d_weight_to_torchs_normalisation():
    weight = torch.tensor([3.0, 4.0])
    norm = torch_compat.SpectralNormParametrization(weight, 1, 0, 1e-12)
    assert torch.allclose(norm(weight), weight / 5.0), changed("torch", "_SpectralNorm.forward of a 1-D weight")


def test_fp32_spectral_norm_own_names_shadow_nothing_of_torchs():
    plain = torch_compat.SpectralNormParametrization(torch.randn(4, 3), 1, 0, 1e-12)
    clash = shadowed(FP32SpectralNorm, plain, {"forward", "_power_method"})
    assert not clash, changed("torch", f"_SpectralNorm: it now uses FP32SpectralNorm's own names {sorted(clash)}")


def test_foreach_lerp_and_copy_match_their_one_tensor_forms():
    torch.manual_seed(0)
    ends, targets = [torch.randn(5), torch.randn(2, 3)], [torch.randn(5), torch.randn(2, 3)]
    expected = [e.clone().lerp_(t, 0.1) for e, t in zip(ends, targets)]
    torch_compat.foreach_lerp_(ends, targets, 0.1)
    assert all(torch.allclose(e, x) for e, x in zip(ends, expected)), changed("torch", "torch._foreach_lerp_")
    torch_compat.foreach_copy_(ends, targets)
    assert all(torch.equal(e, t) for e, t in zip(ends, targets)), changed("torch", "torch._foreach_copy_")


def test_the_tested_versions_are_inside_pyprojects_caps():
    """The caps in pyproject.toml were set from the versions this file passed on: a newer install
    must go through test_compat before its cap is raised."""
    from pathlib import Path

    import tomllib
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    requirements = {Requirement(line).name: Requirement(line) for line in pyproject["project"]["dependencies"]}
    for name in ("ray", "optuna", "mlflow", "torch-fidelity"):
        specifier = requirements[name].specifier
        assert any(s.operator == "<" for s in specifier), f"{name} has no upper bound in pyproject.toml"
        assert specifier.contains(version(name)), f"installed {name} {version(name)} is outside pyproject's {specifier}"


def test_pbt_refuses_a_searcher_except_where_sweeper_lets_it_and_names_its_exploit_and_states():
    from types import SimpleNamespace

    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers import pbt as pbt_module
    from ray.tune.search import SearchGenerator

    def pbt():
        return PopulationBasedTraining(time_attr="eval_period", metric="fid", mode="min", perturbation_interval=1,
                                       hyperparam_mutations={"g_lr": [1e-4, 2e-4]})

    searcher = SearchGenerator(SweepSearch(time_attr="eval_period", max_t=2, n_startup_trials=1,
                                           space={"g_lr": tune.choice([1e-4, 2e-4])}, metric="fid", mode="min"))
    controller = SimpleNamespace(search_alg=searcher)  # all PBT's on_trial_add reads of the controller
    trial = Trial("__fake", trial_id="t0", stub=True, config={"g_lr": 1e-4})
    with pytest.raises(ValueError, match="Search algorithms cannot be used"):
        pbt().on_trial_add(controller, trial)
    accepting = pbt()
    with compat.pbt_accepts_a_searcher(pbt_module):
        accepting.on_trial_add(controller, trial)
    assert pbt_module.SearchGenerator is SearchGenerator  # put back
    state = held("ray", "PopulationBasedTraining._trial_state", lambda: accepting._trial_state[trial])
    assert hasattr(state, "last_result"), changed("ray", "_PBTTrialState.last_result")
    exploit = held("ray", "PopulationBasedTraining._exploit", lambda: PopulationBasedTraining._exploit)
    assert list(inspect.signature(exploit).parameters) == ["self", "tune_controller", "trial", "trial_to_clone"], \
        changed("ray", "PopulationBasedTraining._exploit")
