"""``perceptlm dashboard``: create or update the W&B comparison workspace of a group of runs
(:mod:`perceptlm.evaluation.dashboard`); without an account, write its spec to a file."""

from __future__ import annotations

import argparse
import os
import re


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="perceptlm dashboard", description=(
        "The W&B comparison workspace of one group of runs (a grid): score per mechanism and benchmark "
        "(mean and spread over seeds), gap over the mismatched and blind baselines, score against "
        "training time, training curves and predictions. Online (W&B credentials, --entity) it is "
        "saved to the project; otherwise its spec is written to --out."))
    parser.add_argument("--group", required=True, help="the W&B group of the runs (the grid's logger group)")
    parser.add_argument("--entity", help="W&B entity (user or team); needed to publish")
    parser.add_argument("--project", default="perceptlm", help="W&B project (default: %(default)s)")
    parser.add_argument("--runs", nargs="+", metavar="DIR",
                        help="folders with the group's results.json files, read for the metrics to show "
                             "(default: the group's runs on W&B)")
    parser.add_argument("--name", help="the workspace's name (default: 'perceptlm: GROUP')")
    parser.add_argument("--out", help="where the spec is written offline (default: runs/dashboard-GROUP.json)")
    options = parser.parse_args(args)

    from perceptlm.evaluation import dashboard
    from perceptlm.training.loggers import wandb_credentials_available

    online = wandb_credentials_available() and os.environ.get("WANDB_MODE") not in ("offline", "disabled")
    if options.runs:
        from perceptlm.evaluation.report import load_results

        records = load_results(*options.runs)
        metrics = dashboard.metrics_of_records(records)
        baselines = {m: dashboard.baselines_of(records, m) for m in metrics}
    elif online and options.entity:
        import wandb

        runs = wandb.Api().runs(f"{options.entity}/{options.project}", filters={"group": options.group})
        summaries = [dict(run.summary) for run in runs]
        metrics, baselines = dashboard.metrics_of_summaries(summaries), None
    else:
        raise SystemExit("perceptlm dashboard: without W&B credentials and --entity, give --runs DIR (the group's "
                         "results.json files) to know which metrics to show")
    view = dashboard.workspace(options.group, options.entity or "ENTITY", options.project, metrics, baselines, options.name)
    if online and options.entity:
        view.save()
        print(f"workspace saved: {view.url}")
        return
    out = options.out or os.path.join("runs", f"dashboard-{re.sub(r'[^A-Za-z0-9_.-]+', '_', options.group)}.json")
    dashboard.write_spec(view, out)
    print(f"W&B is offline here: the workspace's spec is in {out}. To publish it, sync the runs "
          f"(wandb sync RUN_DIR/wandb/offline-run-*) and run, with WANDB_API_KEY set:\n"
          f"  perceptlm dashboard --group {options.group} --entity ENTITY --project {options.project}")
