"""The fraud model behind ``model-server``: features, its score, and the truth it tries to predict.

The true fraud probability is a logistic function of the features; the deployed model sees the
same function plus a little noise. Faults act on the inputs (``model-input-drift`` scales the
amount of mobile payments) or on the model's arithmetic (``gpu-node-trouble`` shifts and blurs
scores), so predictions drift and quality decays once labels arrive.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["REVIEW_BAND", "Prediction", "predict"]

COUNTRIES = ("DE", "FR", "GB", "US", "NL", "ES", "BR", "IN")
_COUNTRY_WEIGHTS = (0.3, 0.16, 0.14, 0.14, 0.08, 0.08, 0.05, 0.05)
_COUNTRY_RISK = {"BR": 0.7, "IN": 0.5, "US": 0.2}
REVIEW_BAND = (0.25, 0.6)
"""Scores in this band go to an LLM review; above it the payment is declined."""


@dataclass(frozen=True)
class Prediction:
    features: dict[str, object]
    score: float
    label: int
    """The truth (a chargeback or not), known only later."""


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))


def predict(
    rng: random.Random, score_shift: float, score_noise: float, mobile_amount_scale: float
) -> Prediction:
    amount = round(rng.lognormvariate(math.log(60.0), 0.9), 2)
    device = "mobile" if rng.random() < 0.6 else "desktop"
    age = int(rng.expovariate(1 / 400.0))
    items = 1 + int(rng.expovariate(1 / 1.8))
    country = rng.choices(COUNTRIES, _COUNTRY_WEIGHTS)[0]
    hour = rng.randrange(24)
    z = (
        -4.2
        + 0.9 * math.log(amount / 60.0 + 0.05)
        + (1.1 if age < 30 else 0.0)
        + _COUNTRY_RISK.get(country, 0.0)
        + (0.4 if hour < 6 else 0.0)
        + 0.15 * (items - 1)
    )
    label = int(rng.random() < _sigmoid(z + rng.gauss(0.0, 0.6)))
    seen = amount * mobile_amount_scale if device == "mobile" else amount
    z_seen = z + 0.9 * (math.log(seen / 60.0 + 0.05) - math.log(amount / 60.0 + 0.05))
    score = _sigmoid(z_seen + 1.4 + rng.gauss(0.0, 0.3 + score_noise) + score_shift)
    features: dict[str, object] = {
        "amount": round(seen, 2),
        "account_age_days": age,
        "items": items,
        "country": country,
        "device": device,
        "hour": hour,
    }
    return Prediction(features, round(score, 5), label)
