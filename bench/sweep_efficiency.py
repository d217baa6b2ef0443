"""Does the sweep pay? Five arms on the same space (search_spaces/wgangp.py), the same data (real
CIFAR-10 cats, 32 px, `../shared/data/cifar10-catdog:cat`) and the same compute budget B each:

  (c) the best seed configuration alone, trained for all of B: seed 000 (wgangp.py's first warm
      start, which the cost probe also times; chosen once, before any result), one trial;
  (b) FIFO random search: no warm starts, every proposal random (n_startup_trials = num_samples);
  (a) ASHA + TPE as it was: the shipped sweep with `scheduler=ASHA()` (warm starts never stopped);
  (n) the new default: Promotion + TPE, `Sweep(budget=B)` (a cost probe, a plan, promotion);
  (p) population-based training (issue 24): `scheduler=PBT(interval=2, quantile=0.25)` with the GAN
      kind's default mutations (g_lr, d_lr, beta1, n_critic, gp_weight, ema_decay), a population of
      8 (num_samples = 8: the two warm starts, then TPE's first 6 proposals, which are its random
      start-up draws), num_evals as (a)/(b) (12 periods at the CPU size, 20 with --gpu).

Every arm is a real sweep (`sweeper.driver.run.run_sweep`, in process) with `budget=B`: the budget's
own stop ends (c), (b) and (a), which are given far more trials / eval periods than B pays for;
(n) is planned by it. (c), (n) and (p) run `--repeats` times (config seed and TPE seed = the
repeat), (a) and (b) once (seed 0). All trials hold 1 CPU (CPU size: two at a time, (c) alone) or, with
`--gpu`, a GPU share ("auto"; (c) a whole GPU, so that B = 1 gpu-h is an hour of it).

(p)'s sizes, fixed before any (p) result and not changed after: 8 members, because PBT needs a
population whose quartile is at least 2 members (quantile 0.25 of 8: the worst 2 take the best 2's
checkpoints) and B must still pay for several periods per member; interval 2 periods, so a member
trains between exploits as long as Promotion's first rung; num_evals 12 as (a)/(b), so the budget,
not the horizon, ends it. PBT time-shares the 8 members over the 2 CPU slots (Ray's PBT pauses a
member at each interval while others wait), so they advance together: 8 x 12 periods at ~4.4
cpu-s a period (the probe's cost of seed 000) is ~420 cpu-s, more than twice B, so at the CPU size
the budget's stop ends the population at B = 200 cpu-s around period 5-6 of each member (fewer
where pauses and restores make a period dearer), after 2-3 exploit rounds (periods 2, 4, maybe 6).
(A smoke run at B = 60 cpu-s, before the measured run, spent ~2.6 cpu-s a period: the random
members mostly have n_critic 1 or 2, cheaper than seed 000's 5; at that cost B pays for ~9 periods
a member. An estimate, not a size: nothing was changed after it.) Ray's PBT is asynchronous: a
member is ranked at its own interval against the others' latest scores, and only a member that
was in the best quantile at its own last interval has a checkpoint to give, so the first round
(every member's period 2) rarely exploits; from the second round on the worst take the best.
Each exploit starts a new MLflow run of the member (its generation); a member's compute_s goes on
from its own spending, not its donor's (sweeper.trial.lineage), so the sum over members is what (p)
spent. With --gpu: 8 members x 20 periods, B = 1 gpu-h (not run here).
(p) sets `max_concurrent=8`: left to sweeper, a population's concurrency is what fits (2 trials
at the CPU size), which becomes Tune's max_concurrent_trials, and Tune counts a paused trial as
live, so the searcher is not asked for member 3 until member 1 or 2 has ended: the 8 would train in
pairs, each pair to its 12th period, never as one population (seen in the first smoke run: 2
trials, no pause at period 2). With 8 live, Ray runs 2 at a time and its PBT pauses a member at each
interval while others wait, as sweeper.search.tuner.max_concurrent's comment intends.

Measured per arm:
- compute: the sum of its trials' final `compute_s` (plus, for (n), the probe's cost, which its
  budget pays), and its deviation from B. kimg: the images its trials trained on; for (p) counted
  per generation run (the periods it logged x its config's images per period), because a clone's
  reported kimg includes its donor's; The budget's stop lets the trial that crosses B finish
  the eval period it is in, so an arm may exceed B by up to one period (at the CPU size a period
  costs ~3-8 cpu-s, 2-4% of B); (n) spends what its plan starts, which can be less than B;
- final FID: the arm's winner (the sweep's registered generator) draws `--final-samples` images
  with one fixed z seed for every arm; standard Inception features (inception-v3-compat); FID
  against the cached statistics of the REPORT half of the real cats (`ref_samples` of them, the
  half no selection used). CI: 95% normal bootstrap interval, the FID +- 1.96 x the standard
  deviation of the FIDs of resamples of the generated features (the real statistics fixed). What
  it estimates is FID at N generated images, the footing every arm shares (FID's small-sample bias
  stays in); only the spread of the resamples is used, because a resample holds ~63% distinct
  images and its FID sits above the sample's, so percentiles would shift the interval. The
  `--resamples` draws of indices are shared by every arm, so FID_n / FID_c (each repeat pair, and
  mean over repeats / mean over repeats) gets a paired bootstrap CI the same way. The resamples'
  FIDs use tr sqrt(R S_g R) = sum sqrt(eig(A A^T) / (N-1)), A = centred features @ R, R =
  sqrt(S_real): the same number as frechet_distance (printed as a check), from an N x N (or D x D)
  matrix. The CI covers the generated sample only; training variance is what the repeats show;
- compute (n) needed to reach FID_c(B): in wall order of (n)'s eval periods, the budget counted so
  far (probe + each trial's latest compute_s) when its best per-eval FID first reached the best
  per-eval FID of (c) of the same repeat. Per-eval FID is the trials' own (on a CPU the random-conv
  proxy, on `fid_samples` images: a proxy number; with --gpu the standard one);
- (n)'s plan (rungs, configurations per bracket, cost per period) and the rank correlations between
  its rungs (`rank_corr.*` of its parent run: only from 3 trials recorded at both rungs), and for
  every arm but (p) rho(FID@2, FID@6): Spearman's rank correlation of the trials' best per-eval FID
  after 2 and after 6 eval periods, over those that trained 6 (does the first rung predict the
  second?); a PBT member's FID@6 is of weights it may have taken from another member, so not for (p);
- the winner's period: the eval period of the winner's measured checkpoint, i.e. how many periods
  its weights trained (for (p) including the periods inherited from donors);
- for (p): FID_p / FID_c (and FID_p / FID_n) per repeat with the paired CI, the compute (p) needed
  to reach (c)'s best per-eval FID (as for (n)), the periods each member trained itself, the
  exploits (member runs of generation >= 1, from MLflow; each also prints "<trial> exploit: takes
  <donor>'s checkpoint at period N; ..." on the console), and the winner's lineage (whose runs its
  weights were trained in, and over which periods).

CPU size (default): B = 200 cpu-s, widths 16, batch 64, 10 G steps per eval period, (a)/(b) trials
of 12 periods, per-eval proxy FID on 512 images vs 1,000 real, each sweep's own final evaluation
on top 1 per group and 64 images per draw (it only picks between the searched and the warm-start
candidate), and the comparison FID on 400 generated vs 1,000 real images: Inception runs ~2-7
images/s on 2 CPU cores, and these ~4,700 images are a third to a half of the run's time. Compute
is wall time x CPUs: other load on the machine changes what B buys (the kimg column shows it).
`--gpu`: B = 1 gpu-h per arm, widths 64, 500 G steps per period, 20 periods for (a)/(b), standard
FID per eval on 5,000 images, each half's 2,500 real images, 10,000 images for the final draws and
the comparison. Sizes were fixed before any result; nothing here is tuned to an answer.

Run from the repository root: python bench/sweep_efficiency.py [--gpu] [--repeats 3] [--budget
200cpu-s] [--arms c,n,a,b] [--final-samples 400] [--resamples 200]. The default arms stay
c,n,a,b (the command of the recorded issue-20 table); the PBT arm runs with e.g. `--arms c,n,p`. It works in a temporary
directory (its own MLflow store and Ray results; the dataset and statistics caches are shared),
prints each sweep's console and then markdown tables; it asserts nothing.
"""
import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10-catdog"
sys.path.insert(0, str(ROOT))

CPU = dict(budget="200cpu-s", width=16, batch_size=64, steps_per_eval=10, num_evals=12, fid_samples=512,
           ref_samples=1000, final_fid_samples=64, top_k=1, final_samples=400)
GPU = dict(budget="1gpu-h", width=64, batch_size=64, steps_per_eval=500, num_evals=20, fid_samples=5000,
           ref_samples=2500, final_fid_samples=10000, top_k=3, final_samples=10000)
MANY = 10_000  # trials / eval periods the budget ends first: (b) and (a) trials, (c) periods
Z_SEED = 4_000_037  # every arm's comparison images are drawn with this seed
POPULATION = 8  # (p)'s members (module docstring)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="GPU size: B = 1 gpu-h per arm")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of (c), (n) and (p), seeds 0..R-1")
    parser.add_argument("--budget", help="B per arm, e.g. 200cpu-s (default: the size's)")
    parser.add_argument("--arms", default="c,n,a,b", help="a subset of c,n,a,b,p")
    parser.add_argument("--final-samples", type=int, help="generated images per arm for the comparison FID")
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples")
    args = parser.parse_args()
    size = dict(GPU if args.gpu else CPU)
    size["final_samples"] = args.final_samples or size["final_samples"]
    if not DATA.is_dir():
        sys.exit(f"needs the CIFAR-10 cats at {DATA} (see ../shared/data/README.md)")
    from sweeper.definition import ASHA, PBT, TPE, FinalEval, Resources, parse_budget
    from sweeper.driver.loader import load_sweep

    budget = parse_budget(args.budget or size["budget"])
    kinds = args.arms.split(",")
    if unknown := set(kinds) - set("cnabp"):
        sys.exit(f"--arms: unknown {', '.join(sorted(unknown))} (choose from c,n,a,b,p)")
    os.chdir(tempfile.mkdtemp(prefix="sweep-efficiency-"))
    print(f"B = {budget} per arm; size {size}; working directory {os.getcwd()}", flush=True)
    shipped = load_sweep(ROOT / "search_spaces" / "wgangp.py")
    base = shipped.with_config(dict(
        data=f"{DATA}:cat", resolution=32, g_width=size["width"], d_width=size["width"],
        batch_size=size["batch_size"], steps_per_eval=size["steps_per_eval"], num_evals=size["num_evals"],
        fid_samples=size["fid_samples"], ref_samples=size["ref_samples"],
        final_fid_samples=size["final_fid_samples"]), "bench").with_(budget=budget, final=FinalEval(size["top_k"]))

    def arm(kind: str, seed: int):
        sweep = base.with_(name=f"bench-{kind}{seed}", config=base.config.replace(seed=seed), searcher=TPE(seed=seed))
        if kind == "c":  # the seed's whole config, alone: one trial, stopped by the budget
            return sweep.with_(warm_start=base.warm_start[:1], num_samples=1, scheduler=None,
                               config=sweep.config.replace(num_evals=MANY),
                               resources=Resources(gpu_fraction=1.0) if args.gpu else sweep.resources)
        if kind == "b":
            return sweep.with_(warm_start=(), num_samples=MANY, scheduler=None,
                               searcher=TPE(seed=seed, n_startup_trials=MANY))
        if kind == "a":  # TPE's startup as in a sweep of up to 23 trials (the warm starts count)
            return sweep.with_(num_samples=MANY, scheduler=ASHA(), searcher=TPE(seed=seed, n_startup_trials=2))
        if kind == "p":  # a population of 8, the warm starts first; mutations None: the GAN kind's.
            # max_concurrent: all 8 live at once, time-shared over what fits (module docstring).
            return sweep.with_(num_samples=POPULATION, max_concurrent=POPULATION,
                               scheduler=PBT(interval=2, quantile=0.25, mutations=None))
        return sweep  # (n): scheduler "auto" = Promotion; the plan sets num_samples and num_evals

    order = [(k, r) for r in range(args.repeats) for k in ("c", "n", "p") if k in kinds] + \
            [(k, 0) for k in ("a", "b") if k in kinds]
    measure = Measure(size, args.gpu)
    rows = [run_arm(kind, seed, arm(kind, seed), budget, measure) for kind, seed in order]
    report(rows, budget, measure, args.resamples)


def run_arm(kind: str, seed: int, sweep, budget, measure) -> dict:
    import cloudpickle

    from sweeper.driver.run import run_sweep
    from sweeper.kinds import complete

    start = time.perf_counter()
    summary = run_sweep(complete(sweep).validate(), sweep_file=f"bench/sweep_efficiency:{kind}", quick=False)
    client = summary.tracking.client()
    parent = client.get_run(summary.tracking.parent_run_id).data
    planned = cloudpickle.loads((Path(parent.tags["sweeper.experiment_path"]) / "sweep.pkl").read_bytes())
    probe = budget.amount - planned.budget.amount  # what the cost probe spent ((n) only)
    table = summary.table
    runs = trial_runs(client, summary.tracking, table)
    hist = histories(client, runs)
    row = dict(kind=kind, seed=seed, trials=len(table), probe=probe,
               early_late="- (population)" if kind == "p" else early_late(hist),
               kimg=trained_kimg(client, runs) if kind == "p" else float(table["kimg"].fillna(0).sum()),
               compute=probe + float(table["compute_s"].fillna(0).sum()), timeline=timeline(hist, probe),
               winner=summary.winner, fid_final=summary.final_value,
               proposed_by=table.set_index("trial_id")["proposed_by"].get(summary.winner),
               plan={k: v for k, v in parent.params.items() if k.startswith("plan.")},
               rank_corr={k.split(".", 1)[1]: v for k, v in parent.metrics.items() if k.startswith("rank_corr.")})
    won = table[table["trial_id"] == summary.winner]
    row["winner_period"] = float(won["final_eval_period"].iloc[0]) \
        if len(won) and "final_eval_period" in won and not math.isnan(won["final_eval_period"].iloc[0]) else math.nan
    if kind == "p":
        row["population"] = population(client, runs, hist, summary.winner, row["winner_period"])
    row["feats"] = measure.features(summary) if summary.model_version else None
    row["wall"] = time.perf_counter() - start
    print(f"[{kind}{seed}] {row['trials']} trials, compute {row['compute']:.1f} of {budget} (probe {probe:.1f}), "
          f"winner {summary.winner}, wall {row['wall']:.0f} s", flush=True)
    return row


def trial_runs(client, tracking, table) -> dict:
    """trial id -> its MLflow runs, oldest first: one per trial, or a population member's one per
    generation (each exploit starts the next)."""
    from sweeper.tracking.runs import PARENT_TAG, TRIAL_TAG

    found = client.search_runs([tracking.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{tracking.parent_run_id}'",
                               max_results=10_000, order_by=["attributes.start_time ASC"])
    trials = set(table["trial_id"].dropna())
    out = {trial: [] for trial in trials}
    for run in found:
        if run.data.tags.get(TRIAL_TAG) in trials:
            out[run.data.tags[TRIAL_TAG]].append(run)
    return out


def histories(client, runs: dict) -> dict:
    """trial id -> [(time logged, eval period, compute_s, per-eval fid)] of each trial of an arm,
    over all its runs (a member's compute_s goes on from its own spending across generations)."""
    out = {}
    for trial, trial_runs_ in runs.items():
        events = []
        for run in trial_runs_:
            fid = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "fid")}
            events += [(m.timestamp, m.step, m.value, fid.get(m.step, math.inf))
                       for m in client.get_metric_history(run.info.run_id, "compute_s")]
        if events:
            out[trial] = sorted(events)
    return out


def trained_kimg(client, runs: dict) -> float:
    """The kimg an arm's trials trained on, per run: its logged eval periods x its config's real
    images per period (a clone's reported kimg counts its donor's as well)."""
    total = 0.0
    for trial_runs_ in runs.values():
        for run in trial_runs_:
            p = run.data.params
            periods = len({m.step for m in client.get_metric_history(run.info.run_id, "compute_s")})
            total += periods * int(p["steps_per_eval"]) * int(p["n_critic"]) * int(p["batch_size"]) / 1000
    return total


def population(client, runs: dict, hist: dict, winner: str | None, winner_period: float) -> dict:
    """(p): the eval periods each member trained itself, the exploits (runs of generation >= 1)
    and the winner's lineage: whose runs its measured weights were trained in, over which periods."""
    from sweeper.tracking.lineage import CLONED_AT_TAG, CLONED_FROM_RUN_TAG
    from sweeper.tracking.runs import TRIAL_TAG

    by_id = {run.info.run_id: run for trial_runs_ in runs.values() for run in trial_runs_}
    periods = sorted((len({step for _, step, _, _ in events}) for events in hist.values()), reverse=True)
    exploits = sum(CLONED_AT_TAG in run.data.tags for run in by_id.values())
    chain = []
    if winner in runs and runs[winner]:
        end = winner_period if not math.isnan(winner_period) else math.inf
        # The winner's run that logged the measured period, then each donor's run back to a first start.
        run = next((r for r in reversed(runs[winner])
                    if any(m.step <= end for m in client.get_metric_history(r.info.run_id, "compute_s"))), runs[winner][-1])
        while run is not None:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "compute_s") if m.step <= end]
            member = run.data.tags.get(TRIAL_TAG, "?")
            chain.append(f"{member.rsplit('_', 1)[-1]} {min(steps, default=0)}-{max(steps, default=0)}")
            if CLONED_FROM_RUN_TAG not in run.data.tags:
                break
            end = int(run.data.tags[CLONED_AT_TAG])
            run = by_id.get(run.data.tags[CLONED_FROM_RUN_TAG])
    return dict(periods=periods, exploits=exploits, chain=" <- ".join(chain) or "-")


def timeline(hist: dict, probe: float) -> list[tuple[float, float]]:
    """(compute counted so far, best per-eval FID so far) after each eval period, in wall order."""
    spent, best, out = {}, math.inf, []
    for _, run_id, compute, fid in sorted((t, r, c, f) for r, events in hist.items() for t, _, c, f in events):
        spent[run_id] = compute
        best = min(best, fid)
        out.append((probe + sum(spent.values()), best))
    return out


def early_late(hist: dict, early: int = 2, late: int = 6) -> str:
    """Spearman's rho of the trials' best per-eval FID at `early` and at `late` eval periods, over
    the arm's trials that reached `late` (whatever stopped or paused the others)."""
    from scipy.stats import spearmanr

    pairs = [[min(f for _, p, _, f in events if p <= at) for at in (early, late)]
             for events in hist.values() if max((p for _, p, _, _ in events), default=0) >= late]
    return f"{spearmanr(*zip(*pairs)).statistic:+.2f} ({len(pairs)})" if len(pairs) >= 3 else f"- ({len(pairs)})"


class Measure:
    """The comparison FID: a winner's Inception features, and FIDs of bootstrap resamples of them."""

    def __init__(self, size: dict, gpu: bool):
        import torch

        from sweeper.kinds.refstats import REPORT, reference_stats
        from trainables.data import prepare
        from trainables.metrics import standard_spec

        self.n, self.device = size["final_samples"], torch.device("cuda" if gpu else "cpu")
        self.extractor = standard_spec().build(self.device)
        data = prepare(f"{DATA}:cat", 32).data  # the sweeps' cache entries: statistics computed once
        self.real = reference_stats(data.images, data.fingerprint, self.extractor, size["ref_samples"], half=REPORT)

    def features(self, summary):
        import torch

        from sweeper.kinds.generators import load
        from trainables.metrics import extract
        from trainables.training.evaluate import to_uint8

        G = load(f"models:/{summary.model}/{summary.model_version}", summary.tracking.uri, self.device)
        z = torch.randn(self.n, summary.best_config["z_dim"], generator=torch.Generator().manual_seed(Z_SEED))
        with torch.no_grad():
            images = torch.cat([to_uint8(G(b.to(self.device))).cpu() for b in z.split(250)])
        return torch.from_numpy(extract(self.extractor, images, progress="comparison features"))

    def fids(self, feats, draws):
        """FID of feats[idx] for each row idx of `draws` (module docstring)."""
        import torch

        t = dict(dtype=torch.float64, device=self.device)
        F, mu_r, sigma_r = feats.to(**t), torch.tensor(self.real.mu, **t), torch.tensor(self.real.sigma, **t)
        values, vectors = torch.linalg.eigh(sigma_r)
        FR = F @ (vectors * values.clamp(min=0).sqrt()) @ vectors.T
        n, small = len(F), len(F) <= F.shape[1]
        gram = FR @ FR.T if small else None
        out = []
        for idx in draws.to(self.device):
            X = F[idx]
            mu = X.mean(0)
            if small:
                g = gram[idx][:, idx]
                g = g - g.mean(0, keepdim=True) - g.mean(1, keepdim=True) + g.mean()
            else:
                A = FR[idx] - FR[idx].mean(0)
                g = A.T @ A
            root = torch.linalg.eigvalsh(g / (n - 1)).clamp(min=0).sqrt().sum()
            out.append(((mu - mu_r) ** 2).sum() + ((X - mu) ** 2).sum() / (n - 1) + sigma_r.trace() - 2 * root)
        return torch.stack(out).cpu().numpy()


def report(rows: list[dict], budget, measure: Measure, resamples: int) -> None:
    import numpy as np
    import torch

    from trainables.metrics import feature_stats, frechet_distance

    n = measure.n
    draws = torch.cat([torch.arange(n)[None], torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(0))])
    for row in rows:
        row["fid"] = measure.fids(row["feats"], draws) if row["feats"] is not None else np.full(resamples + 1, np.nan)
    check = next((r for r in rows if r["feats"] is not None), None)
    if check is not None:  # the bootstrap's formula against the library's at the full sample
        exact = frechet_distance(*feature_stats(check["feats"].numpy()), measure.real.mu, measure.real.sigma)
        print(f"check: frechet_distance {exact:.4f}, bootstrap formula {check['fid'][0]:.4f}")

    def ci(values) -> str:  # the full sample's value +- 1.96 bootstrap standard deviations (module docstring)
        half = 1.96 * np.std(values[1:], ddof=1)
        return f"{values[0]:.2f} [{values[0] - half:.2f}, {values[0] + half:.2f}]"

    names = dict(c="(c) seed 000 alone", b="(b) FIFO random", a="(a) ASHA + TPE", n="(n) Promotion + TPE, budget",
                 p="(p) PBT, 8 members")
    print(f"\nB = {budget} per arm; comparison FID: inception-v3-compat, {n} generated (z seed {Z_SEED}) vs "
          f"{measure.real.n_samples} real (REPORT half), 95% normal bootstrap CI over {resamples} resamples\n")
    print("| arm | seed | trials | kimg | compute | vs B | winner (proposed by) | winner's period | sweep's fid_final "
          "| best per-eval FID | rho(FID@2, FID@6) (trials) | FID [95% CI] | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = r["timeline"][-1][1] if r["timeline"] else math.nan
        print(f"| {names[r['kind']]} | {r['seed']} | {r['trials']} | {r['kimg']:.0f} | {r['compute']:.1f} | "
              f"{100 * (r['compute'] / budget.amount - 1):+.1f}% | {r['winner']} ({r['proposed_by']}) | "
              f"{r['winner_period']:.0f} | {r['fid_final'] or math.nan:.2f} | {best:.2f} | {r['early_late']} | {ci(r['fid'])} | {r['wall']:.0f} |")
    by = {(r["kind"], r["seed"]): r for r in rows}

    def reached(arm_row, target) -> str:  # budget counted when the arm's best per-eval FID first reached target
        reach = next((spent for spent, best in arm_row["timeline"] if best <= target), None)
        return "not reached" if reach is None else f"{reach:.1f} ({reach / budget.amount:.2f} B)"

    pairs = [(by["n", s], by["c", s]) for s in sorted({r["seed"] for r in rows}) if ("n", s) in by and ("c", s) in by]
    if pairs:
        print("\n| repeat | FID_n / FID_c [95% paired CI] | target: (c)'s best per-eval FID | compute (n) needed "
              "to reach it | (n)'s plan | rank correlations between rungs |")
        print("|---|---|---|---|---|---|")
        for rn, rc in pairs:
            target = rc["timeline"][-1][1] if rc["timeline"] else math.nan
            needed = reached(rn, target)
            p = rn["plan"]
            plan = (f"rungs {p.get('plan.rungs')}, configurations per bracket {p.get('plan.brackets')}, "
                    f"{float(p.get('plan.cost_per_period', 'nan')):.1f} per period, expected "
                    f"{float(p.get('plan.expected_cost', 'nan')):.0f} + probe {rn['probe']:.0f}")
            corr = ", ".join(f"{k.replace('_', '->')} {v:+.2f}" for k, v in rn["rank_corr"].items()) or "-"
            print(f"| {rn['seed']} | {ci(rn['fid'] / rc['fid'])} | {target:.2f} | {needed} | {plan} | {corr} |")
        mean_n = np.mean([rn["fid"] for rn, _ in pairs], axis=0)
        mean_c = np.mean([rc["fid"] for _, rc in pairs], axis=0)
        print(f"\nmean FID_n {ci(mean_n)}, mean FID_c {ci(mean_c)}, mean FID_n / mean FID_c {ci(mean_n / mean_c)} "
              f"over {len(pairs)} repeats (goal: <= 0.75 with the CI below 1)")
        if ("a", 0) in by:
            print(f"mean FID_n / FID_a {ci(mean_n / by['a', 0]['fid'])} (goal: below 1)")
    seeds = sorted({r["seed"] for r in rows if r["kind"] == "p"})
    if seeds:
        print("\n| repeat | FID_p / FID_c [95% paired CI] | FID_p / FID_n [95% paired CI] | target: (c)'s best per-eval "
              "FID | compute (p) needed to reach it | (p)'s best per-eval FID | eval periods each member trained "
              "| exploits | winner's weights: member periods <- donor ... |")
        print("|---|---|---|---|---|---|---|---|---|")
        for s in seeds:
            rp, rc, rn = by["p", s], by.get(("c", s)), by.get(("n", s))
            target = rc["timeline"][-1][1] if rc and rc["timeline"] else math.nan
            pop = rp["population"]
            best = rp["timeline"][-1][1] if rp["timeline"] else math.nan
            print(f"| {s} | {ci(rp['fid'] / rc['fid']) if rc else '-'} | {ci(rp['fid'] / rn['fid']) if rn else '-'} | "
                  f"{target:.2f} | {reached(rp, target) if rc else '-'} | {best:.2f} | "
                  f"{', '.join(map(str, pop['periods']))} | {pop['exploits']} | {pop['chain']} |")
        mean_p = np.mean([by["p", s]["fid"] for s in seeds], axis=0)
        line = f"\nmean FID_p {ci(mean_p)} over {len(seeds)} repeats"
        for other in ("c", "n"):
            if all((other, s) in by for s in seeds):
                mean_o = np.mean([by[other, s]["fid"] for s in seeds], axis=0)
                line += f"; mean FID_{other} {ci(mean_o)}, mean FID_p / mean FID_{other} {ci(mean_p / mean_o)}"
        print(line)
        if ("a", 0) in by and 0 in seeds:
            print(f"FID_p / FID_a (repeat 0) {ci(by['p', 0]['fid'] / by['a', 0]['fid'])}")


if __name__ == "__main__":
    main()
