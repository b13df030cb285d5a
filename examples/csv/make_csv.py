"""Write ``clicks.csv``: a small click log in the public Avazu-like layout, with event timestamps.

Columns: ``ts`` (ISO-8601 event time), ``click`` (0/1), ``site`` (vertical: news/sports/shop),
``banner_pos``, ``device_type``, ``app_id``, ``ad_id``, ``user_id`` (categorical), ``hour_frac``,
``ad_age`` (dense). Rows span 6 hours; the manifests cut them into 1-hour windows. Users have a taste
for ad categories shared across sites, so a model trained on every site (the FM) learns more about a
user than a model of one site. Deterministic: ``python examples/csv/make_csv.py`` rewrites the same file.
Uses only the standard library.
"""

from __future__ import annotations

import csv
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROWS = 9_000
HOURS = 6
SITES = ("news", "sports", "shop")
SITE_SHARE = (0.5, 0.3, 0.2)
USERS, ADS, CATEGORIES = 600, 240, 12


def main(out: Path = Path(__file__).with_name("clicks.csv"), seed: int = 11) -> Path:
    rng = random.Random(seed)
    taste = [[rng.gauss(0, 1.2) for _ in range(CATEGORIES)] for _ in range(USERS)]
    ad_cat = [rng.randrange(CATEGORIES) for _ in range(ADS)]
    ad_bias = [rng.gauss(0, 0.5) for _ in range(ADS)]
    site_bias = {"news": -0.3, "sports": 0.0, "shop": 0.4}
    start = datetime(2024, 3, 1, tzinfo=UTC)
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "ts",
                "click",
                "site",
                "banner_pos",
                "device_type",
                "app_id",
                "ad_id",
                "user_id",
                "hour_frac",
                "ad_age",
            ]
        )
        for i in range(ROWS):
            t = start + timedelta(seconds=int(i * HOURS * 3600 / ROWS))
            site = rng.choices(SITES, SITE_SHARE)[0]
            user = min(int(rng.paretovariate(1.2)) - 1, USERS - 1)
            ad = rng.randrange(ADS)
            pos, device = rng.randrange(4), rng.randrange(3)
            age = rng.random()
            logit = -2.6 + site_bias[site] + ad_bias[ad] + taste[user][ad_cat[ad]] - 0.4 * pos - 0.8 * age
            click = int(rng.random() < 1 / (1 + math.exp(-logit)))
            hour_frac = (t.hour + t.minute / 60) / 24
            writer.writerow(
                [t.strftime("%Y-%m-%dT%H:%M:%S"), click, site, pos, device, f"app{ad % 17}", f"ad{ad}",
                 f"u{user}", f"{hour_frac:.4f}", f"{age:.4f}"]
            )  # fmt: skip
    return out


if __name__ == "__main__":
    print(main())
