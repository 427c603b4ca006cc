"""Writes purchase_events.expected.json from purchase_events.csv, independently of Tributary.

The rule set under test: drop rows with a missing product_id or price (they go to the
quarantine), label the action 1 for buy/purchase/checkout and 0 otherwise, and keep price
statistics per user. Run: python3 purchase_events_expected.py
"""
import csv
import json
import statistics

POSITIVE = {"buy", "purchase", "checkout"}

users = {}
dropped = 0
with open("purchase_events.csv", newline="") as f:
    for row in csv.DictReader(f):
        if row["product_id"] == "" or row["price"] == "":
            dropped += 1
            continue
        u = users.setdefault(row["user_id"], {"prices": [], "labels": []})
        u["prices"].append(float(row["price"]))
        u["labels"].append(1 if row["action"] in POSITIVE else 0)

expected = {
    "quarantined": dropped,
    "users": {
        user: {
            "count": len(u["prices"]),
            "sum": sum(u["prices"]),
            "min": min(u["prices"]),
            "max": max(u["prices"]),
            "mean": statistics.fmean(u["prices"]),
            "stddev": statistics.stdev(u["prices"]) if len(u["prices"]) > 1 else None,
            "purchases": sum(u["labels"]),
        }
        for user, u in sorted(users.items())
    },
}
with open("purchase_events.expected.json", "w") as f:
    json.dump(expected, f, indent=2, sort_keys=True)
    f.write("\n")
