"""Drift verdicts of opstrata's sketches against Evidently's on the same data, per feature.

Evidently is a benchmark-only dependency (the ``bench`` extra); run this in a venv that has it:

    python -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install -e '.[bench]'
    /tmp/benchvenv/bin/python bench/drift_vs_evidently.py [--pairs 24] [--seed 1]

Datasets are generated here, shaped like well-known tabular data (no downloads): a credit
application table (skewed ages, log-normal income, zero-inflated capital gains, a 0-4 count,
a binary flag, categories of very different frequencies), taxi trips (log-normal distances,
fares linear in distance, 1-6 passengers, a bimodal pick-up hour, a zero-inflated tip share)
and industrial sensors (gamma vibration, a pressure mixture, a status category). Each pair is a
reference and a current sample of random sizes (300 to 20,000 rows, so both of Evidently's test
regimes run); half the pairs get shifts injected into random features (mean shifts of 0.05-1
sd, scale changes, category frequencies moved, a new category), the others none.

opstrata's side is exactly what the plugin keeps: a reference sketch (t-digest of 400
centroids, exact counts while few distinct values, categories counted) and a current window
merged from four slot sketches of 100 centroids; the test is chosen and thresholded by
``opstrata.plugins.mlops.stattests``. Evidently runs ``DataDriftTable`` with its defaults and
the same column types. Reported: verdict agreement per feature (overall, per test, shifted and
unshifted pairs), dataset-drift agreement (share of drifted features >= 0.5), and the
disagreements with both statistics.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa

from opstrata.plugins.mlops.sketch import CategoricalSketch, NumericSketch
from opstrata.plugins.mlops.stattests import drift_test

warnings.filterwarnings("ignore")


def credit(rng: np.random.Generator, n: int) -> pd.DataFrame:
    age = np.clip(rng.gamma(6.0, 6.5, n) + 17, 17, 90).round()
    return pd.DataFrame(
        {
            "age": age,
            "income": rng.lognormal(10.6, 0.55, n).round(2),
            "hours_per_week": np.clip(rng.normal(40, 11, n), 1, 99).round(),
            "capital_gain": np.where(rng.random(n) < 0.92, 0.0, rng.lognormal(8.5, 1.1, n).round()),
            "dependents": rng.choice([0, 1, 2, 3, 4], n, p=[0.45, 0.22, 0.18, 0.1, 0.05]).astype(
                float
            ),
            "approved": (rng.random(n) < 0.3).astype(float),
            "education": rng.choice(
                ["HS-grad", "Some-college", "Bachelors", "Masters", "Assoc", "11th", "Doctorate"],
                n,
                p=[0.32, 0.22, 0.17, 0.06, 0.08, 0.13, 0.02],
            ),
            "marital": rng.choice(
                ["Married", "Never", "Divorced", "Widowed"], n, p=[0.46, 0.33, 0.14, 0.07]
            ),
            "sex": rng.choice(["F", "M"], n, p=[0.33, 0.67]),
        }
    )


def taxi(rng: np.random.Generator, n: int) -> pd.DataFrame:
    distance = rng.lognormal(0.6, 0.8, n).round(2)
    hour = np.where(rng.random(n) < 0.5, rng.normal(8.5, 1.5, n), rng.normal(18, 2.5, n))
    return pd.DataFrame(
        {
            "trip_distance": distance,
            "fare": (2.5 + 2.6 * distance + rng.normal(0, 1.2, n)).round(2),
            "passengers": rng.choice(
                [1, 2, 3, 4, 5, 6], n, p=[0.7, 0.14, 0.05, 0.03, 0.05, 0.03]
            ).astype(float),
            "pickup_hour": np.mod(hour.round(), 24),
            "tip_share": np.where(rng.random(n) < 0.35, 0.0, rng.beta(4, 18, n)).round(3),
            "payment": rng.choice(
                ["card", "cash", "no_charge", "dispute"], n, p=[0.68, 0.3, 0.015, 0.005]
            ),
        }
    )


def sensors(rng: np.random.Generator, n: int) -> pd.DataFrame:
    mix = rng.random(n) < 0.7
    return pd.DataFrame(
        {
            "temperature": rng.normal(71.5, 2.2, n),
            "vibration": rng.gamma(2.0, 0.35, n),
            "pressure": np.where(mix, rng.normal(101.3, 0.4, n), rng.normal(99.8, 0.9, n)),
            "rpm": rng.uniform(1450, 1550, n).round(),
            "status": rng.choice(["ok", "warn", "alarm"], n, p=[0.9, 0.08, 0.02]),
        }
    )


DATASETS = {"credit": credit, "taxi": taxi, "sensors": sensors}


def inject(rng: np.random.Generator, frame: pd.DataFrame, ref: pd.DataFrame) -> list[str]:
    """Shift a random subset of columns in place; returns the shifted columns."""
    columns = list(frame.columns)
    chosen = list(rng.choice(columns, size=rng.integers(1, len(columns) + 1), replace=False))
    for name in chosen:
        column = frame[name]
        if column.dtype == object:
            values = sorted(ref[name].unique())
            if rng.random() < 0.25:
                swap = rng.random(len(column)) < rng.uniform(0.01, 0.1)
                frame.loc[swap, name] = "new-category"
            else:
                target = values[rng.integers(len(values))]
                swap = rng.random(len(column)) < rng.uniform(0.02, 0.3)
                frame.loc[swap, name] = target
            continue
        sd = float(ref[name].std()) or 1.0
        if ref[name].nunique() <= 6:
            # counts and flags: move some rows to the next value
            bump = rng.random(len(column)) < rng.uniform(0.02, 0.25)
            top = ref[name].max()
            frame.loc[bump, name] = np.minimum(column[bump] + 1, top)
        elif rng.random() < 0.7:
            frame[name] = column + rng.uniform(0.05, 1.0) * sd * rng.choice([-1, 1])
        else:
            mean = column.mean()
            frame[name] = mean + (column - mean) * rng.uniform(1.1, 1.8)
    return chosen


def sketches(frame: pd.DataFrame, kinds: dict[str, str], centroids: int, slots: int) -> dict:
    """The plugin's sketches of a sample: one sketch, or ``slots`` slot sketches merged into a
    window the way ``DriftMonitor`` merges them."""
    out = {}
    for name, kind in kinds.items():
        column = frame[name].to_numpy()
        parts = []
        for part in np.array_split(np.arange(len(frame)), slots):
            values = column[part]
            if kind == "numerical":
                sketch = NumericSketch(centroids)
                for start in range(0, len(values), 1000):
                    sketch.update(values[start : start + 1000].astype(np.float64))
            else:
                sketch = CategoricalSketch(100)
                sketch.update(pa.array(values.astype(str)))
            parts.append(sketch)
        if slots == 1:
            out[name] = parts[0]
            continue
        merged = NumericSketch(400) if kind == "numerical" else CategoricalSketch(100)
        for part in parts:
            merged.absorb(part)
        out[name] = merged
    return out


def evidently_verdicts(ref: pd.DataFrame, cur: pd.DataFrame, kinds: dict[str, str]) -> dict:
    from evidently.legacy.metrics import DataDriftTable
    from evidently.legacy.pipeline.column_mapping import ColumnMapping
    from evidently.legacy.report import Report

    mapping = ColumnMapping(
        numerical_features=[n for n, k in kinds.items() if k == "numerical"],
        categorical_features=[n for n, k in kinds.items() if k == "categorical"],
        target=None,
        prediction=None,
    )
    report = Report(metrics=[DataDriftTable()])
    report.run(reference_data=ref, current_data=cur, column_mapping=mapping)
    result = report.as_dict()["metrics"][0]["result"]
    return {
        name: (bool(c["drift_detected"]), c["stattest_name"], float(c["drift_score"]))
        for name, c in result["drift_by_columns"].items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=24, help="reference/current pairs per dataset")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    sizes = [300, 800, 1000, 2000, 5000, 20000]
    agree = Counter()
    total = Counter()
    per_test: dict[str, Counter] = defaultdict(Counter)
    dataset_agree = dataset_total = 0
    disagreements = []
    ours_seconds = theirs_seconds = 0.0
    for name, make in DATASETS.items():
        for pair in range(args.pairs):
            n_ref, n_cur = (int(rng.choice(sizes)) for _ in range(2))
            ref, cur = make(rng, n_ref), make(rng, n_cur)
            shifted = inject(rng, cur, ref) if pair % 2 else []
            kinds = {
                c: "categorical" if ref[c].dtype == object else "numerical" for c in ref.columns
            }
            started = time.perf_counter()
            ref_s = sketches(ref, kinds, 400, 1)
            cur_s = sketches(cur, kinds, 100, 4)
            ours = {c: drift_test(ref_s[c], cur_s[c]) for c in kinds}
            ours_seconds += time.perf_counter() - started
            started = time.perf_counter()
            theirs = evidently_verdicts(ref, cur, kinds)
            theirs_seconds += time.perf_counter() - started
            for column, result in ours.items():
                drifted, test, score = theirs[column]
                group = "shifted" if column in shifted else "unshifted"
                ok = result.drifted == drifted
                agree[group] += ok
                total[group] += 1
                key = f"{result.test} / {test}"
                per_test[key]["agree"] += ok
                per_test[key]["total"] += 1
                if not ok:
                    disagreements.append(
                        f"{name}#{pair} {column} n={n_ref}/{n_cur}: opstrata {result.test} "
                        f"{result.score:.4g} {'drift' if result.drifted else 'no drift'} "
                        f"(bound {result.error_bound:.3g}); Evidently {test} {score:.4g} "
                        f"{'drift' if drifted else 'no drift'}"
                    )
            share_ours = np.mean([r.drifted for r in ours.values()])
            share_theirs = np.mean([v[0] for v in theirs.values()])
            dataset_agree += (share_ours >= 0.5) == (share_theirs >= 0.5)
            dataset_total += 1
    features = sum(total.values())
    print(f"pairs: {dataset_total} ({args.pairs} per dataset), feature verdicts: {features}")
    print(f"feature verdict agreement: {sum(agree.values()) / features:.2%}")
    for group in ("unshifted", "shifted"):
        print(f"  {group} features: {agree[group] / max(total[group], 1):.2%} of {total[group]}")
    for key, counts in sorted(per_test.items()):
        print(f"  tests {key}: {counts['agree'] / counts['total']:.2%} of {counts['total']}")
    print(f"dataset-drift agreement (drift_share 0.5): {dataset_agree / dataset_total:.2%}")
    print(
        f"time: opstrata {ours_seconds:.1f} s (sketching + tests), Evidently {theirs_seconds:.1f} s"
    )
    if disagreements:
        print("disagreements:")
        for line in disagreements:
            print("  " + line)


if __name__ == "__main__":
    main()
